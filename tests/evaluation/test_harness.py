"""``gptlab eval`` and :class:`gptlab.evaluation.GptlabLM`: lm-evaluation-harness requests on a gptlab model.

Offline: tiny random models with GPT-2's tokenizer, and tasks written here as YAML files over local
JSONL data. Scores are checked against independent computations (one forward pass, log_softmax,
gather), batching against batch size 1, rolling log-likelihoods against :func:`perplexity`.
"""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

lm_eval = pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402

from gptlab.app import main  # noqa: E402
from gptlab.evaluation import GptlabLM, perplexity  # noqa: E402
from gptlab.model import GPT, GPTConfig  # noqa: E402

CONTEXT = 32  # short, so that ordinary sentences need several rolling windows and left truncation
TINY = GPTConfig(vocab_size=50257, context_length=CONTEXT, emb_dim=32, n_heads=4, n_layers=2, tie_weights=True)

DOCS = [
    {"question": "The sky is", "choices": ["blue", "green", "loud"], "label": 0,
     "text": "The quick brown fox jumps over the lazy dog. It was a sunny day in the small town by the river."},
    {"question": "Two plus two is", "choices": ["four", "five", "seven"], "label": 1,
     "text": "Every effort moves you closer to the goal, said the painter, and he went back to his canvas."},
    {"question": "Water freezes at zero", "choices": ["degrees", "meters", "apples"], "label": 0,
     "text": "I had always thought Jack Gisburn rather a cheap genius, though a good fellow enough."},
]
LONG_TEXT = " ".join([doc["text"] for doc in DOCS] * 2)  # ~130 tokens: five windows, the last one partial


@pytest.fixture(scope="module")
def tok():
    from gptlab.tokenizer import get_tokenizer

    return get_tokenizer("gpt2")


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(TINY).eval()


@pytest.fixture()
def offline(monkeypatch, tmp_path):
    """No network for Hugging Face: environment and, where already imported, the libraries' own flags."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def _requests(kind: str, args: list[tuple]) -> list[Instance]:
    return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


# ------------------------------------------------------------------ independent references


@torch.inference_mode()
def _direct_loglikelihood(model: GPT, tok, context: str, continuation: str) -> tuple[float, bool, list[int]]:
    """The lm_eval convention computed directly: one forward pass over the whole (left-truncated) sequence."""
    stripped = context.rstrip()
    continuation = context[len(stripped):] + continuation
    if stripped:
        whole = tok.encode(stripped + continuation)
        n_ctx = len(tok.encode(stripped))
        ctx_ids, cont_ids = whole[:n_ctx], whole[n_ctx:]
    else:
        ctx_ids, cont_ids = [tok.eot_id], tok.encode(continuation)
    seq = torch.tensor((ctx_ids + cont_ids)[-(CONTEXT + 1):])
    logits = model(seq[None, :-1])[0].float()
    logprobs = F.log_softmax(logits, dim=-1)
    targets = seq[1:]
    token_lp = logprobs.gather(1, targets[:, None])[:, 0]
    n = len(cont_ids)
    greedy = bool((logits.argmax(-1)[-n:] == targets[-n:]).all())
    return float(token_lp[-n:].sum()), greedy, cont_ids


@torch.inference_mode()
def _greedy_tokens(model: GPT, ids: list[int], n: int) -> list[int]:
    """Greedy continuation by repeated full forward passes (no cache), for short prompts."""
    seq = list(ids)
    for _ in range(n):
        seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    return seq[len(ids):]


# ------------------------------------------------------------------ loglikelihood

LL_REQUESTS = [
    ("The sky is ", "blue"),  # trailing space moves to the continuation
    ("The sky is", " blue"),
    ("", "Hello world"),  # empty context: predicted from end-of-text
    ("Question: what is two plus two?\nAnswer:", " four"),
    (LONG_TEXT, " The end of the story."),  # longer than the window: truncated from the left
    ("A", " very long continuation of several tokens, which still fits in the window"),
    ("Two plus two is", " four"),
]


def test_loglikelihood_matches_a_direct_forward_pass(model, tok):
    lm = GptlabLM(model, tok, batch_size=3)
    results = lm.loglikelihood(_requests("loglikelihood", LL_REQUESTS), disable_tqdm=True)
    for (context, continuation), (logprob, greedy) in zip(LL_REQUESTS, results):
        want, want_greedy, _ = _direct_loglikelihood(model, tok, context, continuation)
        assert logprob == pytest.approx(want, rel=1e-5, abs=1e-4), (context, continuation)
        assert greedy == want_greedy
        assert logprob < 0
    # The split itself: the space joins the word it precedes, as in " blue".
    assert lm._encode_pair("The sky is ", "blue") == (tok.encode("The sky is"), tok.encode(" blue"))
    assert results[0][0] == pytest.approx(results[1][0], abs=1e-5)


def test_batched_results_equal_one_at_a_time(model, tok):
    requests = _requests("loglikelihood", LL_REQUESTS * 2)
    one = GptlabLM(model, tok, batch_size=1).loglikelihood(requests, disable_tqdm=True)
    for batch_size in (4, 16):
        batched = GptlabLM(model, tok, batch_size=batch_size).loglikelihood(requests, disable_tqdm=True)
        assert [g for _, g in batched] == [g for _, g in one]
        assert [lp for lp, _ in batched] == pytest.approx([lp for lp, _ in one], abs=1e-4)


def test_is_greedy_is_true_exactly_for_the_argmax_continuation(model, tok):
    context = "The sky is"
    greedy = _greedy_tokens(model, tok.encode(context), 3)
    text = tok.decode(greedy)
    assert tok.encode(context + text)[len(tok.encode(context)):] == greedy  # the text re-encodes alike
    other = tok.decode([greedy[0], (greedy[1] + 1) % 50000, greedy[2]])
    lm = GptlabLM(model, tok)
    (lp_greedy, is_greedy), (lp_other, is_other) = lm.loglikelihood(
        _requests("loglikelihood", [(context, text), (context, other)]), disable_tqdm=True)
    assert is_greedy and not is_other
    assert lp_greedy > lp_other


def test_padded_vocabulary_ids_get_no_probability(tok):
    """A model whose vocabulary is padded past the tokenizer's: log-probabilities over n_vocab ids only."""
    torch.manual_seed(1)
    padded = GPT(GPTConfig(vocab_size=50304, context_length=CONTEXT, emb_dim=32, n_heads=4, n_layers=2)).eval()
    with torch.no_grad():
        padded.out_head.weight[50257:] = 5.0  # the padding ids would win every argmax
    (logprob, greedy), = GptlabLM(padded, tok).loglikelihood(
        _requests("loglikelihood", [("The sky is", " blue")]), disable_tqdm=True)
    ids = tok.encode("The sky is blue")
    with torch.inference_mode():
        logits = padded(torch.tensor([ids[:-1]]))[0, -1, :50257]
    assert logprob == pytest.approx(float(F.log_softmax(logits, -1)[ids[-1]]), abs=1e-4)


# ------------------------------------------------------------------ loglikelihood_rolling


def test_rolling_loglikelihood_is_gptlab_perplexity(model, tok):
    texts = [LONG_TEXT, DOCS[0]["text"], "Short."]
    lm = GptlabLM(model, tok, batch_size=4)
    totals = lm.loglikelihood_rolling(_requests("loglikelihood_rolling", [(t,) for t in texts]), disable_tqdm=True)
    n_long = len(tok.encode(LONG_TEXT))
    assert n_long > 2 * CONTEXT and n_long % CONTEXT  # several windows, the last one partial
    for text, total in zip(texts, totals):
        ids = tok.encode(text)
        assert math.exp(-total / len(ids)) == pytest.approx(perplexity(model, ids, tok.eot_id), rel=1e-4)
    # A text inside one window is one forward pass from end-of-text.
    ids = tok.encode("Short.")
    with torch.inference_mode():
        logprobs = F.log_softmax(model(torch.tensor([[tok.eot_id, *ids[:-1]]]))[0].float(), -1)
    assert totals[2] == pytest.approx(float(logprobs.gather(1, torch.tensor(ids)[:, None]).sum()), abs=1e-4)
    # Batch size does not change the sums.
    single = GptlabLM(model, tok, batch_size=1).loglikelihood_rolling(
        _requests("loglikelihood_rolling", [(t,) for t in texts]), disable_tqdm=True)
    assert single == pytest.approx(totals, abs=1e-3)


# ------------------------------------------------------------------ generate_until


def test_generate_until_is_greedy_and_stops_at_until_strings(model, tok):
    prompt = "Once upon a time"
    greedy = _greedy_tokens(model, tok.encode(prompt), 8)
    full = tok.decode(greedy)
    words = full.split()
    assert len(words) >= 3
    stop = " " + words[2]  # cut before the third word
    want_cut = full[: full.index(stop)]
    lm = GptlabLM(model, tok, batch_size=4)
    args = [
        (prompt, {"until": [stop], "max_gen_toks": 8}),
        (prompt, {"until": ["never appears"], "max_gen_toks": 8}),
        (prompt, {"until": "never appears", "max_gen_toks": 3, "do_sample": False}),
        ("A different and longer prompt than the others", {"until": ["never appears"], "max_gen_toks": 8}),
    ]
    results = lm.generate_until(_requests("generate_until", args), disable_tqdm=True)
    assert results[0] == want_cut
    assert results[1] == full
    assert results[2] == tok.decode(greedy[:3])
    # Batched (left-padded, KV-cached) generation gives what one prompt alone gives.
    alone = GptlabLM(model, tok, batch_size=1).generate_until(_requests("generate_until", args), disable_tqdm=True)
    assert alone == results
    assert results[3] == tok.decode(_greedy_tokens(model, tok.encode(args[3][0]), 8))


def test_generate_until_stops_at_the_tokenizers_stop_ids(model, tok):
    prompt = "Once upon a time"
    greedy = _greedy_tokens(model, tok.encode(prompt), 6)
    stopping = copy.copy(tok)
    stopping.end_ids = (greedy[3],)  # as if the model's generation_config named this token
    (text,) = GptlabLM(model, stopping).generate_until(
        _requests("generate_until", [(prompt, {"until": [], "max_gen_toks": 6})]), disable_tqdm=True)
    assert text == tok.decode(greedy[: greedy.index(greedy[3])])


# ------------------------------------------------------------------ gptlab eval


def _write_tasks(tmp_path: Path) -> Path:
    """Three local tasks over one JSONL file: multiple choice, perplexity, generation."""
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS), encoding="utf-8")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    source = f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
    (tasks / "mc.yaml").write_text(
        "task: tiny_mc\n" + source + "output_type: multiple_choice\ndoc_to_text: '{{question}}'\n"
        "doc_to_choice: '{{choices}}'\ndoc_to_target: label\nmetric_list:\n  - metric: acc\n"
        "    aggregation: mean\n    higher_is_better: true\n", encoding="utf-8")
    (tasks / "ppl.yaml").write_text(
        "task: tiny_ppl\n" + source + "output_type: loglikelihood_rolling\ndoc_to_text: ''\n"
        "doc_to_target: '{{text}}'\nmetric_list:\n  - metric: bits_per_byte\n    aggregation: bits_per_byte\n"
        "    higher_is_better: false\n", encoding="utf-8")
    (tasks / "gen.yaml").write_text(
        "task: tiny_gen\n" + source + "output_type: generate_until\ndoc_to_text: '{{question}}'\n"
        "doc_to_target: ' {{choices[label]}}'\ngeneration_kwargs:\n  until: ['.', '\\n']\n  max_gen_toks: 5\n"
        "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n",
        encoding="utf-8")
    return tasks


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("gptlab: error:")]


def test_eval_cli_end_to_end(capsys, tmp_path, offline, tiny_gpt_folder):
    from gptlab.model.load import load_model

    folder = tiny_gpt_folder(tmp_path / "model", context_length=64)
    tasks = _write_tasks(tmp_path)
    out = tmp_path / "results"
    argv = ["eval", "--model", folder, "--tasks", "tiny_mc,tiny_ppl,tiny_gen", "--include-path", str(tasks),
            "--output-path", str(out), "--batch-size", "4"]
    code, stdout, err = _run(capsys, *argv, "--json", "--log-samples")
    assert code == 0, err
    results = json.loads(stdout)["results"]

    # The numbers are the harness's own, recomputed here through GptlabLM on the same model.
    model, tok = load_model(folder)
    lm = GptlabLM(model, tok)
    choices = [(d["question"], " " + c) for d in DOCS for c in d["choices"]]  # target_delimiter " "
    scores = lm.loglikelihood(_requests("loglikelihood", choices), disable_tqdm=True)
    picks = [max(range(3), key=lambda c: scores[3 * n + c][0]) for n in range(len(DOCS))]
    accuracy = sum(p == d["label"] for p, d in zip(picks, DOCS)) / len(DOCS)
    assert results["tiny_mc"]["acc,none"] == pytest.approx(accuracy)
    texts = [(d["text"],) for d in DOCS]
    rolling = lm.loglikelihood_rolling(_requests("loglikelihood_rolling", texts), disable_tqdm=True)
    n_bytes = sum(len(d["text"].encode("utf-8")) for d in DOCS)
    assert results["tiny_ppl"]["bits_per_byte,none"] == pytest.approx(-sum(rolling) / n_bytes / math.log(2), rel=1e-5)
    assert "exact_match,none" in results["tiny_gen"]

    saved = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert saved["results"] == results and set(saved["task_hashes"]) == {"tiny_mc", "tiny_ppl", "tiny_gen"}
    assert saved["config"]["model"] == f"gptlab:{folder}" and saved["model_name"] == folder
    lines = (out / "samples_tiny_mc.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(DOCS) and json.loads(lines[0])["doc"]["question"] == DOCS[0]["question"]
    assert not list(out.glob(".*.tmp"))  # written atomically: no temporary files left

    # An existing results file is not replaced without --overwrite (checked before the model loads).
    before = (out / "results.json").read_bytes()
    code, _, err = _run(capsys, *argv)
    assert code == 2 and len(_error_lines(err)) == 1 and "--overwrite" in err
    assert (out / "results.json").read_bytes() == before
    code, stdout, err = _run(capsys, *argv, "--overwrite", "--limit", "2")
    assert code == 0, err
    assert "tiny_mc" in stdout and "|" in stdout  # lm_eval's table
    assert json.loads((out / "results.json").read_text(encoding="utf-8"))["config"]["limit"] == 2


def test_chat_template_prompts(tok, model):
    """lm_eval's messages become the model's chat prompt; a final assistant message is continued."""
    from gptlab.data.chat_format import TemplateChat
    from gptlab.errors import GptlabError

    template = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    fmt = TemplateChat.from_tokenizer(tok, template)
    lm = GptlabLM(model, tok, chat_format=fmt)
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]
    assert lm.apply_chat_template(chat) == fmt.format_chat(chat)
    assert lm.apply_chat_template([*chat, {"role": "assistant", "content": "It is"}], add_generation_prompt=False) \
        == fmt.format_chat(chat) + "It is"
    assert lm.chat_template(True) == template and lm.tokenizer_name == "gptlab-chat-template"
    with pytest.raises(GptlabError, match="--apply-chat-template"):
        GptlabLM(model, tok).apply_chat_template(chat)


def test_eval_cli_applies_a_prompt_style(capsys, tmp_path, offline, tiny_gpt_folder):
    folder = tiny_gpt_folder(tmp_path / "model", context_length=64)
    tasks = _write_tasks(tmp_path)
    out = tmp_path / "results"
    code, _, err = _run(capsys, "eval", "--model", folder, "--tasks", "tiny_gen", "--include-path", str(tasks),
                        "--output-path", str(out), "--log-samples", "--limit", "2", "--apply-chat-template",
                        "--style", "alpaca", "--system-instruction", "Answer in one word.")
    assert code == 0, err
    samples = [json.loads(line) for line in (out / "samples_tiny_gen.jsonl").read_text(encoding="utf-8").splitlines()]
    prompt = samples[0]["arguments"]["gen_args_0"]["arg_0"]
    assert prompt.startswith("Answer in one word.") and "### Response:" in prompt
    saved = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert "### Response:" in saved["chat_template"] and saved["system_instruction"] == "Answer in one word."
    code, _, err = _run(capsys, "eval", "--model", folder, "--tasks", "tiny_gen", "--style", "alpaca")
    assert code == 2 and "--apply-chat-template" in err


def test_eval_cli_refuses_unknown_tasks_in_one_line(capsys, tmp_path, offline, monkeypatch):
    import lm_eval.tasks

    class LocalOnly(lm_eval.tasks.TaskManager):
        """Indexing lm_eval's 14,000 built-in tasks takes seconds: the test's index holds local tasks only."""

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **{**kwargs, "include_defaults": False})

    monkeypatch.setattr(lm_eval.tasks, "TaskManager", LocalOnly)
    tasks = _write_tasks(tmp_path)
    code, _, err = _run(capsys, "eval", "--model", "gpt-nano", "--tasks", "tiny_mc,no_such_task,nor_this",
                        "--include-path", str(tasks))
    assert code == 2
    (line,) = _error_lines(err)
    assert "no_such_task, nor_this" in line and "tiny_mc" not in line
    code, _, err = _run(capsys, "eval", "--model", "gpt-nano", "--tasks", "tiny_mc", "--include-path",
                        str(tmp_path / "missing"))
    assert code == 2 and "--include-path" in err


def test_eval_cli_flag_errors(capsys, tmp_path):
    code, _, err = _run(capsys, "eval", "--model", "gpt-nano", "--tasks", "x", "--log-samples")
    assert code == 2 and "--output-path" in err and len(err.strip().splitlines()) == 1
    code, _, err = _run(capsys, "eval", "--model", "gpt-nano", "--tasks", " , ")
    assert code == 2 and "--tasks" in err and len(err.strip().splitlines()) == 1
    blocker = tmp_path / "a-file"
    blocker.write_text("x")  # a results folder cannot be made under a file: said before any evaluation
    code, _, err = _run(capsys, "eval", "--model", "gpt-nano", "--tasks", "x", "--output-path", str(blocker / "out"))
    assert code == 2 and "--output-path" in err and "is a file" in err and len(err.strip().splitlines()) == 1


def test_eval_without_lm_eval_says_how_to_install(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # `import lm_eval` now raises ImportError
    code, _, err = _run(capsys, "eval", "--model", "gpt-nano", "--tasks", "hellaswag")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "pip install 'gptlab[eval]'" in err


def test_help_does_not_import_lm_eval_or_torch():
    probe = ("import sys; from gptlab.app import main\n"
             "try:\n    main(['eval', '--help'])\nexcept SystemExit:\n    pass\n"
             "print('lm_eval' in sys.modules, 'torch' in sys.modules, file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert "--include-path" in done.stdout and done.stderr.strip() == "False False"

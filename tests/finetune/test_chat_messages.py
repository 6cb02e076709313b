"""Chat-formatted instruction data ({"messages": [...]}): checks, the assistant-only loss mask, training on it.

The expected targets are built independently of the code under test: by encoding each assistant's
content and end-of-turn marker directly and finding them, in order, in the ids.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gptlab.errors import GptlabError
from gptlab.finetune.instruct.collate import IGNORE_INDEX, collate, encode_chat_example, fixed_batches
from gptlab.finetune.instruct.data import load_examples
from gptlab.finetune.instruct.train import InstructConfig, finetune, instruct_train_config
from gptlab.tokenizer import BPETokenizer, gpt2_tokenizer
from gptlab.tokenizer.chat_template import render_chat

TEMPLATES = Path(os.environ["GPTLAB_DATA_DIR"]) / "llama-vocab" / "templates"
X = IGNORE_INDEX

EXTRA_SPECIALS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                  "<|im_start|>", "<|im_end|>"]


def chat_tokenizer(template_file: str, bos: str | None, eos: str) -> BPETokenizer:
    """GPT-2's BPE plus the chat markers as special tokens, carrying a real model's template and tokens."""
    gpt2 = gpt2_tokenizer()
    specials = {**gpt2.special_tokens, **{t: 50257 + i for i, t in enumerate(EXTRA_SPECIALS)}}
    tok = BPETokenizer(gpt2.mergeable_ranks, specials, pattern=gpt2.pattern, name="gpt2-chat")
    tok.chat_template = (TEMPLATES / template_file).read_text(encoding="utf-8")
    tok.bos_token, tok.eos_token = bos, eos
    return tok


LLAMA = ("meta-llama-Llama-3.2-3B-Instruct.jinja", "<|begin_of_text|>", "<|eot_id|>")
QWEN3 = ("Qwen-Qwen3-0.6B.jinja", None, "<|im_end|>")

CONVERSATION = {
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another one, not Blue."},
        {"role": "assistant", "content": "Green, of course."},
    ]
}


def expected_assistant_runs(tok: BPETokenizer, family: str, entry: dict, thinking: bool = True) -> list[list[int]]:
    """Each assistant turn's tokens as the model must write them: its content, then its end-of-turn marker.

    Qwen3 writes an empty think block before the content of the last turn (when it follows the last
    user message); with thinking on, the generation prompt stops before it, so the model writes it too.
    """
    runs = []
    messages = entry["messages"]
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            if family == "llama":
                runs.append(tok.encode(m["content"].strip()) + [tok.special_tokens["<|eot_id|>"]])
            else:
                think = "<think>\n\n</think>\n\n" if thinking and i == len(messages) - 1 else ""
                runs.append(tok.encode(think + m["content"]) + [tok.special_tokens["<|im_end|>"]] + tok.encode("\n"))
    return runs


def expected_targets(ids: list[int], runs: list[list[int]]) -> list[int]:
    """Targets for ``ids`` that keep exactly the tokens of ``runs``, found left to right in ``ids``."""
    keep = [False] * len(ids)
    pos = 0
    for run in runs:
        start = next(i for i in range(pos, len(ids) - len(run) + 1) if ids[i : i + len(run)] == run)
        keep[start : start + len(run)] = [True] * len(run)
        pos = start + len(run)
    return [ids[j + 1] if keep[j + 1] else X for j in range(len(ids) - 1)] + [X]


@pytest.mark.parametrize("family, spec", [("llama", LLAMA), ("qwen", QWEN3)])
def test_exact_assistant_only_targets(family, spec):
    tok = chat_tokenizer(*spec)
    ids, mask = encode_chat_example(tok, tok.chat_template, CONVERSATION)
    text = render_chat(tok.chat_template, CONVERSATION["messages"],
                       special_tokens={"bos_token": tok.bos_token, "eos_token": tok.eos_token})
    assert tok.decode(ids) == text
    assert len(mask) == len(ids)
    if family == "llama":
        assert ids[0] == tok.special_tokens["<|begin_of_text|>"]
    runs = expected_assistant_runs(tok, family, CONVERSATION)
    assert [ids[i] for i in range(len(ids)) if mask[i]] == [t for run in runs for t in run]

    inputs, targets = collate([(ids, mask)], tok.eot_id)
    assert inputs[0].tolist() == ids
    assert targets[0].tolist() == expected_targets(ids, runs)
    assert sum(1 for t in targets[0].tolist() if t != X) == sum(len(r) for r in runs)


def test_qwen3_with_thinking_disabled_masks_the_same_turns():
    tok = chat_tokenizer(*QWEN3)
    ids, mask = encode_chat_example(tok, tok.chat_template, CONVERSATION, enable_thinking=False)
    runs = expected_assistant_runs(tok, "qwen", CONVERSATION, thinking=False)
    assert [ids[i] for i in range(len(ids)) if mask[i]] == [t for run in runs for t in run]


def test_batch_padding_and_truncation_with_masks():
    tok = chat_tokenizer(*LLAMA)
    short = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}
    a, b = encode_chat_example(tok, tok.chat_template, CONVERSATION), encode_chat_example(tok, tok.chat_template, short)
    pad = tok.eot_id
    inputs, targets = collate([a, b], pad)
    n_a, n_b = len(a[0]), len(b[0])
    assert inputs.shape == targets.shape == (2, max(n_a, n_b))
    assert inputs[1, n_b:].tolist() == [pad] * (inputs.shape[1] - n_b)
    # No end-of-text target after a chat example: the template's own end-of-turn is the last target.
    assert targets[1].tolist() == expected_targets(b[0], expected_assistant_runs(tok, "llama", short)) + \
        [X] * (inputs.shape[1] - n_b)
    assert targets[1, n_b - 2].item() == tok.special_tokens["<|eot_id|>"]
    # mask_prompt does not change chat targets; max_length cuts columns.
    assert torch.equal(collate([a, b], pad, mask_prompt=True)[1], targets)
    cut_inputs, cut_targets = collate([a, b], pad, max_length=7)
    assert torch.equal(cut_targets, targets[:, :7]) and torch.equal(cut_inputs, inputs[:, :7])
    # Instruction items and chat items can still be collated the old way.
    assert collate([([1, 2, 3], 1)], 0, mask_prompt=True)[1].tolist() == [[2, 3, 0]]
    with pytest.raises(GptlabError, match="mask of 2"):
        collate([([1, 2, 3], [True, False])], 0)


def test_template_marker_the_tokenizer_lacks_is_an_error():
    gpt2 = gpt2_tokenizer()
    template = (TEMPLATES / LLAMA[0]).read_text(encoding="utf-8")
    with pytest.raises(GptlabError, match="'<\\|begin_of_text\\|>', which is not a special token"):
        encode_chat_example(gpt2, template, CONVERSATION, {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
                            name="llama")


# ---------------------------------------------------------------- data checks


def write(tmp_path: Path, entries) -> Path:
    path = tmp_path / "chat.json"
    path.write_text(json.dumps(entries))
    return path


def test_chat_entries_load(tmp_path):
    entries = [CONVERSATION, {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": ""}],
                              "id": 7}]
    assert load_examples(write(tmp_path, entries)) == entries
    jsonl = tmp_path / "chat.jsonl"
    jsonl.write_text("\n".join(json.dumps(e) for e in entries) + "\n")
    assert load_examples(jsonl) == entries


def msgs(*pairs):
    return {"messages": [{"role": r, "content": c} for r, c in pairs]}


GOOD = msgs(("user", "q"), ("assistant", "a"))


@pytest.mark.parametrize(
    "entries, message",
    [
        ([GOOD, msgs(("user", "q"))], r"entry 1: field 'messages' has no assistant message"),
        ([GOOD, msgs(("user", "q"), ("bot", "a"))], r"entry 1: field 'messages\[1\]\.role' must be one of system, "
                                                     r"user, assistant, got 'bot'"),
        ([GOOD, msgs(("user", "q"), ("assistant", 3))], r"entry 1: field 'messages\[1\]\.content' must be a string, "
                                                         r"got int"),
        ([GOOD, {"messages": [{"role": "user"}]}], r"entry 1: field 'messages\[0\]\.content' is missing"),
        ([GOOD, {"messages": [{"content": "x"}]}], r"entry 1: field 'messages\[0\]\.role' is missing"),
        ([GOOD, {"messages": "hi"}], r"entry 1: field 'messages' must be a list, got str"),
        ([GOOD, {"messages": []}], r"entry 1: field 'messages' is empty"),
        ([GOOD, {"messages": ["hi"]}], r"entry 1: field 'messages\[0\]' must be an object, got str"),
        ([GOOD, {"instruction": "a", "output": "b"}], r"entry 1: field 'messages' is missing"),
        ([{"instruction": "a", "output": "b"}, GOOD], r"entry 1: a chat entry \(field 'messages'\) among instruction"),
        ([GOOD, "x"], r"entry 1: expected an object, got str"),
    ],
)
def test_bad_chat_entries_are_named(tmp_path, entries, message):
    path = write(tmp_path, entries)
    with pytest.raises(GptlabError, match=message) as info:
        load_examples(path)
    text = str(info.value)
    assert text.startswith(str(path)) and "\n" not in text


def test_chat_entries_without_assistant_are_fine_when_output_is_not_required(tmp_path):
    path = write(tmp_path, [msgs(("user", "q"))])
    assert load_examples(path, require_output=False) == [msgs(("user", "q"))]


# ---------------------------------------------------------------- training


WORDS = ["apple", "river", "stone", "cloud", "tiger", "piano", "lemon", "forest", "candle", "rocket"]
# GPT-2 has one special token, so this toy template ends each assistant turn with it.
TOY_TEMPLATE = ("{% for m in messages %}{% if not loop.first %}\n{% endif %}{{ m.role }}: {{ m.content }}"
                "{% if m.role == 'assistant' %}<|endoftext|>{% endif %}{% endfor %}"
                "{% if add_generation_prompt %}\nassistant: {% endif %}")


@pytest.fixture(scope="module")
def chat_data(tmp_path_factory):
    entries = [msgs(("system", "Repeat."), ("user", w), ("assistant", f"{w} {w}.")) for w in WORDS * 4]
    path = tmp_path_factory.mktemp("chat") / "chat.json"
    path.write_text(json.dumps(entries))
    return str(path)


def _cfg(tmp_path, name, **kw):
    values = {"batch_size": 4, "lr": 3e-3, "eval_interval": 1, "max_steps": 1, "sample_tokens": 4,
              "precision": "fp32", "device": "cpu", "out": str(tmp_path / name), **kw}
    return instruct_train_config(values)


def test_training_without_a_chat_template_says_how_to_give_one(tmp_path, chat_data, tiny_gpt_folder):
    base = tiny_gpt_folder(tmp_path / "base")
    with pytest.raises(GptlabError, match="has no chat template; pass one with --chat-template") as info:
        finetune(InstructConfig(data=chat_data, model=base), _cfg(tmp_path, "run"), progress=False, log=lambda m: None)
    assert "\n" not in str(info.value)


def test_training_on_chat_data_counts_only_assistant_tokens(tmp_path, chat_data, tiny_gpt_folder):
    from gptlab.model.load import load_model

    base = tiny_gpt_folder(tmp_path / "base")
    template_file = tmp_path / "toy.jinja"
    template_file.write_text(TOY_TEMPLATE)
    icfg = InstructConfig(data=chat_data, model=base, chat_template=str(template_file))
    result = finetune(icfg, _cfg(tmp_path, "run"), progress=False, log=lambda m: None)
    run = result.run_dir
    assert (run / "chat_template.jinja").read_text() == TOY_TEMPLATE
    assert not (run / "prompt_style.json").exists()
    # The first validation loss is the mean over assistant tokens ("w w." + <|endoftext|>), computed here.
    val = json.loads((run / "data" / "val.json").read_text())
    model, tok = load_model(base)
    model = model.float().eval()
    total = count = 0
    with torch.no_grad():
        for x, y in fixed_batches([encode_chat_example(tok, TOY_TEMPLATE, e) for e in val], 4, tok.eot_id):
            total += F.cross_entropy(model(x).flatten(0, 1), y.flatten(), reduction="sum").item()
            count += int((y != X).sum())
    n_expected = sum(len(tok.encode(e["messages"][-1]["content"])) + 1 for e in val)
    assert count == n_expected
    assert result.history[0]["val_loss"] == pytest.approx(total / count, rel=1e-5)

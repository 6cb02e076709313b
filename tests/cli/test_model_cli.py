"""``gptlab info`` and ``gptlab generate``."""

from __future__ import annotations

import json

import pytest
import torch

from gptlab.app import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_info_prints_the_book_size(capsys):
    code, out, _ = run(capsys, "info", "--preset", "gpt2")
    assert code == 0
    assert "163,009,536 parameters" in out
    assert "621.83 MB" in out  # the book: "Total size of the model: 621.83 MB"


def test_info_json_matches_real_allocations(capsys):
    """Estimates against what torch really allocates for a small model (weights, grads, AdamW, cache)."""
    from gptlab.model import GPT, GPTConfig, KVCache

    code, out, _ = run(capsys, "info", "--preset", "gpt-nano", "--qkv-bias", "--no-tied", "--context", "64",
                       "--batch-size", "3", "--json")
    assert code == 0
    info = json.loads(out)
    cfg = GPTConfig.from_dict(info["config"])
    assert cfg.qkv_bias and not cfg.tie_weights
    model = GPT(cfg)
    params = list(model.parameters())
    assert info["parameters"] == sum(p.numel() for p in params)
    assert info["weights_bytes"] == sum(p.nbytes for p in params)
    _, loss = model(torch.randint(0, cfg.vocab_size, (1, 8)), torch.randint(0, cfg.vocab_size, (1, 8)))
    loss.backward()
    assert info["gradients_bytes"] == sum(p.grad.nbytes for p in params)
    opt = torch.optim.AdamW(params)
    opt.step()
    moments = sum(t.nbytes for s in opt.state.values() for k, t in s.items() if k != "step")
    assert info["adamw_bytes"] == moments
    cache = KVCache.for_model(model, batch_size=3, max_len=64)
    assert info["kv_cache_bytes"] == sum(t.nbytes for t in cache.keys + cache.values)


def test_info_bf16_halves_the_bytes(capsys):
    _, out32, _ = run(capsys, "info", "--preset", "gpt2-xl", "--tied", "--json")
    _, out16, _ = run(capsys, "info", "--preset", "gpt2-xl", "--tied", "--dtype", "bfloat16", "--json")
    a, b = json.loads(out32), json.loads(out16)
    assert a["parameters"] == b["parameters"] == 1_557_380_800
    assert a["weights_bytes"] == 2 * b["weights_bytes"] and a["kv_cache_bytes"] == 2 * b["kv_cache_bytes"]


def test_info_reads_a_model_folder(capsys, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=128).save_pretrained(tmp_path)
    code, out, _ = run(capsys, "info", "--model", str(tmp_path), "--json")
    with torch.device("meta"):
        expected = GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=128)).num_parameters()
    assert code == 0 and json.loads(out)["parameters"] == expected


@pytest.fixture(scope="module")
def tiny_gpt2_dir(tmp_path_factory):
    """A random GPT-2 with GPT-2's vocabulary, saved by transformers."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=64)).eval()
    with torch.no_grad():
        model.transformer.wte.weight.mul_(50)  # sharper logits: no near-ties in greedy decoding
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    model.save_pretrained(folder)
    return folder, model


def _reference_completion(model, enc, prompt: str, n: int) -> str:
    ids = torch.tensor([enc.encode(prompt)])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                         pad_token_id=50256, eos_token_id=None)
    new = out[0, ids.shape[1]:].tolist()
    return enc.decode(new)


def test_generate_matches_transformers_and_tiktoken(capsys, tiny_gpt2_dir, tiktoken_gpt2):
    folder, hf = tiny_gpt2_dir
    prompt = "Every effort moves you"
    code, out, _ = run(capsys, "generate", "--model", str(folder), "--prompt", prompt, "--max-new-tokens", "12",
                       "--ignore-eos")
    assert code == 0
    assert out == prompt + _reference_completion(hf, tiktoken_gpt2, prompt, 12) + "\n"


def test_generate_stream_and_json_agree(capsys, tiny_gpt2_dir):
    folder, _ = tiny_gpt2_dir
    args = ["generate", "--model", str(folder), "--prompt", "Hello, I am", "--max-new-tokens", "10", "--ignore-eos"]
    _, streamed, _ = run(capsys, *args, "--stream")
    _, plain, _ = run(capsys, *args)
    _, as_json, _ = run(capsys, *args, "--json")
    result = json.loads(as_json)["results"][0]
    assert streamed == plain == "Hello, I am" + result["completion"] + "\n"
    assert len(result["tokens"]) == 10


def test_generate_batch_of_prompts(capsys, tiny_gpt2_dir, tiktoken_gpt2):
    folder, hf = tiny_gpt2_dir
    prompts = ["The verdict", "A much longer prompt that needs padding on the left"]
    argv = ["generate", "--model", str(folder), "--max-new-tokens", "6", "--ignore-eos", "--json"]
    for p in prompts:
        argv += ["--prompt", p]
    code, out, _ = run(capsys, *argv)
    assert code == 0
    got = [r["completion"] for r in json.loads(out)["results"]]
    assert got == [_reference_completion(hf, tiktoken_gpt2, p, 6) for p in prompts]


def test_generate_sampling_is_reproducible_with_seed(capsys, tiny_gpt2_dir):
    folder, _ = tiny_gpt2_dir
    args = ["generate", "--model", str(folder), "--prompt", "Once", "--max-new-tokens", "15", "--temperature", "30",
            "--top-k", "50", "--top-p", "0.95", "--json", "--ignore-eos"]
    a = json.loads(run(capsys, *args, "--seed", "1")[1])["results"][0]["tokens"]
    b = json.loads(run(capsys, *args, "--seed", "1")[1])["results"][0]["tokens"]
    c = json.loads(run(capsys, *args, "--seed", "2")[1])["results"][0]["tokens"]
    assert a == b != c


def test_generate_uses_the_folder_tokenizer(capsys, tmp_path):
    from gptlab.model import GPT, GPTConfig
    from gptlab.tokenizer import CharTokenizer

    tok = CharTokenizer.from_text("abc ")
    tok.save(tmp_path / "tokenizer.json")
    torch.manual_seed(0)
    GPT(GPTConfig(vocab_size=tok.n_vocab, context_length=16, emb_dim=16, n_heads=2, n_layers=1)).save_pretrained(tmp_path)
    code, out, _ = run(capsys, "generate", "--model", str(tmp_path), "--prompt", "ab", "--max-new-tokens", "5")
    assert code == 0
    text = out.rstrip("\n")
    assert text.startswith("ab") and len(text) == 7 and set(text) <= set("abc ")


def test_generate_errors_are_one_line(capsys, tmp_path):
    code, _, err = run(capsys, "generate", "--model", "no-such-model", "--prompt", "x")
    assert code == 2 and err.startswith("gptlab: error: --model 'no-such-model'") and err.count("\n") == 1
    (tmp_path / "config.json").write_text("{not json")
    code, _, err = run(capsys, "generate", "--model", str(tmp_path), "--prompt", "x")
    assert code == 2 and "config.json" in err and err.count("\n") == 1
    code, _, err = run(capsys, "generate", "--model", "gpt-nano", "--prompt", "a", "--prompt", "b", "--stream")
    assert code == 2 and "--stream" in err


def test_generate_seeded_sampling_does_not_depend_on_the_batch(capsys, tiny_gpt2_dir):
    """`--prompt A --seed 1` samples the same text as A beside other prompts, wherever A stands."""
    folder, _ = tiny_gpt2_dir
    args = ["generate", "--model", str(folder), "--max-new-tokens", "12", "--temperature", "30", "--seed", "1",
            "--ignore-eos", "--json"]

    def tokens(*prompts: str) -> list[list[int]]:
        argv = list(args)
        for p in prompts:
            argv += ["--prompt", p]
        code, out, _ = run(capsys, *argv)
        assert code == 0
        return [r["tokens"] for r in json.loads(out)["results"]]

    alone = tokens("Once upon")[0]
    assert tokens("Once upon", "A much longer neighbour prompt")[0] == alone
    assert tokens("Hi", "A much longer neighbour prompt", "Once upon")[2] == alone


@pytest.mark.parametrize("flag, value, message", [
    ("--temperature", "-1", "--temperature must be a finite number >= 0 (0 = greedy), got -1.0"),
    ("--temperature", "nan", "--temperature must be a finite number >= 0 (0 = greedy), got nan"),
    ("--top-p", "0", "--top-p must be in (0, 1], got 0.0"),
    ("--top-p", "1.5", "--top-p must be in (0, 1], got 1.5"),
    ("--top-k", "0", "--top-k must be a positive integer, got 0"),
    ("--max-new-tokens", "-3", "--max-new-tokens must be >= 0, got -3"),
])
def test_generate_bad_sampling_flags_are_one_line(capsys, flag, value, message):
    # The model is never loaded: "no-such-model" would be an error of its own.
    code, out, err = run(capsys, "generate", "--model", "no-such-model", "--prompt", "x", flag, value)
    assert code == 2 and out == ""
    assert err == f"gptlab: error: {message}\n"

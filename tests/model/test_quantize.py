"""Weight-only int8/int4 quantization: the layers against their dequantized weights, whole models
against bf16, saving and loading, LoRA folding, and the command line."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from gptlab.app import main
from gptlab.errors import GptlabError
from gptlab.model import GPT, GPTConfig
from gptlab.model.config import modern
from gptlab.model.quantize import (
    Int4Linear,
    Int8Linear,
    load_quantized,
    pack_nibbles,
    quantize_int4,
    quantize_int8,
    quantize_model,
    save_quantized,
    unpack_nibbles,
)


def _linear(out_f: int, in_f: int, bias: bool = True, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    layer = nn.Linear(in_f, out_f, bias=bias)
    with torch.no_grad():
        layer.weight.normal_(0, 0.05)
        layer.weight[:, 3] *= 20  # an outlier column: per-row / per-group scales must cope
    return layer


def test_int8_rounding_error_is_at_most_half_a_step():
    w = _linear(40, 96).weight
    q, scale = quantize_int8(w)
    assert q.dtype == torch.int8 and scale.shape == (40,)
    err = (q.float() * scale[:, None] - w).abs()
    assert bool((err <= scale[:, None] / 2 + 1e-7).all())
    assert int(q.abs().amax(dim=1).min()) == 127  # each row's largest weight uses the whole range


@pytest.mark.parametrize("group", [32, 64])
def test_int4_rounding_error_is_at_most_half_a_step(group):
    w = _linear(16, 128).weight
    q, scale, low = quantize_int4(w, group)
    assert int(q.max()) <= 15 and scale.shape == (16, 128 // group)
    deq = (q.float().view(16, -1, group) * scale[..., None] + low[..., None]).view(16, 128)
    assert bool(((deq - w).abs() <= scale.repeat_interleave(group, dim=1) / 2 + 1e-6).all())
    assert torch.equal(unpack_nibbles(pack_nibbles(q)), q)


@pytest.mark.parametrize("kind", ["int8", "int4"])
@pytest.mark.parametrize("out_f", [48, 50])  # 50: not a multiple of the int4 kernel's 16 rows
def test_layer_computes_x_times_its_dequantized_weight(kind, out_f):
    linear = _linear(out_f, 64)
    layer = Int8Linear.from_linear(linear) if kind == "int8" else Int4Linear.from_linear(linear, 32)
    x = torch.randn(3, 5, 64)
    want = x @ layer.dequantized().T + linear.bias.detach()
    got = layer(x)
    assert got.shape == (3, 5, out_f) and got.dtype == x.dtype
    # The kernels compute in bf16: within bf16 rounding of the exact product with the same integers.
    assert torch.allclose(got, want, atol=0.03 * want.abs().max().item(), rtol=0.02)
    # ... and the quantized weights stand close to the originals.
    rel = (layer.dequantized() - linear.weight).norm() / linear.weight.norm()
    assert rel < (0.03 if kind == "int8" else 0.15)


def test_scales_stay_float32_when_the_model_moves_to_bf16():
    layer = Int4Linear.from_linear(_linear(32, 64), 32)
    int8 = Int8Linear.from_linear(_linear(32, 64))
    holder = nn.Sequential(layer, nn.ReLU(), nn.Linear(32, 64), int8)
    holder.to(torch.bfloat16)
    assert layer.scales.dtype == layer.mins.dtype == int8.scale.dtype == torch.float32
    assert layer.bias.dtype == torch.bfloat16 and int8.weight.dtype == torch.int8


def _tiny(kind: str) -> GPT:
    torch.manual_seed(0)
    if kind == "gpt2":
        cfg = GPTConfig(vocab_size=300, context_length=32, emb_dim=64, n_heads=2, n_layers=2, drop_rate=0.0,
                        qkv_bias=True, tie_weights=True)
    else:  # Qwen3-like: grouped-query attention, q/k norms, SwiGLU, untied head
        cfg = modern(vocab_size=300, context_length=32, emb_dim=64, n_heads=4, n_kv_heads=2, n_layers=2,
                     ff_dim=128, qk_norm=True, tie_weights=False)
    return GPT(cfg).eval()


@pytest.mark.parametrize("kind", ["gpt2", "qwen3"])
@pytest.mark.parametrize("mode,bound", [("int8", 0.03), ("int4", 0.25)])
def test_quantized_model_stays_close_to_bf16(kind, mode, bound):
    model = _tiny(kind)
    ids = torch.randint(0, 300, (2, 12))
    with torch.inference_mode():
        ref = model(ids).float()
        embedding = model.tok_emb.weight.detach().clone()
        q = quantize_model(copy.deepcopy(model), mode, group_size=32)
        got = q(ids).float()
    linears = [m for m in q.modules() if isinstance(m, nn.Linear)]
    assert not linears, f"left unquantized: {linears}"
    assert (got - ref).norm() / ref.norm() < bound
    # The tied embedding is not changed by quantizing the head that shared it.
    assert torch.allclose(q.tok_emb.weight.float(), embedding, atol=1e-2 * embedding.abs().max().item())
    # Greedy generation runs on the quantized layers, with the KV cache equal to without.
    with_cache = q.generate(ids[:1], 8)
    assert torch.equal(with_cache, q.generate(ids[:1], 8, use_cache=False))


def test_quantizing_twice_is_refused():
    model = quantize_model(_tiny("gpt2"), "int8")
    with pytest.raises(GptlabError, match="already quantized"):
        quantize_model(model, "int4")
    with pytest.raises(GptlabError, match="--group-size"):
        quantize_model(_tiny("gpt2"), "int4", group_size=48)


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_saved_folder_loads_back_with_identical_logits(tmp_path, mode):
    model = quantize_model(_tiny("qwen3"), mode, group_size=32)
    save_quantized(model, tmp_path / "q")
    config = json.loads((tmp_path / "q" / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "gptlab" and config["quantization_config"]["mode"] == mode
    back = load_quantized(tmp_path / "q")
    ids = torch.randint(0, 300, (1, 10))
    with torch.inference_mode():
        assert torch.equal(back(ids), model(ids))
    # The integers are stored as integers: the file is much smaller than the float model's.
    size = (tmp_path / "q" / "model.safetensors").stat().st_size
    floats = sum(p.numel() for p in _tiny("qwen3").parameters()) * 2
    assert size < floats * (0.75 if mode == "int8" else 0.6)


def test_lora_updates_are_folded_in_before_quantizing():
    from gptlab.finetune.lora import apply_lora

    model = _tiny("gpt2")
    apply_lora(model, rank=4, alpha=8, targets="all")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)  # a real update, not B = 0
    ids = torch.randint(0, 300, (1, 10))
    with torch.inference_mode():
        ref = model(ids).float()
        q = quantize_model(model, "int8")
        got = q(ids).float()
    assert (got - ref).norm() / ref.norm() < 0.03


# ------------------------------------------------------------------------------------ command line

SMALL = ["--data", "the-verdict", "--preset", "gpt-nano", "--batch-size", "4", "--block-size", "32",
         "--model-set", "emb_dim=64", "--model-set", "n_heads=2", "--model-set", "n_layers=2",
         "--model-set", "context_length=32", "--eval-batches", "2", "--sample-tokens", "8", "--warmup-steps", "2",
         "--precision", "fp32", "--no-progress", "--max-steps", "2", "--eval-interval", "2"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("qrun") / "run"
    assert main(["pretrain", *SMALL, "--out", str(run)]) == 0
    return run


def test_cli_quantize_then_generate(run_dir, tmp_path, capsys):
    out = tmp_path / "q8"
    assert main(["quantize", str(run_dir), "--out", str(out), "--mode", "int4", "--group-size", "32", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["bytes_after"] < report["bytes_before"] / 2
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    assert main(["generate", "--model", str(out), "--prompt", "I had", "--max-new-tokens", "4", "--json"]) == 0
    from_folder = json.loads(capsys.readouterr().out)
    # The same tokens as quantizing on the fly.
    assert main(["generate", "--model", str(run_dir), "--quantize", "int4", "--group-size", "32",
                 "--prompt", "I had", "--max-new-tokens", "4", "--json"]) == 0
    on_the_fly = json.loads(capsys.readouterr().out)
    assert from_folder["results"] == on_the_fly["results"] and len(on_the_fly["results"][0]["tokens"]) == 4

    # An existing folder is not replaced without --overwrite; a quantized folder is not quantized again.
    assert main(["quantize", str(run_dir), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["generate", "--model", str(out), "--quantize", "int8", "--prompt", "I"]) == 2
    err = capsys.readouterr().err
    assert "already quantized" in err and err.count("\n") == 1


def test_cli_rejects_a_bad_group_size(run_dir, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["generate", "--model", str(run_dir), "--quantize", "int4", "--group-size", "48", "--prompt", "I"])
    assert exc.value.code == 2
    assert "--group-size" in capsys.readouterr().err


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_serving_engine_batches_a_quantized_model(mode):
    """Continuous batching over a quantized model: each request's greedy tokens equal generating it alone."""
    from gptlab.serve.engine import Engine, SamplingParams
    from gptlab.tokenizer import get_tokenizer

    model = quantize_model(_tiny("qwen3"), mode, group_size=32)
    engine = Engine(model, get_tokenizer("gpt2"), max_batch=3).start()
    try:
        prompts = [[5, 17, 99], [250, 3, 3, 7, 1, 42, 8], [11], [60, 61]]
        reqs = [engine.submit(p, SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)) for p in prompts]
        for req in reqs:
            while req.events.get(timeout=60).kind == "text":
                pass
        for prompt, req in zip(prompts, reqs):
            assert req.tokens == model.generate(prompt, 6)
    finally:
        engine.stop()

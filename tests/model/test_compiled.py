"""The compiled decode step: weights are graph inputs (right logits for any weights), and its code is cached on disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gptlab.model import GPT, GPTConfig
from gptlab.model.compile_cache import compile_cache_dir, use_compile_cache

# The shapes of tests/model/test_generate.py, so that the compiled code is shared with its tests.
CFG = GPTConfig(vocab_size=101, context_length=24, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0)
PROMPTS = [[5, 17, 3], [9, 1, 44, 2, 80, 13, 7, 61, 30], [12, 99, 0, 4, 8, 50]]

# inductor's own modules use a deprecated torch.jit decorator; not ours to fix
_IGNORE_JIT = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
# inductor's autotuning reads a deprecated TypedStorage; not ours either
_IGNORE_STORAGE = pytest.mark.filterwarnings("ignore:TypedStorage is deprecated:UserWarning")


def _sharp_model(seed: int) -> GPT:
    """A random model with large logits, so that greedy choices are no near-ties float rounding could flip."""
    torch.manual_seed(seed)
    m = GPT(CFG).eval()
    with torch.no_grad():
        m.out_head.weight.mul_(20)
    return m


def test_compile_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("GPTLAB_CACHE_DIR", raising=False)
    assert compile_cache_dir() == Path.home() / ".cache" / "gptlab" / "compile"
    monkeypatch.setenv("GPTLAB_CACHE_DIR", str(tmp_path / "c"))
    assert compile_cache_dir() == tmp_path / "c" / "compile"
    # An explicit inductor folder wins; otherwise inductor is pointed at ours, one folder per torch version.
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert use_compile_cache() == str(tmp_path / "mine")
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    folder = use_compile_cache()
    assert folder == str(tmp_path / "c" / "compile" / f"torch-{torch.__version__}")
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == folder and os.path.isdir(folder)
    # A folder that cannot be created leaves inductor's default alone.
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("GPTLAB_CACHE_DIR", str(tmp_path / "file"))
    assert use_compile_cache() is None and "TORCHINDUCTOR_CACHE_DIR" not in os.environ


@pytest.mark.slow
@_IGNORE_JIT
def test_models_of_one_shape_each_get_their_own_logits():
    """The compiled code is keyed on shapes; the weights are its inputs, never constants baked into it."""
    a, b = _sharp_model(1), _sharp_model(2)
    eager_a, eager_b = a.generate(PROMPTS, 8), b.generate(PROMPTS, 8)
    assert eager_a != eager_b
    assert a.generate(PROMPTS, 8, compile=True) == eager_a
    assert b.generate(PROMPTS, 8, compile=True) == eager_b
    assert a.generate(PROMPTS, 8, compile=True) == eager_a
    b.load_state_dict(a.state_dict())  # in place: the same parameter objects, new values
    assert b.generate(PROMPTS, 8, compile=True) == eager_a


_CHILD = """
import json, os, sys, torch
from gptlab.model import GPT, GPTConfig
cfg = GPTConfig(**json.loads(sys.argv[1]))
torch.manual_seed(7)
GPT(cfg).eval().generate(json.loads(sys.argv[2]), 8, compile=True)
# Imported only now: importing dynamo makes inductor choose its default cache folder (under /tmp),
# which gptlab then leaves alone, as it leaves any folder chosen before it.
from torch._dynamo.utils import counters
print(json.dumps({"inductor": dict(counters["inductor"]), "aot": dict(counters["aot_autograd"]),
                  "folder": os.environ.get("TORCHINDUCTOR_CACHE_DIR")}))
"""


@pytest.mark.slow
def test_a_fresh_process_reuses_the_compiled_code():
    """A second process compiling the same decode step finds it in the on-disk caches: nothing is compiled again.

    Two fresh processes run the same script: the first compiles (or already finds the code from an
    earlier run), the second must only load it.
    """
    fields = {"vocab_size": 101, "context_length": 24, "emb_dim": 32, "n_heads": 4, "n_layers": 2, "drop_rate": 0.0}
    assert GPTConfig(**fields) == CFG
    reports = []
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(fields), json.dumps(PROMPTS)],
                             capture_output=True, text=True, timeout=600, env=os.environ.copy())
        assert out.returncode == 0, out.stderr[-3000:]
        reports.append(json.loads(out.stdout.strip().splitlines()[-1]))
    first, second = reports
    assert second["folder"] == first["folder"] and os.listdir(first["folder"])
    if not os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        assert second["folder"] == str(compile_cache_dir() / f"torch-{torch.__version__}")
    assert second["inductor"].get("fxgraph_cache_hit", 0) >= 1, second
    assert second["inductor"].get("fxgraph_cache_miss", 0) == 0, second
    assert second["aot"].get("autograd_cache_hit", 0) >= 1, second
    assert second["aot"].get("autograd_cache_miss", 0) == 0, second


def _graphs_and_ops(model: GPT, prompts: list[list[int]]) -> tuple[int, int]:
    """(graphs dynamo compiled, operators they captured) when ``model`` generates from ``prompts``, compiled."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()  # forget every compiled entry in this process, so that this model compiles its own
    counters.clear()
    assert model.generate(prompts, 6, compile=True) == model.generate(prompts, 6)
    return counters["stats"]["unique_graphs"], counters["stats"]["calls_captured"]


@pytest.mark.slow
@_IGNORE_JIT
def test_one_compiled_block_serves_every_layer_and_batch_size():
    """Regional compilation: one graph of one block, whatever the depth, and no new graph for another batch size.

    A whole-model graph would capture three times the operators for three layers, and dynamo's
    specialisation of size 1 would compile one row apart from two (each traced again on every start).
    """
    from torch._dynamo.utils import counters

    from gptlab.model import KVCache
    from gptlab.model.compiled import compiled_decode_step

    cfg = CFG.replace(emb_dim=48, n_layers=3)  # a shape no other test compiles
    torch.manual_seed(5)
    deep = GPT(cfg).eval()
    padded = [[5, 17, 3], [9, 1, 44, 2, 80, 13, 7]]  # a left-padded batch: the step gets a mask
    graphs, ops_deep = _graphs_and_ops(deep, padded)
    assert graphs == 1
    # One row with a mask (as the server's steps have), then three rows: the same graph.
    step = compiled_decode_step(deep)
    with torch.inference_mode():  # as generate and the server run (grad mode is one of dynamo's guards)
        for rows in (1, 3):
            cache = KVCache.for_model(deep, rows, max_len=8, spare=1)
            deep(torch.full((rows, 4), 7), kv_cache=cache)
            expected = deep(torch.full((rows, 1), 3), kv_cache=KVCache.over(
                [k.clone() for k in cache.keys], [v.clone() for v in cache.values], cache.length))[:, -1]
            mask = torch.ones(rows, cache.length + 1, dtype=torch.long)
            got = step(torch.full((rows, 1), 3), mask, cache, torch.full((rows, 1), 4))[:, -1]
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert counters["stats"]["unique_graphs"] == 1
    torch.manual_seed(5)
    shallow = GPT(cfg.replace(n_layers=1)).eval()
    assert _graphs_and_ops(shallow, padded) == (1, ops_deep)


@pytest.mark.slow
@_IGNORE_JIT
@pytest.mark.parametrize("mode, design", [("int8", "gpt2"), ("int4", "llama")])
def test_quantized_models_compile_to_the_same_tokens(mode, design):
    """``generate --quantize ... --compile``: the packed int8/int4 kernels inside the compiled block."""
    from gptlab.model.config import modern
    from gptlab.model.quantize import quantize_model

    shape = dict(vocab_size=101, context_length=24, emb_dim=64, n_heads=4, n_layers=2)
    cfg = GPTConfig(**shape, drop_rate=0.0) if design == "gpt2" else modern(**shape, n_kv_heads=2)
    torch.manual_seed(3)
    m = GPT(cfg).eval()
    with torch.no_grad():
        m.out_head.weight.mul_(30)  # sharp logits: bf16 rounding cannot flip a greedy choice
    m = m.to(torch.bfloat16)
    quantize_model(m, mode)
    assert m.generate(PROMPTS, 6, compile=True) == m.generate(PROMPTS, 6)


@pytest.mark.slow
@_IGNORE_JIT
def test_rotary_models_compile_for_one_row_shared_angles_and_padded_rows():
    """Rotary angles shared by an unpadded batch (``[1, ...]``) are not the batch: compiling must not fail over them."""
    import warnings

    from gptlab.model.config import modern

    torch.manual_seed(4)
    m = GPT(modern(vocab_size=101, context_length=24, emb_dim=32, n_heads=4, n_kv_heads=2, n_layers=2)).eval()
    with torch.no_grad():
        m.out_head.weight.mul_(20)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # "torch.compile failed ...; generating with the eager model"
        for prompts in ([[1, 2, 3]], [[1, 2, 3], [4, 5, 6]], PROMPTS):
            assert m.generate(prompts, 6, compile=True) == m.generate(prompts, 6), prompts


@pytest.mark.slow
@_IGNORE_JIT
@_IGNORE_STORAGE
@pytest.mark.filterwarnings("error:torch.compile failed:RuntimeWarning")  # no quiet fallback to eager
def test_max_autotune_packages_each_models_own_int8_weights(tmp_path, monkeypatch):
    """``--compile max-autotune``: a package per model, frozen int8 weights, generated GEMMs, the eager tokens.

    The two models share every shape and one fresh cache folder: a package named by the graph alone
    (or an inductor cache keyed on it) would give the second model the first one's pre-packed
    weights. Three prompts of different lengths: padded rows, and token columns that are views.
    """
    from torch._dynamo.utils import counters

    from gptlab.model import packaged
    from gptlab.model.quantize import quantize_model

    monkeypatch.setenv("GPTLAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))

    def int8_model(seed: int) -> GPT:
        torch.manual_seed(seed)
        m = GPT(CFG.replace(emb_dim=64)).eval()
        with torch.no_grad():
            m.out_head.weight.mul_(30)  # sharp logits: bf16 rounding cannot flip a greedy choice
        return quantize_model(m.to(torch.bfloat16), "int8")

    models = [int8_model(11), int8_model(12)]
    a, b = models
    assert packaged.package_key(a) != packaged.package_key(b)
    eager = [m.generate(PROMPTS, 6) for m in models]
    assert eager[0] != eager[1]
    counters.clear()
    assert a.generate(PROMPTS, 6, compile="max-autotune") == eager[0]
    # inductor's own GEMM template did the int8 products: the point of this mode.
    assert counters["inductor"]["cpp_templated_kernel_counter"] >= 1, dict(counters["inductor"])
    assert b.generate(PROMPTS, 6, compile="max-autotune") == eager[1]
    assert sorted(p.name for p in packaged.package_path(a).parent.iterdir()) == sorted(
        f"{packaged.package_key(m)}.pt2" for m in models)

    # A second start: a new model object with a's weights loads a's package and builds nothing.
    def no_build(*args):  # noqa: ANN002, ANN202
        raise AssertionError("built a package that is on disk")

    monkeypatch.setattr(packaged, "build_package", no_build)
    again = int8_model(11)
    assert again.generate(PROMPTS[1:], 6, compile="max-autotune") == eager[0][1:]
    assert again.generate(PROMPTS[:1], 6, compile="max-autotune") == eager[0][:1]


@pytest.mark.slow
@_IGNORE_JIT
@_IGNORE_STORAGE
@pytest.mark.filterwarnings("error:torch.compile failed:RuntimeWarning")  # no quiet fallback to eager
def test_max_autotune_runs_the_qwen3_design(tmp_path, monkeypatch):
    """The packaged step with rotary positions, q/k norms, grouped-query attention and an untied int8 head.

    One row (no mask: the step makes one) and three left-padded rows, whose positions skip the padding.
    """
    from gptlab.model.config import modern
    from gptlab.model.quantize import quantize_model

    monkeypatch.setenv("GPTLAB_CACHE_DIR", str(tmp_path))
    # A seed whose greedy choices on these prompts all win by 0.6 or more: ten bf16 steps at these
    # logits' size, so that the package's rounding (its own GEMMs) cannot flip one (seed 6 has a 0.06 tie).
    torch.manual_seed(13)
    cfg = modern(vocab_size=101, context_length=24, emb_dim=64, n_heads=4, n_kv_heads=2, head_size=32,
                 n_layers=2, qk_norm=True, tie_weights=False)
    m = GPT(cfg).eval()
    with torch.no_grad():
        m.out_head.weight.mul_(30)  # sharp logits: bf16 rounding cannot flip a greedy choice
    m = quantize_model(m.to(torch.bfloat16), "int8")
    for prompts in (PROMPTS[:1], PROMPTS):
        assert m.generate(prompts, 6, compile="max-autotune") == m.generate(prompts, 6), prompts


def test_a_packaged_step_refuses_more_rows_than_it_was_exported_for(tmp_path, monkeypatch):
    """The package checks no sizes itself: 1,025 rows fail in Python, before anything is built or run."""
    from gptlab.model import KVCache, packaged

    monkeypatch.setenv("GPTLAB_CACHE_DIR", str(tmp_path))
    m = GPT(CFG).eval()
    step = packaged.packaged_step(m)
    with pytest.raises(ValueError, match="at most 1024 rows, got 1025"):
        step(torch.zeros(1025, 1, dtype=torch.long), None, KVCache.for_model(m, 1025, max_len=4), None)
    assert not (tmp_path / "compile").exists()


def test_compile_modes_are_checked():
    from gptlab.errors import GptlabError
    from gptlab.model.compile_modes import compile_mode

    assert [compile_mode(v) for v in (None, False, True, "default", "max-autotune")] == [
        None, None, "default", "default", "max-autotune"]
    with pytest.raises(GptlabError, match="compile mode must be one of default, max-autotune, got 'fast'"):
        compile_mode("fast")

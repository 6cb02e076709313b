"""``Engine(compile=True)`` and ``gptlab serve --compile``: compiled decode steps give the eager engine's tokens."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import urllib.request

import pytest
import torch

from gptlab.serve.engine import Engine, SamplingParams

# inductor's own modules use a deprecated torch.jit decorator; not ours to fix
_IGNORE_JIT = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
# inductor's autotuning reads a deprecated TypedStorage; not ours either
_IGNORE_STORAGE = pytest.mark.filterwarnings("ignore:TypedStorage is deprecated:UserWarning")


def _sharp(make_tiny, seed: int = 3):
    """A tiny model with large logits, so that greedy choices are no near-ties float rounding could flip."""
    m = make_tiny(seed)
    with torch.no_grad():
        m.tok_emb.weight.mul_(30)  # tied: also the output head
    return m


def _serve_all(engine: Engine, ctx: int) -> list[list[int]]:
    """Requests of many lengths, more than the slots, some joining mid-flight and some filling the context."""
    rng = random.Random(0)
    jobs = []
    for i in range(7):
        p = rng.randrange(1, 40)
        jobs.append(([rng.randrange(50257) for _ in range(p)], ctx - p if i % 3 == 0 else rng.randrange(1, 30)))
    reqs = []
    for i, (prompt, n) in enumerate(jobs):
        reqs.append(engine.submit(prompt, SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)))
        if i == 1:
            reqs[-1].events.get(timeout=120)  # the batch is running when the others join
    for req in reqs:
        while req.events.get(timeout=120).kind == "text":
            pass
        assert req.finish_reason == "length"
    return [req.tokens for req in reqs]


def test_the_step_view_decodes_as_the_slot_cache_does(model, gpt2_tok):
    """Steps through the slot cache's view (what the default compiled step decodes with), then advancing the cache, change nothing."""
    ctx = model.cfg.context_length
    eager = Engine(model, gpt2_tok, max_batch=3).start()
    viewed = Engine(model, gpt2_tok, max_batch=3)
    viewed._step = lambda t, m, c, p: model(t, attention_mask=m, kv_cache=c.step_view(), position_ids=p, last_only=True)
    viewed.start()
    try:
        assert _serve_all(viewed, ctx) == _serve_all(eager, ctx)
        assert viewed._step is not None and viewed.cache.shifts["left"] > 0
    finally:
        eager.stop()
        viewed.stop()


def test_a_failed_compilation_serves_eagerly(model, make_tiny, gpt2_tok, monkeypatch):
    import gptlab.model.compiled as compiled

    def broken_compile(fn, **kwargs):
        def fail(*args, **kw):
            raise RuntimeError("no C++ compiler\nsecond line")

        return fail

    monkeypatch.setattr(compiled.torch, "compile", broken_compile)
    monkeypatch.setattr(compiled, "_compiled", None)
    fresh = make_tiny()  # the same weights as `model`, and no record of an earlier compilation
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler"):
        engine = Engine(fresh, gpt2_tok, max_batch=2, compile=True).start()
    try:
        assert engine._step is None and engine.cache.n == 0 and engine.cache.width == 0
        prompt = gpt2_tok.encode("Hello there")
        text, done = engine.complete(prompt, SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True))
        assert done.completion_tokens == 6 and engine.tokens_generated == 6
    finally:
        engine.stop()


@pytest.mark.slow
@_IGNORE_JIT
def test_compiled_engine_gives_the_eager_tokens_without_recompiling(make_tiny, gpt2_tok):
    """Warm-up compiles every graph the engine needs: serving batches of 1-3 rows and any width compiles nothing."""
    from torch._dynamo.utils import counters

    _serves_the_eager_tokens_without_recompiling(_sharp(make_tiny), gpt2_tok, compile=True)
    assert counters["stats"]["unique_graphs"] >= 1


def _serves_the_eager_tokens_without_recompiling(m, tok, compile) -> None:  # noqa: ANN001
    """A compiled engine (``compile``) and an eager one serve the same tokens; no graph is compiled after warm-up."""
    from torch._dynamo.utils import counters

    ctx = m.cfg.context_length
    engine = Engine(m, tok, max_batch=3, compile=compile).start()
    eager = Engine(m, tok, max_batch=3).start()
    try:
        assert engine._step is not None
        graphs, inductor = counters["stats"]["unique_graphs"], dict(counters["inductor"])
        assert _serve_all(engine, ctx) == _serve_all(eager, ctx)
        # Nothing traced (dynamo's graphs) or compiled (inductor's, a package's included) after warm-up.
        assert counters["stats"]["unique_graphs"] == graphs and dict(counters["inductor"]) == inductor
        assert engine.stats()["peak_batch"] == 3 and engine.failures == 0
    finally:
        engine.stop()
        eager.stop()


@pytest.mark.slow
@_IGNORE_JIT
def test_serve_compile_answers(tmp_path, make_tiny, gpt2_tok):
    """``gptlab serve --compile`` compiles before it reports its address, then answers (the code of the test
    above is on disk by now, so this start is quick)."""
    model_dir = tmp_path / "tiny"
    _sharp(make_tiny).save_pretrained(model_dir)
    if not os.environ.get("TORCHINDUCTOR_CACHE_DIR"):  # share the in-process tests' cache folder
        from gptlab.model.compile_cache import use_compile_cache

        use_compile_cache()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "gptlab", "serve", "--model", str(model_dir), "--port", "0",
                             "--compile", "--max-batch", "3"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert " at http://127.0.0.1:" in line, line + proc.stderr.read()
        url = line.split(" at ")[1].split()[0]
        request = urllib.request.Request(
            url + "/v1/completions", method="POST",
            data=json.dumps({"prompt": "Hello there", "max_tokens": 6, "temperature": 0}).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as resp:
            body = json.loads(resp.read())
        assert body["usage"]["completion_tokens"] >= 1
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        err = proc.stderr.read()
    assert code == 0, err
    assert "compiling the decode step" in err and "torch.compile failed" not in err


@pytest.mark.slow
@_IGNORE_JIT
@_IGNORE_STORAGE
@pytest.mark.filterwarnings("error:torch.compile failed:RuntimeWarning")  # no quiet fallback to eager
def test_max_autotune_engine_serves_the_eager_int8_tokens(make_tiny, gpt2_tok, tmp_path, monkeypatch):
    """``serve --quantize int8 --compile max-autotune``: one package, frozen weights, for every batch of 1-3 rows and width."""
    from torch._dynamo.utils import counters

    from gptlab.model.quantize import quantize_model

    monkeypatch.setenv("GPTLAB_CACHE_DIR", str(tmp_path))
    m = quantize_model(_sharp(make_tiny, seed=5).to(torch.bfloat16), "int8")
    counters.clear()
    _serves_the_eager_tokens_without_recompiling(m, gpt2_tok, compile="max-autotune")
    # inductor's own GEMM template did the int8 products: the point of this mode.
    assert counters["inductor"]["cpp_templated_kernel_counter"] >= 1, dict(counters["inductor"])


def test_compile_flag_takes_a_mode(capsys):
    from gptlab.app import main

    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--model", "gpt-nano", "--compile", "fastest"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --compile: invalid choice: 'fastest'" in err and "max-autotune" in err

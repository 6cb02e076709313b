"""``gptlab bench model``: gptlab's model against ``transformers`` on this CPU, for two designs.

* ``gpt2``: GPT-2 124M against ``GPT2LMHeadModel``;
* ``qwen3``: the Qwen3-0.6B shape (16 query heads sharing 8 key/value heads of 128, q/k norms, RoPE,
  SwiGLU, a 151,936-token tied head) against ``Qwen3ForCausalLM``.

Both sides get the same weights (random, seeded, written once by ``transformers`` and read by both),
the same inputs and the same thread count, and are timed in the same process, interleaved (ours,
theirs, ours, theirs, ...) after a warm-up; each figure is the median of the repeats. Host load
drifts, so only ratios measured side by side mean anything.

Measured, for each family:

1. generation, batch 1 and batch 8, greedy, 16-token prompt: the best of gptlab in bf16 and fp32
   (and, for GPT-2, its compiled mode) against the faster of ``transformers``' fp32 and bf16 ``generate``;
2. the KV cache: gptlab with the cache against gptlab without it (fp32 for GPT-2; for Qwen3, whose
   cache holds only the 8 key/value heads, bf16 where the CPU has fast bf16 products, else fp32);
3. GPT-2 only, a training step (forward + backward + AdamW, batch 4 x 256): gptlab fp32 against
   ``transformers`` fp32, both with the same fused AdamW (``transformers``' Trainer default), and
   gptlab under bf16 autocast against gptlab fp32;
4. GPT-2 only, ``--only start``: how soon ``gptlab serve --compile`` answers ``/health`` when started
   a second time on the same model (PyTorch's caches warm, in a fresh cache folder the first start
   fills), against the 10 s the compiled path must start in; the cold start and the eager start are
   reported beside it. The figure is in starts per minute, so that higher is better, as elsewhere.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from gptlab.bench.report import Result, format_table, interleaved, median
from gptlab.errors import GptlabError

PROMPT_LEN = 16
NEW_TOKENS = 200
TRAIN_BATCH, TRAIN_SEQ = 4, 256
FAMILIES = ("gpt2", "qwen3")
# A 0.6B model decodes ~6x slower than GPT-2 124M here (batch 8 in bf16 on a CPU without fast bf16
# products, ~0.6 s a step): fewer new tokens keep the run in minutes.
NEW_TOKENS_BY_FAMILY = {"gpt2": NEW_TOKENS, "qwen3": 32}
# The cache's gain grows with the length generated (without it, step n re-reads n tokens); 32 tokens
# would mostly time the prompt. 96 for Qwen3 keeps its no-cache runs near a minute and a half each.
CACHE_TOKENS_BY_FAMILY = {"gpt2": NEW_TOKENS, "qwen3": 96}


def _log(msg: str) -> None:
    print(f"[bench model] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ setup


def _reference_weights(directory: str, family: str = "gpt2") -> None:
    """Random weights written by ``transformers`` (the layout both sides read): GPT-2 124M, or the
    Qwen3-0.6B shape in bf16 (its published dtype)."""
    import torch

    torch.manual_seed(0)
    if family == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        GPT2LMHeadModel(GPT2Config()).save_pretrained(directory)
        return
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from gptlab.model.config import PRESETS
    from gptlab.model.hf import config_to_hf

    config = Qwen3Config(**config_to_hf(PRESETS["qwen3-0.6b"], torch.bfloat16))
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # 1.2 GB of random weights built in bf16, not 2.4 GB in fp32
    try:
        Qwen3ForCausalLM(config).save_pretrained(directory)
    finally:
        torch.set_default_dtype(previous)


def _vocab_size(directory: str) -> int:
    with open(os.path.join(directory, "config.json"), encoding="utf-8") as f:
        return int(json.load(f)["vocab_size"])


def _hf_model(directory: str, dtype):  # noqa: ANN001, ANN202
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype).eval()
    # No early stop on EOS: both sides must generate exactly the same number of tokens.
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


# ------------------------------------------------------------------------------------------ generation


def _gen_rate(fn: Callable[[], Any], tokens: int) -> Callable[[], float]:
    def run() -> float:
        start = time.perf_counter()
        fn()
        return tokens / (time.perf_counter() - start)

    return run


def hf_generation_contenders(directory: str, prompt, new_tokens: int) -> dict[str, Callable[[], float]]:  # noqa: ANN001
    """``transformers fp32`` and ``transformers bf16``: greedy ``generate`` of ``new_tokens`` after
    ``prompt`` ``[B, T]``, each warmed up once, as tokens/s callables for :func:`interleaved`."""
    import torch

    mask = torch.ones_like(prompt)
    batch = prompt.size(0)
    contenders: dict[str, Callable[[], float]] = {}
    for dtype_name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        hf = _hf_model(directory, dtype)

        def hf_generate(hf=hf) -> Any:  # noqa: ANN001
            with torch.inference_mode():
                return hf.generate(prompt, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False)

        with torch.inference_mode():  # warm-up: a short generation touches every kernel once
            hf.generate(prompt, attention_mask=mask, max_new_tokens=2, do_sample=False)
        contenders[f"transformers {dtype_name}"] = _gen_rate(hf_generate, batch * new_tokens)
    return contenders


def bench_generation(
    directory: str, batch: int, new_tokens: int, repeats: int, modes: list[str], label: str = ""
) -> Result:
    """Greedy tokens/s of gptlab (each of ``modes``) and of transformers fp32 and bf16 generate."""
    import torch

    torch.manual_seed(1)
    prompt = torch.randint(0, _vocab_size(directory), (batch, PROMPT_LEN))
    contenders = hf_generation_contenders(directory, prompt, new_tokens)
    for mode in modes:
        ours, options = _our_generation_model(directory, mode)
        start = time.perf_counter()
        ours.generate(prompt, 2, **options)  # compiles, when the mode compiles
        if options.get("compile"):
            _log(f"compiled the decode step (batch {batch}) in {time.perf_counter() - start:.0f} s")
        contenders[f"gptlab {mode}"] = _gen_rate(
            lambda ours=ours, options=options: ours.generate(prompt, new_tokens, **options), batch * new_tokens
        )
    samples = interleaved(contenders, repeats, warmup=0)  # each side warmed up above, on a short run
    ref_name = max((n for n in samples if n.startswith("transformers")), key=lambda n: median(samples[n]))
    best = max((n for n in samples if n.startswith("gptlab")), key=lambda n: median(samples[n]))
    return Result(
        name=f"{label}generate batch {batch}",
        unit="tokens/s",
        ours=median(samples[best]),
        reference=median(samples[ref_name]),
        ours_label=best,
        reference_label=ref_name,
        target=1.5,
        samples=samples,
        note=f"greedy, {PROMPT_LEN}-token prompt, {new_tokens} new tokens; reference = the faster of transformers fp32/bf16",
    )


def _our_generation_model(directory: str, mode: str):  # noqa: ANN202
    """gptlab's model for a generation mode: ``fp32``, ``bf16``, or ``bf16+compile``."""
    import torch

    from gptlab.model import GPT

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[mode.split("+")[0]]
    return GPT.from_pretrained(directory, dtype=dtype), {"compile": mode.endswith("+compile")}


def bench_kv_cache(
    directory: str, new_tokens: int, repeats: int, dtype_name: str = "fp32", label: str = ""
) -> Result:
    """gptlab greedy tokens/s with and without the KV cache (batch 1), in ``dtype_name``."""
    import torch

    from gptlab.model import GPT

    torch.manual_seed(1)
    prompt = torch.randint(0, _vocab_size(directory), (1, PROMPT_LEN))
    model = GPT.from_pretrained(directory, dtype={"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name])
    with_cache, without = f"gptlab {dtype_name} cache", f"gptlab {dtype_name} no cache"
    contenders = {
        with_cache: _gen_rate(lambda: model.generate(prompt, new_tokens), new_tokens),
        without: _gen_rate(lambda: model.generate(prompt, new_tokens, use_cache=False), new_tokens),
    }
    samples = interleaved(contenders, repeats, warmup=0)
    return Result(
        name=f"{label}KV cache vs none",
        unit="tokens/s",
        ours=median(samples[with_cache]),
        reference=median(samples[without]),
        ours_label=with_cache,
        reference_label=without,
        target=4.0,
        samples=samples,
        note=f"batch 1, greedy, {PROMPT_LEN}-token prompt, {new_tokens} new tokens",
    )


# ------------------------------------------------------------------------------------------ start

START_TARGET_S = 10.0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_ready_seconds(directory: str, flags: list[str], env: dict[str, str], timeout: float = 900.0) -> float:
    """Seconds from starting ``gptlab serve --model directory *flags`` until its ``/health`` answers (the process is then stopped)."""
    import subprocess
    import urllib.request

    port = _free_port()
    cmd = [sys.executable, "-m", "gptlab", "serve", "--model", directory, "--port", str(port), "--access-log", "off", *flags]
    # stderr to a file, not a pipe: nobody reads a pipe while the server starts, and a compilation's
    # warnings could fill it and stall the server on a blocked write.
    errors = tempfile.TemporaryFile(mode="w+")
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=errors, text=True)
    try:
        while time.perf_counter() - start < timeout:
            if proc.poll() is not None:
                errors.seek(0)
                lines = errors.read().strip().splitlines() or [""]
                raise GptlabError(f"bench model: gptlab serve exited with {proc.returncode}: {lines[-1][:500]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    return time.perf_counter() - start
            except OSError:
                time.sleep(0.05)
        raise GptlabError(f"bench model: gptlab serve was not ready after {timeout:.0f} s")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        errors.close()


# The compiled starts measured: each mode's flags, and the compile flags added to them.
START_MODES = {
    "serve --compile": (["--dtype", "bfloat16"], ["--compile"]),
    "serve --quantize int8 --compile max-autotune": (["--quantize", "int8"], ["--compile", "max-autotune"]),
}


def bench_start(directory: str, repeats: int, label: str = "serve --compile") -> Result:
    """Second start of a compiled ``gptlab serve`` (a :data:`START_MODES` label) against the 10 s target; cold and eager starts for the record."""
    flags, compile_flags = START_MODES[label]
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    with tempfile.TemporaryDirectory(prefix="gptlab-bench-cache-") as cache:
        env["GPTLAB_CACHE_DIR"] = cache  # empty: the first start compiles, the later ones reuse its code
        cold = serve_ready_seconds(directory, flags + compile_flags, env)
        _log(f"{label}: first start (nothing cached) ready in {cold:.1f} s")
        warm: list[float] = []
        eager: list[float] = []
        for _ in range(repeats):
            warm.append(serve_ready_seconds(directory, flags + compile_flags, env))
            eager.append(serve_ready_seconds(directory, flags, env))
            _log(f"{label}: second start {warm[-1]:.1f} s, without compiling {eager[-1]:.1f} s")
    per_minute = {f"{label}, second start": [60 / s for s in warm],
                  "serve eager": [60 / s for s in eager],
                  f"{label}, first start": [60 / cold]}
    note = (f"GPT-2 124M, `{' '.join(flags + compile_flags)}`, seconds until /health answers: second start "
            f"{median(warm):.1f} s, first {cold:.1f} s, eager {median(eager):.1f} s; target < {START_TARGET_S:.0f} s")
    return Result(f"{label} second start", "starts/min", 60 / median(warm), 60 / START_TARGET_S,
                  f"gptlab {label} (cached)", f"a {START_TARGET_S:.0f} s start", 1.0, per_minute, note)


# ------------------------------------------------------------------------------------------ training


def _train_rate(step: Callable[[], None]) -> Callable[[], float]:
    def run() -> float:
        start = time.perf_counter()
        step()
        return TRAIN_BATCH * TRAIN_SEQ / (time.perf_counter() - start)

    return run


def bench_training(directory: str, repeats: int, compile_model: bool) -> list[Result]:
    """Training-step tokens/s: gptlab fp32 vs transformers fp32, and gptlab bf16 autocast vs gptlab fp32."""
    import torch

    from gptlab.model import GPT

    torch.manual_seed(2)
    data = torch.randint(0, 50257, (TRAIN_BATCH, TRAIN_SEQ + 1))
    inputs, targets = data[:, :-1].contiguous(), data[:, 1:].contiguous()

    hf = _hf_model(directory, torch.float32).train()
    hf_opt = torch.optim.AdamW(hf.parameters(), lr=1e-5, fused=True)

    def hf_step() -> None:
        loss = hf(input_ids=inputs, labels=inputs).loss  # transformers shifts the labels itself
        loss.backward()
        hf_opt.step()
        hf_opt.zero_grad(set_to_none=True)

    ours = GPT.from_pretrained(directory).train()
    opt = torch.optim.AdamW(ours.parameters(), lr=1e-5, fused=True)
    label = "gptlab"
    run = ours
    if compile_model:
        # fallback_random: dropout masks from aten's RNG; inductor's own generator is ~4x slower on CPU.
        run = torch.compile(ours, options={"fallback_random": True})
        label = "gptlab compiled"

    def our_step(bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            _, loss = run(inputs, targets)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    if compile_model:
        for bf16 in (False, True):
            start = time.perf_counter()
            our_step(bf16)
            _log(f"compiled the training step ({'bf16' if bf16 else 'fp32'}) in {time.perf_counter() - start:.0f} s")
    contenders = {
        f"{label} fp32": _train_rate(lambda: our_step(False)),
        "transformers fp32": _train_rate(hf_step),
        f"{label} bf16 autocast": _train_rate(lambda: our_step(True)),
    }
    if compile_model:
        # For the record: the same model without torch.compile (transformers runs eagerly too).
        def eager_step() -> None:
            _, loss = ours(inputs, targets)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        contenders["gptlab eager fp32"] = _train_rate(eager_step)
    samples = interleaved(contenders, repeats)
    ours32, ours16, ref = (median(samples[k]) for k in (f"{label} fp32", f"{label} bf16 autocast", "transformers fp32"))
    note = f"forward + backward + fused AdamW, batch {TRAIN_BATCH} x {TRAIN_SEQ} tokens, dropout 0.1"
    return [
        Result("train step fp32", "tokens/s", ours32, ref, f"{label} fp32", "transformers fp32", 1.3, samples, note),
        Result("train step bf16 vs fp32", "tokens/s", ours16, ours32, f"{label} bf16 autocast", f"{label} fp32", 1.8,
               samples, note),
    ]


# ------------------------------------------------------------------------------------------ driver


def run_benchmarks(
    quick: bool = False,
    only: list[str] | None = None,
    compile_model: bool = True,
    repeats: int | None = None,
    families: list[str] | None = None,
) -> list[Result]:
    """Run the selected comparisons (``generate``, ``cache``, ``train``, ``start``) for each of ``families``
    (``gpt2``, ``qwen3``; both by default); ``quick`` shortens them."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise GptlabError("gptlab bench model compares against transformers; install it (pip install transformers)") from None
    import torch

    # The start comparison launches real servers for a minute or more: not part of a quick run.
    only = only or ["generate", "cache", "train"] + ([] if quick else ["start"])
    families = families or list(FAMILIES)
    repeats = repeats or (2 if quick else 3)
    results: list[Result] = []
    _log(f"torch {torch.__version__}, {torch.get_num_threads()} threads, quick={quick}")
    for family in families:
        new_tokens = min(50, NEW_TOKENS_BY_FAMILY[family]) if quick else NEW_TOKENS_BY_FAMILY[family]
        label = "" if family == "gpt2" else "qwen3-0.6b "
        with tempfile.TemporaryDirectory(prefix="gptlab-bench-") as directory:
            _log(f"{family}: writing random reference weights")
            _reference_weights(directory, family)
            if "generate" in only:
                for batch in (1, 8):
                    _log(f"{family}: generation, batch {batch}")
                    # Compiling the decode step pays off for GPT-2; at the Qwen3 shape the step is
                    # bound by reading its 1.2 GB of weights, and compiled it ran no faster (7.2 vs
                    # 7.5 tokens/s eager at batch 1), so eager bf16, what serve and chat run, stands.
                    compiled = compile_model and not quick and family == "gpt2"
                    # fp32 too: on a CPU without fast bf16 products, bf16 wins only at batch 1 (where
                    # reading half the bytes is all that counts); the best of our modes is reported.
                    modes = ["bf16", "fp32"] + (["bf16+compile"] if compiled else [])
                    results.append(bench_generation(directory, batch, new_tokens, repeats, modes, label))
            if "cache" in only:
                _log(f"{family}: KV cache vs no cache")
                from gptlab.model.device import fast_bf16

                bf16 = family != "gpt2" and fast_bf16(torch.device("cpu"))
                cache_tokens = new_tokens if quick else CACHE_TOKENS_BY_FAMILY[family]
                results.append(bench_kv_cache(directory, cache_tokens, repeats, "bf16" if bf16 else "fp32", label))
            if "train" in only and family == "gpt2":
                _log("gpt2: training step")
                results.extend(bench_training(directory, repeats, compile_model and not quick))
            if "start" in only and family == "gpt2":
                for label in START_MODES:
                    _log(f"gpt2: {label}, first and second start")
                    results.append(bench_start(directory, repeats, label))
    return results


def cmd_bench_model(args: argparse.Namespace) -> int:
    """Handler of ``gptlab bench model``."""
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    results = run_benchmarks(quick=args.quick, only=args.only, compile_model=not args.no_compile, repeats=args.repeats,
                             families=args.family)
    if args.json:
        print(json.dumps({"target": "model", "quick": args.quick, "families": args.family or list(FAMILIES),
                          "results": [r.to_dict() for r in results]}, indent=2))
    else:
        print(format_table(results))
    return 0


def register_target(subparsers: argparse._SubParsersAction) -> None:
    """Add ``model`` to the ``gptlab bench`` sub-commands."""
    p = subparsers.add_parser(
        "model",
        help="generation and training speed against transformers (GPT-2 and Qwen3 shapes)",
        description="gptlab's model against transformers on this CPU, same weights and inputs: GPT-2 124M "
        "(GPT2LMHeadModel) and the Qwen3-0.6B shape (Qwen3ForCausalLM): generation (batch 1 and 8), the KV "
        "cache, and (GPT-2) a training step and serve --compile's second start. Ratios come from one run: medians of interleaved repeats after a warm-up.",
    )
    p.add_argument("--family", nargs="+", choices=list(FAMILIES), default=None,
                   help="which designs to measure (default: both)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--quick", action="store_true", help="50 new tokens, 2 repeats, no compilation (a smoke run)")
    p.add_argument("--only", nargs="+", choices=["generate", "cache", "train", "start"],
                   help="run only these comparisons (start: how soon serve --compile, and int8 with --compile max-autotune, is ready on a second start)")
    p.add_argument("--no-compile", action="store_true", help="measure only eager gptlab (no torch.compile modes)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds per comparison (default 3; 2 with --quick)")
    p.add_argument("--threads", type=int, default=None, help=f"torch threads (default: torch's, here {os.cpu_count()} CPUs)")
    p.set_defaults(func=cmd_bench_model)

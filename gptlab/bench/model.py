"""``gptlab bench model``: gptlab's GPT against ``transformers``' GPT2LMHeadModel on this CPU.

Both sides get the same GPT-2 124M weights (random, seeded, written once by ``transformers`` and read
by both), the same inputs and the same thread count, and are timed in the same process, interleaved
(ours, theirs, ours, theirs, ...) after a warm-up; each figure is the median of the repeats. Host load
drifts, so only ratios measured side by side mean anything.

Measured:

1. generation, batch 1 and batch 8, greedy, 16-token prompt, 200 new tokens: gptlab in bf16 (and its
   other fast modes) against the faster of ``transformers``' fp32 and bf16 ``generate``;
2. the KV cache: gptlab fp32 with the cache against gptlab fp32 without it;
3. a training step (forward + backward + AdamW, batch 4 x 256): gptlab fp32 against ``transformers``
   fp32, both with the same fused AdamW (``transformers``' Trainer default), and gptlab under bf16
   autocast against gptlab fp32.
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


def _log(msg: str) -> None:
    print(f"[bench model] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ setup


def _reference_weights(directory: str) -> None:
    """Random GPT-2 124M weights written by ``transformers`` (the layout both sides read)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config()).save_pretrained(directory)


def _hf_model(directory: str, dtype):  # noqa: ANN001, ANN202
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(directory, dtype=dtype).eval()
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


def bench_generation(directory: str, batch: int, new_tokens: int, repeats: int, modes: list[str]) -> Result:
    """Greedy tokens/s of gptlab (each of ``modes``) and of transformers fp32 and bf16 generate."""
    import torch

    torch.manual_seed(1)
    prompt = torch.randint(0, 50257, (batch, PROMPT_LEN))
    mask = torch.ones_like(prompt)
    contenders: dict[str, Callable[[], float]] = {}
    for dtype_name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        hf = _hf_model(directory, dtype)

        def hf_generate(hf=hf) -> Any:  # noqa: ANN001
            with torch.inference_mode():
                return hf.generate(prompt, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False)

        contenders[f"transformers {dtype_name}"] = _gen_rate(hf_generate, batch * new_tokens)
    for mode in modes:
        ours, options = _our_generation_model(directory, mode)
        start = time.perf_counter()
        ours.generate(prompt, 2, **options)  # compiles, when the mode compiles
        if options.get("compile"):
            _log(f"compiled the decode step (batch {batch}) in {time.perf_counter() - start:.0f} s")
        contenders[f"gptlab {mode}"] = _gen_rate(
            lambda ours=ours, options=options: ours.generate(prompt, new_tokens, **options), batch * new_tokens
        )
    samples = interleaved(contenders, repeats)
    ref_name = max((n for n in samples if n.startswith("transformers")), key=lambda n: median(samples[n]))
    best = max((n for n in samples if n.startswith("gptlab")), key=lambda n: median(samples[n]))
    return Result(
        name=f"generate batch {batch}",
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


def bench_kv_cache(directory: str, new_tokens: int, repeats: int) -> Result:
    """gptlab fp32 greedy tokens/s with and without the KV cache (batch 1)."""
    import torch

    from gptlab.model import GPT

    torch.manual_seed(1)
    prompt = torch.randint(0, 50257, (1, PROMPT_LEN))
    model = GPT.from_pretrained(directory)
    contenders = {
        "gptlab fp32 cache": _gen_rate(lambda: model.generate(prompt, new_tokens), new_tokens),
        "gptlab fp32 no cache": _gen_rate(lambda: model.generate(prompt, new_tokens, use_cache=False), new_tokens),
    }
    samples = interleaved(contenders, repeats, warmup=0)
    return Result(
        name="KV cache vs none",
        unit="tokens/s",
        ours=median(samples["gptlab fp32 cache"]),
        reference=median(samples["gptlab fp32 no cache"]),
        ours_label="gptlab fp32 cache",
        reference_label="gptlab fp32 no cache",
        target=4.0,
        samples=samples,
        note=f"batch 1, greedy, {PROMPT_LEN}-token prompt, {new_tokens} new tokens",
    )


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
    quick: bool = False, only: list[str] | None = None, compile_model: bool = True, repeats: int | None = None
) -> list[Result]:
    """Run the selected comparisons (``generate``, ``cache``, ``train``); ``quick`` shortens them."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise GptlabError("gptlab bench model compares against transformers; install it (pip install transformers)") from None
    import torch

    only = only or ["generate", "cache", "train"]
    new_tokens = 50 if quick else NEW_TOKENS
    repeats = repeats or (2 if quick else 3)
    results: list[Result] = []
    _log(f"torch {torch.__version__}, {torch.get_num_threads()} threads, quick={quick}")
    with tempfile.TemporaryDirectory(prefix="gptlab-bench-") as directory:
        _reference_weights(directory)
        if "generate" in only:
            for batch in (1, 8):
                _log(f"generation, batch {batch}")
                modes = ["bf16"] + ([] if quick or not compile_model else ["bf16+compile"])
                results.append(bench_generation(directory, batch, new_tokens, repeats, modes))
        if "cache" in only:
            _log("KV cache vs no cache")
            results.append(bench_kv_cache(directory, new_tokens, repeats))
        if "train" in only:
            _log("training step")
            results.extend(bench_training(directory, repeats, compile_model and not quick))
    return results


def cmd_bench_model(args: argparse.Namespace) -> int:
    """Handler of ``gptlab bench model``."""
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    results = run_benchmarks(quick=args.quick, only=args.only, compile_model=not args.no_compile, repeats=args.repeats)
    if args.json:
        print(json.dumps({"target": "model", "quick": args.quick, "results": [r.to_dict() for r in results]}, indent=2))
    else:
        print(format_table(results))
    return 0


def register_target(subparsers: argparse._SubParsersAction) -> None:
    """Add ``model`` to the ``gptlab bench`` sub-commands."""
    p = subparsers.add_parser(
        "model",
        help="GPT generation and training speed against transformers",
        description="gptlab's GPT against transformers' GPT2LMHeadModel on this CPU, same weights and inputs: "
        "generation (batch 1 and 8), the KV cache, and a training step. Ratios come from one run: "
        "medians of interleaved repeats after a warm-up.",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--quick", action="store_true", help="50 new tokens, 2 repeats, no compilation (a smoke run)")
    p.add_argument("--only", nargs="+", choices=["generate", "cache", "train"], help="run only these comparisons")
    p.add_argument("--no-compile", action="store_true", help="measure only eager gptlab (no torch.compile modes)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds per comparison (default 3; 2 with --quick)")
    p.add_argument("--threads", type=int, default=None, help=f"torch threads (default: torch's, here {os.cpu_count()} CPUs)")
    p.set_defaults(func=cmd_bench_model)

"""``gptlab bench quant``: int8/int4 weights, their speed and their cost in quality, in one run.

Speed (GPT-2 124M, or the Qwen3-0.6B shape, random weights written once by ``transformers``), greedy,
16-token prompt, same thread count, interleaved repeats, medians:

* batch 1: gptlab int8 and int4 against llama.cpp ``Q8_0`` of the same weights (exported by
  ``gptlab export --format gguf``) when the ``llama_cpp`` package is installed; otherwise against the
  faster of ``transformers``' fp32 and bf16 ``generate``;
* batch 1 and 8: gptlab's eager bf16 (no compile) against ``transformers``' faster mode, and int8/int4
  at batch 8;
* batch 1: int8 through ``--compile max-autotune`` (the step compiled ahead of time, frozen
  weights, inductor's generated GEMMs)
  against the same reference as eager int8.

Quality, on models trained here: the validation perplexity of a pretraining run (the main job's
by default) in bf16 against int8 and int4, and a classifier's test accuracy in bf16 against int8
and int4. Without ``--run``/``--classifier`` the bench trains both first (a short main job, and a
spam classifier on top of it).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gptlab.bench.report import Result, format_table, interleaved, median
from gptlab.errors import GptlabError

PROMPT_LEN = 16
NEW_TOKENS = {"gpt2": 200, "qwen3": 32}
# Batch 8 in bf16 is slow on CPUs without bf16 instructions (transformers' bf16 generate of 8 x 200 tokens
# takes minutes there): fewer tokens per row keep the whole bench within a quarter of an hour.
NEW_TOKENS_BATCH8 = 32
MODES = ("bf16", "int8", "int4")


def _log(msg: str) -> None:
    print(f"[bench quant] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ speed


def _our_model(directory: str, mode: str):  # noqa: ANN202
    """gptlab's model in ``mode``: bf16, or int8/int4 quantized from the file's full-precision weights."""
    import torch

    from gptlab.model import GPT
    from gptlab.model.quantize import quantize_model

    if mode == "bf16":
        return GPT.from_pretrained(directory, dtype=torch.bfloat16)
    return quantize_model(GPT.from_pretrained(directory, dtype=torch.float32), mode)


def _llama_cpp_rate(gguf_path: str, prompt: list[int], new_tokens: int) -> Callable[[], float] | None:
    """tokens/s of llama.cpp's greedy generation on ``gguf_path``; None without the llama_cpp package."""
    try:
        import llama_cpp
    except ImportError:
        return None
    import torch

    threads = torch.get_num_threads()
    llm = llama_cpp.Llama(model_path=gguf_path, n_ctx=PROMPT_LEN + new_tokens + 8, n_batch=64, n_threads=threads,
                          n_threads_batch=threads, verbose=False)

    def run() -> float:
        start = time.perf_counter()
        # top_k=1: greedy. The generator never stops by itself (random weights may "emit" EOS).
        for i, _ in enumerate(llm.generate(prompt, top_k=1, temp=0.0, reset=True)):
            if i + 1 == new_tokens:
                break
        return new_tokens / (time.perf_counter() - start)

    run()  # warm-up
    return run


def bench_speed(directory: str, family: str, batch: int, new_tokens: int, repeats: int,
                gguf_path: str | None, compiled: bool = False) -> list[Result]:
    """gptlab bf16/int8/int4 against transformers (and, at batch 1, llama.cpp Q8_0) on one set of weights.

    ``compiled``: int8 through ``compile="max-autotune"`` too (compiled before the timed rounds).
    """
    import torch

    from gptlab.bench.model import _gen_rate, _vocab_size, hf_generation_contenders

    torch.manual_seed(1)
    prompt = torch.randint(0, _vocab_size(directory), (batch, PROMPT_LEN))
    contenders = hf_generation_contenders(directory, prompt, new_tokens)
    for mode in MODES:
        ours = _our_model(directory, mode)
        ours.generate(prompt, 2)
        contenders[f"gptlab {mode}"] = _gen_rate(lambda ours=ours: ours.generate(prompt, new_tokens), batch * new_tokens)
    if compiled:
        ours = _our_model(directory, "int8")
        start = time.perf_counter()
        ours.generate(prompt, 2, compile="max-autotune")
        _log(f"int8 max-autotune compiled in {time.perf_counter() - start:.0f} s")
        contenders["gptlab int8 max-autotune"] = _gen_rate(
            lambda: ours.generate(prompt, new_tokens, compile="max-autotune"), batch * new_tokens)
    llama = _llama_cpp_rate(gguf_path, prompt[0].tolist(), new_tokens) if gguf_path and batch == 1 else None
    if llama is not None:
        contenders["llama.cpp Q8_0"] = llama
    samples = interleaved(contenders, repeats, warmup=0)
    med = {k: median(v) for k, v in samples.items()}
    hf_best = max((k for k in med if k.startswith("transformers")), key=med.get)
    label = "" if family == "gpt2" else "qwen3-0.6b "
    note = f"greedy, batch {batch}, {PROMPT_LEN}-token prompt, {new_tokens} new tokens, {torch.get_num_threads()} threads"

    def row(name: str, ours: str, ref: str, target: float) -> Result:
        return Result(f"{label}{name}", "tokens/s", med[ours], med[ref], ours, ref, target, samples, note)

    results = [row(f"bf16 eager b{batch} vs transformers", "gptlab bf16", hf_best, 1.5)]
    if llama is not None:
        results += [row("int8 b1 vs llama.cpp Q8_0", "gptlab int8", "llama.cpp Q8_0", 1.0),
                    row("int4 b1 vs llama.cpp Q8_0", "gptlab int4", "llama.cpp Q8_0", 1.5)]
        if compiled:
            results.append(row("int8 max-autotune b1 vs llama.cpp Q8_0", "gptlab int8 max-autotune", "llama.cpp Q8_0", 1.0))
    else:
        results += [row(f"int8 b{batch} vs transformers", "gptlab int8", hf_best, 2.5),
                    row(f"int4 b{batch} vs transformers", "gptlab int4", hf_best, 2.5)]
        if compiled:
            results.append(row(f"int8 max-autotune b{batch} vs transformers", "gptlab int8 max-autotune", hf_best, 2.5))
    return results


def _write_reference(directory: str, family: str, gguf_path: str | None) -> None:
    """Random reference weights (as ``bench model`` writes them) and, for llama.cpp, the same as Q8_0 GGUF."""
    from gptlab.bench.model import _reference_weights

    _reference_weights(directory, family)
    if gguf_path is None:
        return
    import torch

    from gptlab.model import GPT
    from gptlab.model.gguf_export import write_gguf
    from gptlab.model.load import _folder_tokenizer
    from gptlab.tokenizer import gpt2_tokenizer

    model = GPT.from_pretrained(directory, dtype=torch.float32)
    tokenizer = gpt2_tokenizer() if family == "gpt2" else _folder_tokenizer(Path(directory), model.cfg)
    write_gguf(model, tokenizer, gguf_path, "q8_0", name=f"bench-{family}")


# ------------------------------------------------------------------------------------------ quality


def _perplexity(model, windows) -> float:  # noqa: ANN001
    import torch

    total, count = 0.0, 0
    with torch.inference_mode():
        for inputs, targets in windows:
            _, loss = model(inputs, targets)
            total += float(loss) * targets.numel()
            count += targets.numel()
    return math.exp(total / count)


def bench_perplexity(run_dir: str, max_batches: int = 20) -> list[Result]:
    """Validation perplexity of a pretraining run's best checkpoint: bf16 against int8 and int4."""
    import torch

    from gptlab.data.prepared import PreparedData
    from gptlab.model.quantize import quantize_model
    from gptlab.model.run_folder import load_run
    from gptlab.train.batches import eval_windows

    data_dir = Path(run_dir) / "data"
    if not (data_dir / "meta.json").is_file():
        raise GptlabError(f"--run {run_dir}: no data/meta.json (a folder written by gptlab pretrain?)")
    model, _ = load_run(run_dir, "best", dtype=torch.float32)
    block = model.cfg.context_length
    windows = eval_windows(PreparedData(data_dir).val.tokens, block, max_batches, batch_size=8)
    ppl = {"bf16": _perplexity(model.to(torch.bfloat16), windows)}
    for mode in ("int8", "int4"):
        quantized = quantize_model(load_run(run_dir, "best", dtype=torch.float32)[0], mode)
        ppl[mode] = _perplexity(quantized, windows)
    samples = {f"{k} perplexity": [v] for k, v in ppl.items()}
    tokens = sum(t.numel() for _, t in windows)
    note = f"validation perplexity of {run_dir} on {tokens:,} tokens; ratio = bf16 / quantized (1.00 = no loss)"
    return [Result(f"{mode} perplexity vs bf16", "perplexity", ppl["bf16"], ppl[mode], "bf16", mode,
                   0.99 if mode == "int8" else 0.95, samples, note) for mode in ("int8", "int4")]


def bench_accuracy(classifier_dir: str) -> list[Result]:
    """A classifier's test accuracy: bf16 against int8 and int4 (target: within 0.5 points)."""
    import copy

    import torch

    from gptlab.finetune.classify.data import eval_data
    from gptlab.finetune.classify.predict import labeled_texts_metrics
    from gptlab.finetune.classify.store import load_classifier
    from gptlab.model.quantize import quantize_model

    model, tokenizer, labels, meta = load_classifier(classifier_dir)
    data, split, _ = eval_data(meta.get("data"), where=str(Path(classifier_dir) / "classifier.json"))
    acc = {}
    for mode in ("bf16", "int8", "int4"):
        member = copy.deepcopy(model)
        member = member.to(torch.bfloat16) if mode == "bf16" else quantize_model(member, mode)
        acc[mode] = 100.0 * labeled_texts_metrics(member, tokenizer, labels, meta, data)["accuracy"]
    samples = {f"{k} accuracy": [v] for k, v in acc.items()}
    note = f"accuracy (%) of {classifier_dir} on its {split} split ({len(data.texts)} texts); target: within 0.5 points"
    return [Result(f"{mode} classifier accuracy", "accuracy %", acc[mode], acc["bf16"], mode, "bf16",
                   (acc["bf16"] - 0.5) / acc["bf16"], samples, note) for mode in ("int8", "int4")]


def _train_quality_models(work: Path, budget: str) -> tuple[str, str]:
    """A short main job (python-stdlib, BPE) and a spam classifier fine-tuned from it; returns both folders."""
    run, clf = work / "run", work / "classifier"
    base = [sys.executable, "-m", "gptlab"]
    _log(f"training the main job's model for {budget} (pass --run RUN to use a model of yours)")
    subprocess.run([*base, "pretrain", "--time-budget", budget, "--out", str(run), "--no-progress"], check=True,
                   stdout=subprocess.DEVNULL)
    _log("training a spam classifier on it (pass --classifier DIR to use yours)")
    subprocess.run([*base, "classify", "train", "--data", "sms-spam", "--model", str(run), "--out", str(clf),
                    "--trainable", "all", "--epochs", "2", "--no-progress"], check=True, stdout=subprocess.DEVNULL)
    return str(run), str(clf)


# ------------------------------------------------------------------------------------------ driver


def run_benchmarks(families: list[str], repeats: int, quick: bool, run_dir: str | None, classifier: str | None,
                   skip_quality: bool, skip_speed: bool, budget: str,
                   compiled: bool = False) -> tuple[list[Result], dict[str, Any]]:
    """The speed comparisons for each of ``families`` and the quality ones; returns results and setup.

    ``compiled``: int8 with ``--compile max-autotune`` at batch 1 as well. The first run compiles for
    minutes (GPT-2 about two, the Qwen3 shape's 28 layers longer); later runs load the packages kept
    in gptlab's compile cache (the reference weights are the same random ones every run).
    """
    import torch

    results: list[Result] = []
    try:
        import llama_cpp  # noqa: F401

        have_llama = True
    except ImportError:
        have_llama = False
    setup = {"threads": torch.get_num_threads(), "llama_cpp": have_llama, "families": families}
    if not skip_speed:
        for family in families:
            new_tokens = 50 if quick else NEW_TOKENS[family]
            with tempfile.TemporaryDirectory(prefix="gptlab-bench-quant-") as directory:
                gguf_path = str(Path(directory) / "q8_0.gguf") if have_llama and family == "gpt2" else None
                _log(f"{family}: writing random reference weights" + (" and their Q8_0 GGUF" if gguf_path else ""))
                _write_reference(directory, family, gguf_path)
                for batch in (1, 8):
                    _log(f"{family}: generation, batch {batch}")
                    tokens = new_tokens if batch == 1 else min(new_tokens, NEW_TOKENS_BATCH8)
                    rows = bench_speed(directory, family, batch, tokens, repeats, gguf_path,
                                       compiled=compiled and batch == 1)
                    for r in rows:  # as they come: a long run that is stopped still shows what it measured
                        _log(f"{r.name}: {r.ours:.1f} vs {r.reference:.1f} {r.unit} ({r.ratio:.2f}x, target {r.target:g}x)")
                    results += rows
    if not skip_quality:
        with tempfile.TemporaryDirectory(prefix="gptlab-bench-quant-train-") as work:
            if run_dir is None or classifier is None:
                trained_run, trained_clf = _train_quality_models(Path(work), budget)
                run_dir, classifier = run_dir or trained_run, classifier or trained_clf
            _log(f"perplexity of {run_dir}")
            results += bench_perplexity(run_dir)
            _log(f"accuracy of {classifier}")
            results += bench_accuracy(classifier)
    return results, setup


def cmd_bench_quant(args: argparse.Namespace) -> int:
    """Handler of ``gptlab bench quant``."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    families = args.family or ["gpt2"]
    repeats = args.repeats or (2 if args.quick else 5)
    results, setup = run_benchmarks(families, repeats, args.quick, args.run, args.classifier, args.skip_quality,
                                    args.skip_speed, args.train_budget, compiled=not (args.quick or args.skip_compiled))
    if args.json:
        print(json.dumps({"target": "quant", "setup": setup, "results": [r.to_dict() for r in results]}, indent=2))
    else:
        print(format_table(results))
        if not setup["llama_cpp"]:
            print("(llama_cpp is not installed: int8/int4 are compared with transformers; see the README's Benchmarks section for "
                  "building llama-cpp-python)")
    return 0


def register_target(subparsers: argparse._SubParsersAction) -> None:
    """Add ``quant`` to the ``gptlab bench`` sub-commands."""
    p = subparsers.add_parser(
        "quant",
        help="int8/int4 weights: decoding speed against llama.cpp and transformers, and their cost in quality",
        description="Weight-only int8/int4 quantization, measured in one run: greedy decoding tokens/s of gptlab "
        "bf16/int8/int4 against llama.cpp Q8_0 of the same weights (when llama_cpp is installed) and against "
        "transformers, at batch 1 and 8; and validation perplexity and classifier accuracy in bf16 against "
        "int8 and int4, on models trained here.",
    )
    p.add_argument("--family", nargs="+", choices=list(NEW_TOKENS), default=None,
                   help="model shapes for the speed comparisons (default gpt2; qwen3 = the Qwen3-0.6B shape)")
    p.add_argument("--run", default=None, help="pretraining run whose perplexity is measured (default: train the main job)")
    p.add_argument("--classifier", default=None,
                   help="classifier folder whose accuracy is measured (default: train one on sms-spam)")
    p.add_argument("--train-budget", default="3m", help="time budget of the main job trained without --run (default 3m)")
    p.add_argument("--skip-quality", action="store_true", help="speed only")
    p.add_argument("--skip-speed", action="store_true", help="quality only")
    p.add_argument("--skip-compiled", action="store_true",
                   help="leave out int8 with --compile max-autotune (batch 1; it compiles for minutes on a "
                        "first run, later runs load the packages it cached); also left out with --quick")
    p.add_argument("--quick", action="store_true", help="50 new tokens, 2 repeats")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 5; 2 with --quick)")
    p.add_argument("--threads", type=int, default=None, help="torch (and llama.cpp) threads (default: torch's)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_bench_quant)

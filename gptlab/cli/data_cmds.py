"""Data verbs: ``prepare`` (text -> token files) and ``data list|fetch|info|sample``."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from gptlab.errors import GptlabError
from gptlab.outdir import StagedOutDir


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``prepare`` and ``data`` to the ``gptlab`` parser."""
    p = subparsers.add_parser(
        "prepare",
        help="tokenize text into train.bin/val.bin token files for training",
        description="Tokenize data sets, files or folders (each file a document, joined with "
        "<|endoftext|>) in parallel and write OUT/train.bin and OUT/val.bin (flat uint16/uint32 ids, "
        "numpy memmaps) plus OUT/meta.json. The last --val-fraction of the tokens becomes val.bin.",
    )
    p.add_argument("--data", action="append", required=True, metavar="NAME|FILE|DIR",
                   help="a named data set (see 'gptlab data list'), python-stdlib, a UTF-8 file or a folder; repeatable")
    p.add_argument("--tokenizer", default="gpt2", metavar="gpt2|char|PATH",
                   help="'gpt2' (default), 'char' (alphabet of the data; saved as OUT/tokenizer.json) "
                   "or a tokenizer file (copied to OUT/tokenizer.json)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="folder to create; a non-empty one (e.g. data a run trains from) needs --overwrite")
    p.add_argument("--overwrite", action="store_true", help="replace the prepared data already in --out")
    p.add_argument("--val-fraction", type=float, default=0.1, metavar="F",
                   help="share of the tokens, at the end, for validation (default 0.1; 0 for none)")
    p.add_argument("--workers", type=int, default=None, metavar="N", help="encoding processes (default: all CPUs)")
    p.add_argument("--errors", choices=["strict", "replace"], default="strict",
                   help="bytes that are not UTF-8: an error naming file and offset (strict, default) or U+FFFD")
    p.add_argument("--max-mb", type=float, default=None, metavar="MB",
                   help="use only about the first MB megabytes of text (a quick small corpus)")
    p.add_argument("--no-tiktoken", action="store_true",
                   help="encode with gptlab's own BPE even where tiktoken could (same ids, slower)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print meta.json (plus out and seconds) as JSON")
    p.set_defaults(func=_prepare)

    data = subparsers.add_parser(
        "data",
        help="list and fetch named data sets; inspect prepared folders",
        description="Named data sets are downloaded once into the cache ($GPTLAB_DATA_DIR, default "
        "~/.cache/gptlab) and checked against their sha256.",
    )
    sub = data.add_subparsers(dest="data_verb", metavar="ACTION")

    q = sub.add_parser("list", help="named data sets and corpora, and whether each is in the cache")
    q.add_argument("--json", action="store_true", help="print a JSON list")
    q.set_defaults(func=_list)

    q = sub.add_parser("fetch", help="download (or verify) named data sets; print their paths")
    q.add_argument("names", nargs="+", metavar="NAME", help="data set names (see 'gptlab data list')")
    q.add_argument("--offline", action="store_true", help="do not download: fail if a file is not in the cache")
    q.add_argument("--json", action="store_true", help="print {name: path} as JSON")
    q.set_defaults(func=_fetch)

    q = sub.add_parser("info", help="describe a folder written by 'gptlab prepare'")
    q.add_argument("dir", metavar="DIR")
    q.add_argument("--json", action="store_true", help="print its meta.json")
    q.set_defaults(func=_info)

    q = sub.add_parser("sample", help="print random training windows of a prepared folder, decoded")
    q.add_argument("dir", metavar="DIR")
    q.add_argument("--split", choices=["train", "val"], default="train")
    q.add_argument("--block-size", type=int, default=32, metavar="T", help="tokens per window (default 32)")
    q.add_argument("--batch-size", type=int, default=2, metavar="B", help="windows to show (default 2)")
    q.add_argument("--seed", type=int, default=None, metavar="S", help="random seed (reproducible windows)")
    q.add_argument("--json", action="store_true", help="print {x, y, text} per window as JSON")
    q.set_defaults(func=_sample)

    def no_action(args: argparse.Namespace) -> int:
        data.print_help()
        return 2

    data.set_defaults(func=no_action)


def _prepare(args: argparse.Namespace) -> int:
    # Imported here: data.prep brings numpy, which `gptlab --help` should not pay for.
    from gptlab.data.prep import is_prepared_dir

    if args.max_mb is not None and args.max_mb <= 0:
        raise GptlabError(f"--max-mb must be positive, got {args.max_mb}")

    out = StagedOutDir(args.out, overwrite=args.overwrite, kind="prepared data folder", is_same_kind=is_prepared_dir)
    start = time.perf_counter()
    with out.claim() as work:
        meta = _run_prepare(args, work)
    seconds = time.perf_counter() - start
    if args.json:
        print(json.dumps({"out": args.out, "seconds": round(seconds, 3)} | meta))
        return 0
    print(
        f"prepared {meta['tokens']:,} tokens (train {meta['train']['tokens']:,}, val {meta['val']['tokens']:,}) "
        f"from {meta['documents']:,} document(s), {meta['bytes'] / 1e6:.2f} MB, in {seconds:.2f} s -> {args.out}"
    )
    print(f"tokenizer {meta['tokenizer']['name']} (n_vocab {meta['n_vocab']:,}, {meta['dtype']}), encoder {meta['encoder']}")
    return 0


def _run_prepare(args: argparse.Namespace, out_dir: Path) -> dict:
    from gptlab.data.prep import prepare

    return prepare(
        args.data,
        out_dir,
        tokenizer=args.tokenizer,
        val_fraction=args.val_fraction,
        workers=args.workers,
        errors=args.errors,
        max_bytes=None if args.max_mb is None else max(1, int(args.max_mb * 1e6)),
        use_tiktoken=not args.no_tiktoken,
        progress=False if args.no_progress else None,
    )


def _list(args: argparse.Namespace) -> int:
    from gptlab.data.corpus import CORPORA
    from gptlab.data.registry import DATASETS
    from gptlab.downloads import cache_dir

    rows = [
        {"name": d.name, "file": str(cache_dir() / d.filename), "cached": (cache_dir() / d.filename).is_file(),
         "sha256": d.sha256, "source": d.url, "description": d.description}
        for d in DATASETS.values()
    ] + [{"name": n, "file": None, "cached": True, "sha256": None, "source": "local", "description": desc}
         for n, desc in CORPORA.items()]
    if args.json:
        print(json.dumps(rows))
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        state = "local" if r["file"] is None else ("cached" if r["cached"] else "not cached")
        print(f"{r['name'].ljust(width)}  {state:<10}  {r['description']}")
    print(f"cache: {cache_dir()} (set GPTLAB_DATA_DIR to change)")
    return 0


def _fetch(args: argparse.Namespace) -> int:
    from gptlab.data.registry import dataset_path

    paths = {name: str(dataset_path(name, download=not args.offline)) for name in args.names}
    if args.json:
        print(json.dumps(paths))
    else:
        for name, path in paths.items():
            print(f"{name}: {path}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from gptlab.data.prepared import PreparedData

    data = PreparedData(args.dir)
    meta = data.meta
    if args.json:
        print(json.dumps(meta))
        return 0
    print(f"{args.dir}: {meta['tokens']:,} tokens of {meta['tokenizer']['name']} (n_vocab {meta['n_vocab']:,}, {meta['dtype']})")
    print(f"  train.bin {len(data.train):,} tokens, val.bin {len(data.val):,} tokens (val fraction {meta['val_fraction']})")
    print(f"  {meta['documents']:,} document(s), {meta['bytes'] / 1e6:.2f} MB of text")
    for s in meta["sources"]:
        print(f"  source {s['spec']} ({s['kind']}): {s['bytes_used']:,} of {s['bytes']:,} bytes, sha256 {s['sha256'][:16]}...")
    return 0


def _sample(args: argparse.Namespace) -> int:
    from gptlab.data.prepared import PreparedData

    data = PreparedData(args.dir)
    x, y = data.sample_batch(args.batch_size, args.block_size, split=args.split, seed=args.seed)
    tok = data.tokenizer()
    rows = [{"x": xi.tolist(), "y": yi.tolist(), "text": tok.decode(xi.tolist())} for xi, yi in zip(x, y)]
    if args.json:
        print(json.dumps(rows))
        return 0
    for i, r in enumerate(rows):
        print(f"--- window {i}: {r['text']!r}")
    return 0

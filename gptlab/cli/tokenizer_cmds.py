"""Tokenizer verbs: ``train-tokenizer``, ``tokenize``, ``detokenize``."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

from gptlab.errors import GptlabError
from gptlab.tokenizer import ENDOFTEXT, GPT2_PATTERN, BPETokenizer, get_tokenizer


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the tokenizer verbs to the ``gptlab`` parser."""
    p = subparsers.add_parser(
        "train-tokenizer",
        help="train a byte-level BPE tokenizer on text",
        description="Train a byte-level BPE tokenizer (GPT-2 style, tiktoken compatible) with exactly "
        "--vocab-size ids, special tokens included, and save it.",
    )
    p.add_argument("--data", action="append", required=True, metavar="NAME|FILE",
                   help="training text: a named data set (e.g. tinyshakespeare) or a UTF-8 file; repeatable")
    p.add_argument("--vocab-size", type=int, required=True, metavar="N",
                   help="total number of ids, special tokens included (at least 256 + specials)")
    p.add_argument("--out", required=True, metavar="PATH", help="where to write the tokenizer")
    p.add_argument("--format", choices=["hf", "gptlab", "tiktoken"], default="hf",
                   help="hf: a Hugging Face tokenizer.json that `tokenizers` and transformers load with the same "
                   "ids (default); gptlab: gptlab's older JSON; tiktoken: ranks lines (pattern and specials not kept)")
    p.add_argument("--pattern", default=GPT2_PATTERN, metavar="REGEX",
                   help="pre-tokenization regex (regex-module syntax; default: GPT-2's)")
    p.add_argument("--special", nargs="*", default=None, metavar="TOKEN",
                   help=f"special tokens, given the last ids (default: {ENDOFTEXT}; '--special' alone: none)")
    p.add_argument("--min-frequency", type=int, default=2, metavar="K",
                   help="never merge a pair seen fewer than K times (default 2)")
    p.add_argument("--errors", choices=["strict", "replace"], default="strict",
                   help="what to do with bytes that are not UTF-8 (default: strict, an error)")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=_train)

    p = subparsers.add_parser(
        "tokenize",
        help="print the token ids of a text",
        description="Encode TEXT (or --file) and print its token ids, space separated.",
    )
    p.add_argument("--tokenizer", default="gpt2", metavar="gpt2|PATH",
                   help="'gpt2' (default), a tokenizer file (tokenizer.json of any byte-level BPE model, or one "
                   "train-tokenizer wrote), a model folder, or a .gguf file")
    p.add_argument("--add-special-tokens", action="store_true",
                   help="add what the tokenizer's post-processor adds around a text (Llama 3: <|begin_of_text|>)")
    p.add_argument("--allow-special", action="store_true",
                   help="encode special-token text such as <|endoftext|> as its special id "
                   "(without this flag such text is an error)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("text", nargs="?", metavar="TEXT", help="the text to encode")
    src.add_argument("--file", metavar="FILE", help="encode this UTF-8 file (or named data set) instead")
    p.add_argument("--json", action="store_true", help="print {ids, tokens} as JSON")
    p.set_defaults(func=_tokenize)

    p = subparsers.add_parser(
        "detokenize",
        help="decode token ids back to text",
        description="Decode token ids (separated by spaces or commas; read from stdin if none are given).",
    )
    p.add_argument("--tokenizer", default="gpt2", metavar="gpt2|PATH",
                   help="'gpt2' (default), a tokenizer file, a model folder, or a .gguf file")
    p.add_argument("ids", nargs="*", metavar="IDS", help="token ids, e.g. '15496 11 995' or '[15496, 11, 995]'")
    p.add_argument("--json", action="store_true", help="print {text} as JSON")
    p.set_defaults(func=_detokenize)


def _train(args: argparse.Namespace) -> int:
    from gptlab.data.corpus import read_text

    specials = [ENDOFTEXT] if args.special is None else list(dict.fromkeys(args.special))
    if any(not s for s in specials):
        raise GptlabError("--special: a special token cannot be the empty string")
    texts = [read_text(name, errors=args.errors) for name in args.data]
    start = time.perf_counter()
    tok = BPETokenizer.train(
        texts,  # each file is pre-tokenized on its own: no pre-token spans two files
        args.vocab_size,
        special_tokens=specials,
        pattern=args.pattern,
        min_frequency=args.min_frequency,
        progress=sys.stderr.isatty() and not args.json,
    )
    seconds = time.perf_counter() - start
    n_bytes = sum(len(t.encode("utf-8", "surrogatepass")) for t in texts)
    n_tokens = sum(len(tok.encode_ordinary(t)) for t in texts)
    out = Path(args.out)
    if out.is_dir():  # a folder gets the file name load_tokenizer looks for in a folder
        out = out / ("tokenizer.tiktoken" if args.format == "tiktoken" else "tokenizer.json")
    try:
        tok.save(out, format=args.format)
    except OSError as exc:
        raise GptlabError(f"--out {out}: cannot write the tokenizer ({exc.strerror})") from None
    summary = {
        "out": str(out),
        "format": args.format,
        "vocab_size": tok.n_vocab,
        "ordinary_tokens": len(tok.mergeable_ranks),
        "special_tokens": tok.special_tokens,
        "train_seconds": round(seconds, 3),
        "train_bytes": n_bytes,
        "train_tokens": n_tokens,
        "bytes_per_token": round(n_bytes / max(n_tokens, 1), 4),
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"trained BPE tokenizer: vocab size {tok.n_vocab} ({len(tok.mergeable_ranks)} ordinary + "
            f"{len(tok.special_tokens)} special) in {seconds:.2f} s"
        )
        print(f"compression: {summary['bytes_per_token']:.3f} bytes/token ({n_bytes:,} bytes -> {n_tokens:,} tokens)")
        print(f"saved to {out} ({args.format} format)")
    return 0


def _tokenize(args: argparse.Namespace) -> int:
    tok = get_tokenizer(args.tokenizer)
    if args.file is not None:
        from gptlab.data.corpus import read_text

        text = read_text(args.file)
    else:
        text = args.text
    if args.allow_special:
        ids = tok.encode(text, allowed_special="all")
    else:
        for special in tok.special_tokens:
            if special in text:
                where = f"--file {args.file}" if args.file is not None else "TEXT"
                raise GptlabError(
                    f"{where} contains the special token {special!r}; pass --allow-special to encode it "
                    f"as id {tok.special_tokens[special]}"
                )
        ids = tok.encode_ordinary(text)
    if args.add_special_tokens:
        ids = [*tok.prefix_ids, *ids, *tok.suffix_ids]
    if args.json:
        tokens = [tok.decode([i]) for i in ids]
        print(json.dumps({"ids": ids, "tokens": tokens, "n_tokens": len(ids)}, ensure_ascii=False))
    else:
        print(" ".join(map(str, ids)))
    return 0


def _detokenize(args: argparse.Namespace) -> int:
    raw = " ".join(args.ids) if args.ids else sys.stdin.read()
    fields = [f for f in re.split(r"[\s,\[\]]+", raw) if f]
    ids: list[int] = []
    for field in fields:
        try:
            ids.append(int(field))
        except ValueError:
            raise GptlabError(f"IDS: {field!r} is not a token id (expected integers)") from None
    tok = get_tokenizer(args.tokenizer)
    text = tok.decode(ids)
    if args.json:
        print(json.dumps({"text": text}, ensure_ascii=False))
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0

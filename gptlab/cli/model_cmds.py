"""``gptlab info`` (size and memory of a model) and ``gptlab generate`` (continue a prompt)."""

from __future__ import annotations

import argparse
import json
import sys
import time

from gptlab.errors import GptlabError

_MIB = 1024 * 1024


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``info`` and ``generate`` verbs."""
    from gptlab.model.config import PRESETS  # no torch import: keeps `gptlab --help` fast

    p = subparsers.add_parser(
        "info",
        help="parameter count and memory of a model",
        description="Parameters and memory (weights, gradients, AdamW state, KV cache) of a preset or a model folder.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", choices=list(PRESETS), help="a named config")
    src.add_argument("--model", metavar="DIR",
                     help="a pretraining run folder or a Hugging Face GPT-2 folder (reads its config.json)")
    src.add_argument("--list-presets", action="store_true", help="list the named configs with their sizes")
    p.add_argument("--tied", action=argparse.BooleanOptionalAction, default=None,
                   help="share the token embedding with the output head (preset default: untied, as in the book)")
    p.add_argument("--qkv-bias", action=argparse.BooleanOptionalAction, default=None,
                   help="bias on the query/key/value projections (GPT-2's real layout has one)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32", help="dtype of weights and cache (default float32)")
    p.add_argument("--context", type=int, default=None, help="KV cache length in tokens (default: the context length)")
    p.add_argument("--batch-size", type=int, default=1, help="sequences in the KV cache (default 1)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_info)

    g = subparsers.add_parser(
        "generate",
        help="continue a prompt with a model",
        description="Generate text: greedy at temperature 0 (the default), otherwise sampling with top-k/top-p.",
    )
    g.add_argument("--model", required=True,
                   help="a model folder (Hugging Face format), a hub name (gpt2, gpt2-medium, ...) or a preset (random weights)")
    g.add_argument("--prompt", required=True, action="append",
                   help="text to continue; repeat the flag for a batch of prompts")
    g.add_argument("--max-new-tokens", type=int, default=50, help="tokens to generate per prompt (default 50)")
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); higher = more random")
    g.add_argument("--top-k", type=int, default=None, help="sample only from the k most likely tokens")
    g.add_argument("--top-p", type=float, default=None, help="sample only from the smallest set with probability >= p")
    g.add_argument("--seed", type=int, default=None,
                   help="random seed, for reproducible sampling; each prompt gets its own generator seeded with it, "
                        "so a prompt gives the same text alone or among others")
    g.add_argument("--stream", action="store_true", help="print tokens as they are generated (one prompt)")
    g.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="weights dtype; bfloat16 is much faster on CPUs with bf16 support (default float32)")
    g.add_argument("--compile", action="store_true",
                   help="compile the decode step with torch.compile (about 2x faster on CPU after a one-off compilation)")
    g.add_argument("--no-cache", action="store_true", help="disable the KV cache (slow; for comparison)")
    g.add_argument("--ignore-eos", action="store_true", help="keep going after <|endoftext|>")
    g.add_argument("--json", action="store_true", help="machine-readable output")
    g.set_defaults(func=cmd_generate)


def cmd_info(args: argparse.Namespace) -> int:
    """Print parameter count and memory estimates."""
    from gptlab.model.config import GPTConfig
    from gptlab.model.memory import estimate_memory

    if args.list_presets:
        return _list_presets(args)
    if args.preset:
        cfg = GPTConfig.from_preset(args.preset)
        label = args.preset
    else:
        from pathlib import Path

        from gptlab.model.hf import read_config
        from gptlab.model.run_folder import is_run_dir, run_model_config

        directory = Path(args.model)
        if is_run_dir(directory):
            cfg = run_model_config(directory)
        else:
            cfg = read_config(directory)
        label = str(directory)
    if args.tied is not None:
        cfg = cfg.replace(tie_weights=args.tied)
    if args.qkv_bias is not None:
        cfg = cfg.replace(qkv_bias=args.qkv_bias)
    if args.context is not None and args.context <= 0:
        raise GptlabError(f"--context must be a positive integer, got {args.context}")
    if args.batch_size <= 0:
        raise GptlabError(f"--batch-size must be a positive integer, got {args.batch_size}")
    est = estimate_memory(cfg, args.dtype, args.context, args.batch_size)
    if args.json:
        print(json.dumps({"model": label, "config": cfg.to_dict(), **est.to_dict()}, indent=2))
        return 0
    yes = {True: "yes", False: "no"}
    print(f"{label}: {est.parameters:,} parameters ({est.parameters_without_embeddings:,} without embeddings)")
    print(f"  vocab {cfg.vocab_size}, context {cfg.context_length}, emb_dim {cfg.emb_dim}, {cfg.n_heads} heads, "
          f"{cfg.n_layers} layers, qkv bias {yes[cfg.qkv_bias]}, tied head {yes[cfg.tie_weights]}")
    print(f"memory ({args.dtype}, MB = 2^20 bytes):")
    rows = [
        ("weights", est.weights_bytes, ""),
        ("gradients", est.gradients_bytes, ""),
        ("AdamW state", est.adamw_bytes, "2 moments per parameter"),
        ("training total", est.training_bytes, "weights + gradients + AdamW, activations not included"),
        ("KV cache", est.kv_cache_bytes, f"batch {est.batch_size} x {est.context} tokens"),
    ]
    for name, value, note in rows:
        print(f"  {name:<15}{value / _MIB:>12,.2f} MB" + (f"  ({note})" if note else ""))
    return 0


def _list_presets(args: argparse.Namespace) -> int:
    """Print every preset's shape and parameter count."""
    from gptlab.model.config import PRESETS
    from gptlab.model.memory import estimate_memory

    rows = []
    for name, cfg in PRESETS.items():
        est = estimate_memory(cfg, args.dtype, None, 1)
        rows.append({"name": name, "parameters": est.parameters, "context_length": cfg.context_length,
                     "emb_dim": cfg.emb_dim, "n_heads": cfg.n_heads, "n_layers": cfg.n_layers,
                     "tie_weights": cfg.tie_weights})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'preset':<12}{'parameters':>14}  {'context':>7}  {'emb_dim':>7}  {'heads':>5}  {'layers':>6}  tied head")
    for r in rows:
        print(f"{r['name']:<12}{r['parameters']:>14,}  {r['context_length']:>7}  {r['emb_dim']:>7}  {r['n_heads']:>5}  "
              f"{r['n_layers']:>6}  {'yes' if r['tie_weights'] else 'no'}")
    print("parameters with GPT-2's 50,257-token vocabulary; a run's own tokenizer changes the embedding size")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """Load a model and its tokenizer, continue each prompt, print the text."""
    from gptlab.model.dtypes import parse_dtype
    from gptlab.model.generate import SamplingConfig
    from gptlab.model.load import load_model
    from gptlab.tokenizer.stream import StreamDecoder

    sampling = SamplingConfig(args.temperature, args.top_k, args.top_p, args.seed)
    # Before loading the model: a bad flag costs a second, not a download.
    sampling.check(args.max_new_tokens, flags=True)
    if args.stream and len(args.prompt) > 1:
        raise GptlabError("--stream prints one sequence; give a single --prompt")
    dtype = parse_dtype(args.dtype)
    model, tok = load_model(args.model, dtype=dtype)
    prompts = [tok.encode(p, allowed_special="all") for p in args.prompt]
    if any(not p for p in prompts):
        raise GptlabError("--prompt: an empty prompt has no token to continue from")
    eos = None if args.ignore_eos else tok.eot_id
    options = dict(sampling=sampling, eos_id=eos, use_cache=not args.no_cache, compile=args.compile)
    start = time.perf_counter()
    if args.stream:
        decoder = StreamDecoder(tok)
        new: list[int] = []
        if not args.json:
            sys.stdout.write(args.prompt[0])
        for step in model.stream_generate(prompts[0], args.max_new_tokens, **options):
            token = int(step[0])
            if token == eos:
                break
            new.append(token)
            if not args.json:
                sys.stdout.write(decoder.feed(token))
                sys.stdout.flush()
        if not args.json:
            sys.stdout.write(decoder.finish() + "\n")
        outputs = [new]
    else:
        outputs = model.generate(prompts, args.max_new_tokens, **options)
    seconds = time.perf_counter() - start
    if args.json:
        results = [
            {"prompt": text, "completion": tok.decode(ids), "tokens": ids} for text, ids in zip(args.prompt, outputs)
        ]
        print(json.dumps({"model": str(args.model), "seconds": round(seconds, 3), "results": results}, indent=2))
    elif not args.stream:
        for i, (text, ids) in enumerate(zip(args.prompt, outputs)):
            if i:
                print("---")
            print(text + tok.decode(ids))
    return 0

"""``gptlab info`` (size and memory of a model) and ``gptlab generate`` (continue a prompt)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING, Any

from gptlab.cli.quantize_cmds import add_compile_flag, add_quantize_flags, quantize_options
from gptlab.errors import GptlabError

if TYPE_CHECKING:  # pragma: no cover
    from gptlab.model.config import GPTConfig

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
                     help="a pretraining run folder, a Hugging Face folder (GPT-2, Llama, Qwen2/3; reads its "
                          "config.json) or a hub name already in the cache")
    src.add_argument("--list-presets", action="store_true", help="list the named configs with their sizes")
    p.add_argument("--tied", action=argparse.BooleanOptionalAction, default=None,
                   help="share the token embedding with the output head (default: as the preset or folder has it)")
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
                   help="a model folder (Hugging Face format), a hub name (gpt2 ... gpt2-xl, qwen3-0.6b, smollm2-135m, "
                        "llama-3.2-1b, ...: downloaded once) or a preset (random weights)")
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
    add_compile_flag(g, "before generating")
    add_quantize_flags(g)
    g.add_argument("--no-cache", action="store_true", help="disable the KV cache (slow; for comparison)")
    g.add_argument("--ignore-eos", action="store_true", help="keep going after <|endoftext|>")
    g.add_argument("--json", action="store_true", help="machine-readable output")
    g.set_defaults(func=cmd_generate)


def cmd_info(args: argparse.Namespace) -> int:
    """Print the model's shape, parameter count and memory estimates (weights, training, KV cache)."""
    from gptlab.model.config import PRESETS, GPTConfig
    from gptlab.model.dtypes import parse_dtype
    from gptlab.model.memory import estimate_memory, kv_cache_bytes

    if args.list_presets:
        return _list_presets(args)
    if args.preset:
        cfg = GPTConfig.from_preset(args.preset)
        label = args.preset
    else:
        from pathlib import Path

        from gptlab.model.hf import read_config, resolve_model_dir
        from gptlab.model.run_folder import is_run_dir, run_model_config

        # A hub name resolves to its cache folder only: `info` never downloads gigabytes to count them.
        try:
            directory = resolve_model_dir(args.model, download=False)
        except GptlabError as exc:
            if args.model in PRESETS:  # the preset of the same name has the shape, with no file at all
                raise GptlabError(f"{exc}; or see its shape with --preset {args.model}") from None
            raise
        if is_run_dir(directory):
            cfg = run_model_config(directory)
        else:
            cfg = read_config(directory)
        label = str(args.model) if not Path(args.model).is_dir() else str(directory)
    if args.tied is not None:
        cfg = cfg.replace(tie_weights=args.tied)
    if args.qkv_bias is not None:
        cfg = cfg.replace(qkv_bias=args.qkv_bias)
    if args.context is not None and args.context <= 0:
        raise GptlabError(f"--context must be a positive integer, got {args.context}")
    if args.batch_size <= 0:
        raise GptlabError(f"--batch-size must be a positive integer, got {args.batch_size}")
    est = estimate_memory(cfg, args.dtype, args.context, args.batch_size)
    dtype = parse_dtype(args.dtype)
    # Only the key/value heads are cached, so grouped-query attention shows here (Llama 3.2 1B: 8 of 32).
    per_token = kv_cache_bytes(cfg, 1, 1, dtype)
    full_context = kv_cache_bytes(cfg, cfg.context_length, 1, dtype)
    if args.json:
        print(json.dumps({"model": label, "family": cfg.family, "shape": _shape(cfg), "config": cfg.to_dict(),
                          **est.to_dict(), "kv_cache_bytes_per_token": per_token,
                          "kv_cache_full_context_bytes": full_context}, indent=2))
        return 0
    yes = {True: "yes", False: "no"}
    shape = _shape(cfg)
    print(f"{label}: {est.parameters:,} parameters ({est.parameters_without_embeddings:,} without embeddings)")
    print(f"  family {cfg.family} ({_hf_type(cfg)}): vocab {cfg.vocab_size}, context {cfg.context_length}, emb_dim {cfg.emb_dim}, "
          f"{cfg.n_layers} layers, tied head {yes[cfg.tie_weights]}")
    print(f"  attention: {cfg.n_heads} heads, {cfg.kv_heads} key/value heads ({shape['attention']}), "
          f"head_dim {cfg.head_dim}, qkv bias {yes[cfg.qkv_bias]}" + (", q/k norm" if cfg.qk_norm else ""))
    print(f"  block: {cfg.norm}, {cfg.mlp} feed-forward ({cfg.activation}), ff_dim {cfg.hidden_dim}")
    print(f"  positions: {_positions_text(cfg)}")
    print(f"memory ({args.dtype}, KB = 2^10, MB = 2^20 bytes):")
    rows = [
        ("weights", est.weights_bytes, ""),
        ("gradients", est.gradients_bytes, ""),
        ("AdamW state", est.adamw_bytes, "2 moments per parameter"),
        ("training total", est.training_bytes, "weights + gradients + AdamW, activations not included"),
    ]
    for name, value, note in rows:
        print(f"  {name:<15}{value / _MIB:>12,.2f} MB" + (f"  ({note})" if note else ""))
    print(f"  {'KV cache/token':<15}{per_token / 1024:>12,.2f} KB  (keys + values: 2 x {cfg.n_layers} layers x "
          f"{cfg.kv_heads} kv heads x {cfg.head_dim} x {dtype.itemsize} bytes)")
    if (est.context, est.batch_size) != (cfg.context_length, 1):
        print(f"  {'KV cache':<15}{est.kv_cache_bytes / _MIB:>12,.2f} MB  "
              f"(batch {est.batch_size} x {est.context} tokens)")
    print(f"  {'KV cache full':<15}{full_context / _MIB:>12,.2f} MB  (1 x {cfg.context_length} tokens, the full context)")
    return 0


def _shape(cfg: GPTConfig) -> dict[str, Any]:
    """The choices that tell the model families apart, JSON-ready (RoPE settings only when RoPE is used)."""
    if cfg.kv_heads == cfg.n_heads:
        attention = "multi-head"
    elif cfg.kv_heads == 1:
        attention = "multi-query"
    else:
        attention = f"grouped-query, {cfg.n_heads // cfg.kv_heads} query heads per key/value head"
    shape = {"family": cfg.family, "n_heads": cfg.n_heads, "n_kv_heads": cfg.kv_heads, "head_dim": cfg.head_dim,
             "attention": attention, "norm": cfg.norm, "positions": cfg.positions, "mlp": cfg.mlp,
             "activation": cfg.activation, "ff_dim": cfg.hidden_dim, "qk_norm": cfg.qk_norm}
    if cfg.positions == "rope":
        shape.update(rope_theta=cfg.rope_theta, rope_scaling=cfg.rope_scaling)
    return shape


def _hf_type(cfg: GPTConfig) -> str:
    """The Hugging Face ``model_type`` this config exports as (gpt2, llama, qwen2, qwen3), or "none"."""
    import torch

    from gptlab.model.hf import config_to_hf

    try:
        return config_to_hf(cfg, torch.float32)["model_type"]
    except GptlabError:  # a combination no Hugging Face class computes (gptlab can still train it)
        return "none"


def _positions_text(cfg: GPTConfig) -> str:
    """One line on how positions are encoded: a learned table, or RoPE with its base and scaling."""
    if cfg.positions == "learned":
        return f"learned table of {cfg.context_length}"
    theta = cfg.rope_theta
    text = f"rope, theta {theta:,.0f}" if theta == int(theta) else f"rope, theta {theta:g}"
    scaling = cfg.rope_scaling
    if scaling:
        kind = scaling.get("rope_type", scaling.get("type"))
        details = ", ".join(f"{k} {v:g}" for k, v in scaling.items() if k not in ("rope_type", "type"))
        text += f", {kind} scaling ({details})"
    return text


def _list_presets(args: argparse.Namespace) -> int:
    """Print every preset's family, shape and exact parameter count."""
    from gptlab.model.config import PRESETS
    from gptlab.model.memory import count_parameters

    rows = []
    for name, cfg in PRESETS.items():
        n_all, _ = count_parameters(cfg)
        rows.append({"name": name, "family": cfg.family, "hf_type": _hf_type(cfg), "parameters": n_all, "vocab_size": cfg.vocab_size,
                     "context_length": cfg.context_length, "emb_dim": cfg.emb_dim, "n_heads": cfg.n_heads,
                     "n_kv_heads": cfg.kv_heads, "head_dim": cfg.head_dim, "n_layers": cfg.n_layers,
                     "tie_weights": cfg.tie_weights})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(r["name"]) for r in rows) + 2
    print(f"{'preset':<{width}}{'family':<7}{'hf':<6}{'parameters':>14}  {'vocab':>6}  {'context':>7}  {'emb_dim':>7}  "
          f"{'heads':>5}  {'kv':>3}  {'layers':>6}  tied head")
    for r in rows:
        print(f"{r['name']:<{width}}{r['family']:<7}{r['hf_type']:<6}{r['parameters']:>14,}  {r['vocab_size']:>6}  "
              f"{r['context_length']:>7}  {r['emb_dim']:>7}  {r['n_heads']:>5}  {r['n_kv_heads']:>3}  "
              f"{r['n_layers']:>6}  {'yes' if r['tie_weights'] else 'no'}")
    print("parameters at each preset's vocabulary; a run's own tokenizer changes the embedding size. "
          "kv = key/value heads (fewer than heads: grouped-query attention); hf = the Hugging Face model_type it "
          "exports as")
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
    model, tok = load_model(args.model, dtype=dtype, **quantize_options(args))
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

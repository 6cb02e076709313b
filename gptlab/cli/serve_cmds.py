"""``gptlab serve`` (an OpenAI-compatible API and a chat page) and ``gptlab chat`` (a terminal chat)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from gptlab.cli.quantize_cmds import add_compile_flag, add_quantize_flags, quantize_options
from gptlab.errors import GptlabError

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="a model folder (run folder or Hugging Face format), a hub name (gpt2, ...) or a preset "
                        "(random weights)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="weights dtype; bfloat16 is much faster on CPUs with bf16 support (default float32)")
    add_quantize_flags(p)
    p.add_argument("--style", default=None,
                   help="prompt style for chats: alpaca, phi3, plain, or a template (default: the model folder's "
                        "prompt_style.json, else the tokenizer's chat template, else plain 'User:/Assistant:')")
    p.add_argument("--max-context", type=int, default=None,
                   help="most tokens (prompt + answer) per request; memory for this many is reserved per sequence "
                        "(default: the model's context length, at most 4096)")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``serve`` and ``chat`` verbs."""
    s = subparsers.add_parser(
        "serve",
        help="serve a model over an OpenAI-compatible HTTP API, with a chat page",
        description="Serve /v1/completions, /v1/chat/completions (streaming with server-sent events, logprobs), "
        "/v1/models, /health, /metrics (Prometheus) and a chat page at /, on uvicorn. Concurrent requests "
        "are decoded together (continuous batching), with a fair share of the slots for each request. "
        "SIGTERM or Ctrl-C stops accepting, lets running requests finish (--shutdown-timeout) and exits 0.",
    )
    _model_args(s)
    s.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 for every interface)")
    s.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0 picks a free one)")
    s.add_argument("--api-key", default=os.environ.get("GPTLAB_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1/* (default: $GPTLAB_API_KEY, else none)")
    s.add_argument("--max-batch", type=int, default=8,
                   help="sequences decoded together; more requests wait for a free slot (default 8)")
    s.add_argument("--max-per-request", type=int, default=None,
                   help="slots one request's prompts may hold at once, so one big request cannot starve the "
                        "others (default: half of --max-batch)")
    s.add_argument("--name", default=None, help="model id reported by /v1/models (default: the --model name)")
    s.add_argument("--max-body", type=int, default=1 << 20, help="largest request body in bytes (default 1 MiB)")
    s.add_argument("--threads", type=int, default=None, help="torch threads for the model (default: torch's)")
    s.add_argument("--access-log", choices=["text", "json", "off"], default="text",
                   help="one line per request on stderr: method, path, status, tokens, latency; never bodies "
                        "(default text)")
    s.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="also answer requests whose Host header is NAME (repeatable; '*' for any). By default only "
                        "the bound address (and localhost names on a loopback address) is accepted, which stops "
                        "DNS-rebinding web pages")
    s.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="let web pages from ORIGIN (e.g. http://localhost:3000; '*' for any) call the API from a "
                        "browser (repeatable; default: none)")
    s.add_argument("--max-connections", type=int, default=1000,
                   help="open connections at most; past it the one waiting longest for its request is closed "
                        "(default 1000)")
    s.add_argument("--header-timeout", type=float, default=10.0,
                   help="seconds a client has to send a whole request head (default 10)")
    s.add_argument("--shutdown-timeout", type=float, default=30.0,
                   help="on SIGTERM/Ctrl-C, seconds running requests get to finish before they are ended with an "
                        "error (default 30)")
    add_compile_flag(s, "before serving (the server reports ready after it)")
    s.set_defaults(func=cmd_serve)

    c = subparsers.add_parser(
        "chat",
        help="chat with a model in the terminal",
        description="A terminal chat with streamed answers. The history is kept within the model's context "
        "window (oldest turns are dropped). Commands: /reset clears the history, /exit quits (so does EOF).",
    )
    _model_args(c)
    c.add_argument("--system", default=None, help="a system message put before the conversation")
    c.add_argument("--temperature", type=float, default=0.7, help="0 = greedy; higher = more random (default 0.7)")
    c.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1: off)")
    c.add_argument("--max-tokens", type=int, default=256, help="longest answer in tokens (default 256)")
    c.add_argument("--seed", type=int, default=None, help="random seed, for reproducible answers")
    c.set_defaults(func=cmd_chat)


def _load(args: argparse.Namespace, max_batch: int, compile: bool | str | None = None,  # noqa: ANN202
          max_per_group: int | None = None):
    """Model, tokenizer, chat format and a started engine (its decode step compiled first with ``compile``)."""
    from gptlab.model.dtypes import parse_dtype
    from gptlab.model.load import load_model
    from gptlab.data.chat_format import chat_format_for
    from gptlab.serve.engine import Engine

    if max_batch < 1:
        raise GptlabError(f"--max-batch must be a positive integer, got {max_batch}")
    if args.max_context is not None and args.max_context < 2:
        raise GptlabError(f"--max-context must be at least 2 tokens, got {args.max_context}")
    dtype = parse_dtype(args.dtype)
    model, tok = load_model(args.model, dtype=dtype, **quantize_options(args))
    fmt = chat_format_for(args.model if Path(args.model).is_dir() else None, args.style, tokenizer=tok)
    # The engine caps the context (and so the cache it allocates per sequence) even without the flag:
    # published Llama/Qwen configs have windows of 32k-128k tokens.
    engine = Engine(model, tok, max_batch=max_batch, max_context=args.max_context, compile=compile,
                    max_per_group=max_per_group)
    if compile:
        print("gptlab serve: compiling the decode step", file=sys.stderr, flush=True)
    return model, tok, fmt, engine


def _check_serve_flags(args: argparse.Namespace) -> None:
    """Refuse unusable serve flags in one line, before the model loads."""
    if not 0 <= args.port <= 65535:
        raise GptlabError(f"--port must be in 0..65535, got {args.port}")
    if args.max_body < 1024:
        raise GptlabError(f"--max-body must be at least 1024 bytes, got {args.max_body}")
    if args.api_key is not None and not args.api_key.strip():
        # An empty key would silently mean "no authentication".
        raise GptlabError("--api-key (or $GPTLAB_API_KEY) is empty; give a key, or leave both unset to serve "
                          "without one")
    if args.max_per_request is not None and args.max_per_request < 1:
        raise GptlabError(f"--max-per-request must be a positive integer, got {args.max_per_request}")
    if args.max_connections < 1:
        raise GptlabError(f"--max-connections must be a positive integer, got {args.max_connections}")
    for flag, value in (("--header-timeout", args.header_timeout), ("--shutdown-timeout", args.shutdown_timeout)):
        if not value >= 0 or value == float("inf"):
            raise GptlabError(f"{flag} must be a non-negative number of seconds, got {value}")
    if args.header_timeout == 0:
        raise GptlabError("--header-timeout must be more than 0 seconds")


def cmd_serve(args: argparse.Namespace) -> int:
    """Load the model and serve until Ctrl-C or SIGTERM (then drain, and exit 0)."""
    _check_serve_flags(args)
    if args.threads is not None:
        import torch

        torch.set_num_threads(max(1, args.threads))
    from gptlab.serve.server import create_server

    model, tok, fmt, engine = _load(args, args.max_batch, compile=args.compile, max_per_group=args.max_per_request)
    if args.compile:
        engine.warm_up()  # before the port opens: the server reports ready only when it is fast
    name = args.name or (Path(args.model).name if Path(args.model).is_dir() else str(args.model))
    try:
        server = create_server(engine, args.host, args.port, api_key=args.api_key, model_name=name,
                               chat_format=fmt, max_body_bytes=args.max_body, allowed_hosts=args.allowed_host,
                               cors_origins=args.cors_origin, max_connections=args.max_connections,
                               header_timeout=args.header_timeout, shutdown_timeout=args.shutdown_timeout,
                               access_log_style=args.access_log)
    except OSError as exc:
        raise GptlabError(f"--host/--port: cannot listen on {args.host}:{args.port} ({exc.strerror or exc})") from None
    if args.host not in _LOOPBACK and not args.api_key:
        print(f"gptlab serve: warning: listening on {args.host} without an API key: anyone who can reach this "
              "machine can use the model (set --api-key)", file=sys.stderr)
    print(f"gptlab serve: {name} at {server.url} (chat page at {server.url}/, API at {server.url}/v1, "
          f"metrics at {server.url}/metrics; up to {engine.max_batch} sequences per step of up to "
          f"{engine.context_length} tokens, prompt style {fmt.name}); Ctrl-C stops", flush=True)
    server.run()
    print("gptlab serve: stopped", file=sys.stderr)
    return 0


def _fit_history(messages: list[dict], fmt, tok, context: int, max_tokens: int) -> tuple[list[int], int, int]:  # noqa: ANN001
    """Drop the oldest turns until prompt + answer fit the context.

    Returns ``(prompt ids, max_tokens for the answer, turns dropped)``. A lone message too long for the
    context leaves room for a shorter answer, or none at all (max_tokens 0).
    """
    from gptlab.data.chat_format import encode_chat
    from gptlab.serve.engine import ContextLengthExceeded, check_fits

    dropped = 0
    while True:
        ids = encode_chat(fmt, tok, messages)
        try:
            check_fits(len(ids), max_tokens, context)
        except ContextLengthExceeded:
            pass
        else:
            return ids, max_tokens, dropped
        first = next(i for i, m in enumerate(messages) if m["role"] != "system")
        users = sum(1 for m in messages if m["role"] == "user")
        if users <= 1:
            return ids, max(0, context - len(ids)), dropped
        # Remove the oldest user turn and the answer that followed it.
        end = first + 1
        if end < len(messages) and messages[end]["role"] == "assistant":
            end += 1
        del messages[first:end]
        dropped += 1


def cmd_chat(args: argparse.Namespace) -> int:
    """Read messages from stdin, stream answers to stdout; /reset and /exit."""
    if args.max_tokens < 1:
        raise GptlabError(f"--max-tokens must be >= 1, got {args.max_tokens}")
    if not 0.0 <= args.temperature <= 2.0:
        raise GptlabError(f"--temperature must be in [0, 2], got {args.temperature}")
    if not 0.0 < args.top_p <= 1.0:
        raise GptlabError(f"--top-p must be in (0, 1], got {args.top_p}")
    from gptlab.data.chat_format import SpecialTokenInMessage, history_text, stop_ids_of
    from gptlab.serve.engine import SamplingParams

    model, tok, fmt, engine = _load(args, 1)
    engine.start()
    context = engine.context_length  # the model's window, or less under --max-context
    system = [{"role": "system", "content": args.system}] if args.system else []
    history: list[dict] = list(system)
    interactive = sys.stdin.isatty()
    print(f"gptlab chat: {args.model} (context {context} tokens, prompt style {fmt.name}); "
          "/reset clears the history, /exit quits", file=sys.stderr, flush=True)
    turn = 0
    try:
        while True:
            if interactive:
                sys.stdout.write("\nyou> ")
                sys.stdout.flush()
            line = sys.stdin.readline()
            if not line:
                break
            text = line.strip()
            if not text:
                continue
            if text in ("/exit", "/quit"):
                break
            if text == "/reset":
                history = list(system)
                print("[history cleared]", flush=True)
                continue
            if text.startswith("/"):
                print(f"[unknown command {text.split()[0]}; /reset or /exit]", flush=True)
                continue
            trial = history + [{"role": "user", "content": text}]
            try:
                ids, max_tokens, dropped = _fit_history(trial, fmt, tok, context, args.max_tokens)
            except SpecialTokenInMessage as exc:  # the user's text only: say so and take the next message
                print(f"[not sent: {exc}]", flush=True)
                continue
            if max_tokens < 1:
                print(f"[message too long: {len(ids)} tokens do not fit the {context}-token context]", flush=True)
                continue
            if dropped:
                print(f"[dropped the {dropped} oldest turn(s) to fit the context]", file=sys.stderr, flush=True)
            seed = None if args.seed is None else args.seed + turn
            turn += 1
            params = SamplingParams(max_tokens=max_tokens, temperature=args.temperature, top_p=args.top_p,
                                    seed=seed, stop=tuple(fmt.stop), stop_ids=stop_ids_of(fmt))
            sys.stdout.write("assistant> ")
            sys.stdout.flush()
            parts: list[str] = []
            try:
                for event in engine.stream(ids, params):
                    if event.kind == "text":
                        # Leading whitespace after "Assistant:" is formatting, not part of the answer.
                        piece = event.text if parts else event.text.lstrip()
                        if not piece:
                            continue
                        parts.append(piece)
                        sys.stdout.write(piece)
                        sys.stdout.flush()
                    elif event.kind == "error":
                        raise GptlabError(event.text)
            except KeyboardInterrupt:
                sys.stdout.write(" [stopped]")
            sys.stdout.write("\n")
            sys.stdout.flush()
            history = trial + [{"role": "assistant", "content": history_text(fmt, "".join(parts)).strip()}]
    except KeyboardInterrupt:
        pass
    finally:
        engine.stop()
    return 0

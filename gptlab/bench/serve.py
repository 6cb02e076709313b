"""``gptlab bench serve``: what continuous batching buys, end to end over HTTP.

A real :class:`~gptlab.serve.server.ApiServer` (engine + HTTP on a free loopback port) serves the
GPT-2 124M architecture with random weights (seeded; throughput does not depend on what the weights
say, and no download is needed). Clients are threads in the same process that POST
``/v1/completions`` with a fixed prompt of random token ids, greedy, ``ignore_eos`` so every request
produces exactly ``--max-tokens`` tokens.

Measured: total generated tokens per second with 8 concurrent clients (each sending ``--requests``
requests back to back) against one client doing the same alone. The two runs alternate after a
warm-up and each figure is the median of the repeats. Target: 8 clients get at least 3x the total
throughput of one, which a server that handled requests one at a time could never reach.

Also measured: the server's own overhead on a keep-alive connection, as the median time of a
1-token completion of a 1-token prompt over HTTP minus the median time of the same request submitted
to the engine directly, interleaved. Target: under 10 ms (the old server's split writes met the
client's delayed ACK and took 40+ ms).

The weights' dtype is chosen for the machine by default (``--dtype auto``): bf16 where its matrix
products are fast (AVX512-BF16 or AMX, the setting a CPU deployment would use), else float32; on a CPU
without bf16 instructions a batch of 8 in bf16 is compute-bound and would measure the CPU, not the server.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from gptlab.cli.quantize_cmds import add_compile_flag
from gptlab.bench.report import Result, format_table, interleaved, median
from gptlab.errors import GptlabError

TARGET = 3.0
OVERHEAD_TARGET_MS = 10.0


def _log(msg: str) -> None:
    print(f"[bench serve] {msg}", file=sys.stderr, flush=True)


def _client(host: str, port: int, prompt: list[int], max_tokens: int, requests: int, stream: bool,
            totals: list[int], errors: list[str]) -> None:
    """Send ``requests`` completions one after another on one keep-alive connection; add up their tokens."""
    conn = http.client.HTTPConnection(host, port, timeout=600)
    body = json.dumps({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
                       "stream": stream, **({"stream_options": {"include_usage": True}} if stream else {})})
    try:
        for _ in range(requests):
            conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            if resp.status != 200:
                errors.append(f"HTTP {resp.status}: {data[:200]!r}")
                return
            if stream:
                events = [e[6:] for e in data.decode().split("\n\n") if e.startswith("data: ")]
                usage = json.loads(events[-2])["usage"]  # the usage chunk comes right before [DONE]
            else:
                usage = json.loads(data)["usage"]
            totals.append(usage["completion_tokens"])
    except Exception as exc:  # noqa: BLE001 - reported as a failed benchmark, not a traceback per thread
        errors.append(repr(exc))
    finally:
        conn.close()


def _rate(host: str, port: int, clients: int, prompt: list[int], max_tokens: int, requests: int,
          stream: bool) -> Callable[[], float]:
    """A callable that runs ``clients`` concurrent clients once and returns total tokens per second."""

    def run() -> float:
        totals: list[int] = []
        errors: list[str] = []
        threads = [threading.Thread(target=_client, args=(host, port, prompt, max_tokens, requests, stream,
                                                          totals, errors)) for _ in range(clients)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - start
        if errors:
            raise GptlabError(f"bench serve: {len(errors)} client(s) failed, first: {errors[0]}")
        expected = clients * requests * max_tokens
        if sum(totals) != expected:
            raise GptlabError(f"bench serve: expected {expected} tokens, the server reported {sum(totals)}")
        return sum(totals) / seconds

    return run


def request_overhead(host: str, port: int, engine, token: int, rounds: int = 5, per_round: int = 20) -> dict:  # noqa: ANN001
    """Median ms of a 1-token completion over a reused HTTP connection and submitted to ``engine`` directly."""
    from gptlab.serve.engine import SamplingParams

    body = json.dumps({"prompt": [token], "max_tokens": 1, "temperature": 0, "ignore_eos": True})
    params = SamplingParams(max_tokens=1, temperature=0, ignore_eos=True)
    conn = http.client.HTTPConnection(host, port, timeout=60)
    over_http: list[float] = []
    direct: list[float] = []
    try:
        for _ in range(rounds + 1):  # the first round warms up both paths
            for _ in range(per_round):
                start = time.perf_counter()
                conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                over_http.append(time.perf_counter() - start)
                if resp.status != 200:
                    raise GptlabError(f"bench serve: the 1-token request failed with HTTP {resp.status}")
                start = time.perf_counter()
                engine.complete([token], params)
                direct.append(time.perf_counter() - start)
    finally:
        conn.close()
    http_ms, engine_ms = median(over_http[per_round:]) * 1e3, median(direct[per_round:]) * 1e3
    return {"http_ms": round(http_ms, 3), "engine_ms": round(engine_ms, 3),
            "overhead_ms": round(http_ms - engine_ms, 3), "target_ms": OVERHEAD_TARGET_MS,
            "met": http_ms - engine_ms < OVERHEAD_TARGET_MS}


def run_benchmark(preset: str = "gpt2", dtype: str = "auto", clients: int = 8, requests: int = 2,
                  max_tokens: int = 64, prompt_tokens: int = 32, repeats: int = 5, stream: bool = False,
                  seed: int = 0, quantize: str | None = None,
                  compile: str | None = None) -> tuple[Result, dict[str, Any]]:
    """Start a server for the ``preset`` (random weights), measure 1 vs ``clients`` clients; returns the result.

    ``quantize`` (``int8``/``int4``) serves the model with weight-only quantized linear layers;
    ``compile`` (``default``/``max-autotune``) compiles its decode step first, as ``serve --compile`` does."""
    import torch

    from gptlab.model import GPT, PRESETS
    from gptlab.model.device import fast_bf16
    from gptlab.model.dtypes import parse_dtype
    from gptlab.serve.engine import Engine
    from gptlab.serve.server import create_server
    from gptlab.tokenizer import get_tokenizer

    if preset not in PRESETS:
        raise GptlabError(f"--preset {preset!r}: expected one of {', '.join(PRESETS)}")
    for name, value in (("--clients", clients), ("--requests", requests), ("--max-tokens", max_tokens),
                        ("--prompt-tokens", prompt_tokens), ("--repeats", repeats)):
        if value < 1:
            raise GptlabError(f"{name} must be a positive integer, got {value}")
    cfg = PRESETS[preset]
    if prompt_tokens + max_tokens > cfg.context_length:
        raise GptlabError(f"--prompt-tokens + --max-tokens must fit the {cfg.context_length}-token context")
    torch.manual_seed(seed)
    if dtype == "auto":
        dtype = "bfloat16" if fast_bf16(torch.device("cpu")) else "float32"
    model = GPT(cfg).to(parse_dtype(dtype)).eval()
    n_params = model.num_parameters()  # before quantizing: int8/int4 weights are buffers, not parameters
    if quantize:
        from gptlab.model.quantize import quantize_model

        quantize_model(model, quantize)
        dtype = quantize
    prompt = torch.randint(0, cfg.vocab_size, (prompt_tokens,), generator=torch.Generator().manual_seed(seed)).tolist()
    engine = Engine(model, get_tokenizer("gpt2"), max_batch=clients, compile=compile or False)
    if compile:
        start = time.perf_counter()
        engine.warm_up()
        _log(f"decode step compiled ({compile}) in {time.perf_counter() - start:.0f} s")
    server = create_server(engine, "127.0.0.1", 0, model_name=preset).start()
    host, port = server.server_address[:2]
    try:
        contenders = {
            "1 client": _rate(host, port, 1, prompt, max_tokens, requests, stream),
            f"{clients} concurrent clients": _rate(host, port, clients, prompt, max_tokens, requests, stream),
        }
        _log(f"{preset} preset ({n_params / 1e6:.0f}M parameters counting its untied output head; "
             f"random weights, {dtype}{', compiled ' + compile if compile else ''}), "
             f"{torch.get_num_threads()} threads; {requests} request(s) x {max_tokens} tokens per client, "
             f"{repeats} repeats")
        start = time.perf_counter()
        samples = interleaved(contenders, repeats)
        _log(f"done in {time.perf_counter() - start:.0f} s")
        stats = engine.stats()
        overhead = request_overhead(host, port, engine, prompt[0])
    finally:
        server.close()
    names = list(contenders)
    result = Result(
        name=f"serve {clients} clients vs 1",
        unit="tokens/s",
        ours=median(samples[names[1]]),
        reference=median(samples[names[0]]),
        ours_label=names[1],
        reference_label=names[0],
        target=TARGET,
        samples=samples,
        note=f"{preset} random weights, {dtype}{', --compile ' + compile if compile else ''}, "
             f"{'streaming' if stream else 'non-streaming'} over HTTP",
    )
    setup = {"preset": preset, "dtype": dtype, "clients": clients, "requests_per_client": requests,
             "max_tokens": max_tokens, "prompt_tokens": prompt_tokens, "repeats": repeats, "stream": stream,
             "threads": torch.get_num_threads(), "compile": compile, "peak_batch": stats["peak_batch"], "overhead": overhead}
    return result, setup


def cmd_bench_serve(args: argparse.Namespace) -> int:
    """Handler of ``gptlab bench serve``."""
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    result, setup = run_benchmark(args.preset, args.dtype, args.clients, args.requests, args.max_tokens,
                                  args.prompt_tokens, args.repeats, args.stream, quantize=args.quantize,
                                  compile=args.compile)
    if args.json:
        print(json.dumps({"target": "serve", "setup": setup, "results": [result.to_dict()]}, indent=2))
    else:
        print(format_table([result]))
        print(f"({result.note}; most sequences decoded in one step: {setup['peak_batch']})")
        o = setup["overhead"]
        print(f"keep-alive 1-token completion: {o['http_ms']:.2f} ms over HTTP, {o['engine_ms']:.2f} ms in the engine "
              f"alone: {o['overhead_ms']:.2f} ms of server overhead (target < {o['target_ms']:g} ms: "
              f"{'yes' if o['met'] else 'NO'})")
    return 0


def register_target(subparsers: argparse._SubParsersAction) -> None:
    """Add ``serve`` to the ``gptlab bench`` sub-commands."""
    p = subparsers.add_parser(
        "serve",
        help="serving throughput: concurrent clients against one (continuous batching)",
        description="Serve the GPT-2 124M architecture (random weights) over HTTP on a free loopback port and "
        "measure total tokens/s with N concurrent clients against one client; target >= 3x for 8 clients.",
    )
    p.add_argument("--preset", default="gpt2", help="model preset, random weights (default gpt2: 124M)")
    p.add_argument("--dtype", choices=["auto", "bfloat16", "float32"], default="auto",
                   help="weights dtype (default auto: bfloat16 where this CPU has bf16 instructions, else float32)")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients (and batch slots; default 8)")
    p.add_argument("--requests", type=int, default=2, help="requests each client sends per run (default 2)")
    p.add_argument("--max-tokens", type=int, default=64, help="tokens generated per request (default 64)")
    p.add_argument("--prompt-tokens", type=int, default=32, help="prompt length in tokens (default 32)")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (default 5)")
    p.add_argument("--quantize", choices=["int8", "int4"], default=None,
                   help="serve with weight-only int8/int4 linear layers (tokens/s of a quantized server)")
    add_compile_flag(p, "before the server starts (as serve --compile)")
    p.add_argument("--stream", action="store_true", help="stream the answers (server-sent events)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_bench_serve)

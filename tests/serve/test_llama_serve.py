"""Serving the Llama/Qwen family: continuous batching, the HTTP API, chat, and the per-slot context cap."""

from __future__ import annotations

import http.client
import io
import json
import random
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from gptlab.errors import GptlabError
from gptlab.model import GPT, GPTConfig
from gptlab.model.config import modern
from gptlab.serve.engine import DEFAULT_MAX_CONTEXT, ContextLengthExceeded, Engine, SamplingParams
from gptlab.serve.slots import SlotCache

# GPT-2's vocabulary so text round-trips; a short context so the slot cache moves rows both ways.
LLAMA = modern(vocab_size=50257, context_length=96, emb_dim=32, n_heads=4, n_kv_heads=2, n_layers=2, ff_dim=64,
               tie_weights=True)
FAMILY = {
    "llama": LLAMA,  # grouped-query attention, RoPE, RMSNorm, SwiGLU
    "qwen3": LLAMA.replace(qk_norm=True, head_size=16, rope_theta=1_000_000.0),  # q/k norms, wider heads
    "qwen2": LLAMA.replace(qkv_bias=True, n_kv_heads=1),  # q/k/v biases, multi-query
}


def build(cfg: GPTConfig, seed: int = 0) -> GPT:
    """A random model whose attention depends clearly on positions.

    At GPT-2's initialisation a tiny model's attention scores are near zero, so attention is close to
    uniform and rotating queries and keys by the wrong angles hardly changes a greedy token. Larger
    query and key weights make the scores (and so the rotary positions) decide the output.
    """
    torch.manual_seed(seed)
    model = GPT(cfg).eval()
    with torch.no_grad():
        for block in model.blocks:
            att = block.att
            if cfg.qk_norm:  # q and k are normalised per head: their gains set the scale
                att.q_norm.weight.mul_(3.0)
                att.k_norm.weight.mul_(3.0)
            else:
                att.q_proj.weight.mul_(20.0)
                att.k_proj.weight.mul_(20.0)
    return model


def drain(req) -> list:
    events = []
    while True:
        event = req.events.get(timeout=60)
        events.append(event)
        if event.kind != "text":
            return events


@pytest.mark.parametrize("name", list(FAMILY))
def test_greedy_in_a_batch_equals_generate_alone(name, gpt2_tok):
    """Requests join mid-flight and run to the context's end: each gets what ``generate`` gives it alone.

    With rotary positions every row needs its own position ids (its own length, not the shared
    width of the cache), and rows that move left or right keep keys rotated for where they were
    computed; a mistake in either shows up as a different token.
    """
    model = build(FAMILY[name])
    rng = random.Random(1)
    ctx = model.cfg.context_length
    engine = Engine(model, gpt2_tok, max_batch=3).start()
    try:
        jobs = []
        for i in range(8):
            p = rng.randrange(1, 50)
            n = ctx - p if i % 3 == 0 else rng.randrange(1, ctx - p + 1)
            jobs.append(([rng.randrange(50257) for _ in range(p)], n))
        reqs = []
        for i, (prompt, n) in enumerate(jobs):
            reqs.append(engine.submit(prompt, SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)))
            if i in (0, 4):  # later requests join running sequences
                reqs[-1].events.get(timeout=60)
        for req in reqs:
            drain(req)
        for (prompt, n), req in zip(jobs, reqs):
            assert req.finish_reason == "length"
            assert req.tokens == model.generate(prompt, n), f"{name}: prompt of {len(prompt)} tokens, {n} new"
        stats = engine.stats()
        assert stats["peak_batch"] == 3 and stats["active"] == 0
        assert stats["steps"] < sum(n for _, n in jobs) * 0.7
        assert engine.cache.shifts["right"] > 0 and engine.cache.shifts["left"] > 0
    finally:
        engine.stop()


def test_seeded_sampling_alone_and_batched(gpt2_tok):
    model = build(FAMILY["qwen3"])
    engine = Engine(model, gpt2_tok, max_batch=3).start()
    try:
        prompts = [gpt2_tok.encode(t) for t in ("The cat", "Once upon a time there was", "1 2 3")]
        params = [SamplingParams(max_tokens=15, temperature=t, top_p=p, seed=s, ignore_eos=True)
                  for t, p, s in ((0.8, 0.9, 1), (1.2, 1.0, 2), (1.0, 0.5, 3))]
        reqs = [engine.submit(pr, pa) for pr, pa in zip(prompts, params)]
        for req in reqs:
            drain(req)
        for prompt, pa, req in zip(prompts, params, reqs):
            assert req.tokens == model.generate(prompt, 15, temperature=pa.temperature, top_p=pa.top_p, seed=pa.seed)
    finally:
        engine.stop()


def test_the_slot_cache_is_capped_on_long_context_models(gpt2_tok):
    # A published Llama 3.2 window (131,072 positions) on a tiny model: allocating it for every slot
    # is what the cap prevents (the real 1B model would need 4 GiB per slot in float32).
    model = build(LLAMA.replace(context_length=131072))
    engine = Engine(model, gpt2_tok, max_batch=4)
    assert engine.context_length == DEFAULT_MAX_CONTEXT
    assert engine.cache.max_len == DEFAULT_MAX_CONTEXT
    # slots, kv heads, positions (one spare, never used: see SlotCache), head size
    assert engine.cache.keys[0].shape == (4, 2, DEFAULT_MAX_CONTEXT + 1, 8)
    with pytest.raises(ContextLengthExceeded, match=f"maximum context length is {DEFAULT_MAX_CONTEXT} tokens"):
        engine.check_fits(DEFAULT_MAX_CONTEXT - 10, 11)

    small = Engine(model, gpt2_tok, max_batch=2, max_context=40).start()
    try:
        assert small.cache.max_len == 40 and small.context_length == 40
        prompt = gpt2_tok.encode("Every effort moves you")
        req = small.submit(prompt, SamplingParams(max_tokens=40 - len(prompt), temperature=0.0, ignore_eos=True))
        drain(req)
        assert req.tokens == model.generate(prompt, 40 - len(prompt))
        with pytest.raises(ContextLengthExceeded):
            small.submit(prompt, SamplingParams(max_tokens=41 - len(prompt), temperature=0.0))
    finally:
        small.stop()
    # Never more than the model's own window; the cache helper caps the same way.
    assert Engine(build(LLAMA), gpt2_tok, max_batch=1, max_context=10_000).context_length == 96
    assert SlotCache.for_model(model, 2, max_len=64).max_len == 64
    with pytest.raises(GptlabError, match="max_context must be an integer >= 2"):
        Engine(model, gpt2_tok, max_context=1)


def _post(server, path: str, body: dict) -> tuple[int, dict]:
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=60)
    conn.request("POST", path, body=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = json.loads(resp.read())
    conn.close()
    return resp.status, data


def test_http_api_serves_concurrent_requests(gpt2_tok):
    from gptlab.serve.server import create_server

    model = build(FAMILY["llama"])
    srv = create_server(Engine(model, gpt2_tok, max_batch=4), "127.0.0.1", 0, model_name="tiny-llama").start()
    try:
        prompts = ["Every effort moves you", "The cat sat", "Hello", "In the beginning"]
        with ThreadPoolExecutor(4) as pool:
            replies = list(pool.map(
                lambda p: _post(srv, "/v1/completions", {"prompt": p, "max_tokens": 10, "temperature": 0}), prompts))
        for prompt, (status, body) in zip(prompts, replies):
            assert status == 200, body
            ids = gpt2_tok.encode(prompt)
            want = model.generate(ids, 10, eos_id=gpt2_tok.eot_id)
            assert body["choices"][0]["text"] == gpt2_tok.decode(want)
        status, body = _post(srv, "/v1/chat/completions",
                             {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "temperature": 0})
        assert status == 200 and body["object"] == "chat.completion" and body["usage"]["completion_tokens"] <= 5
        status, body = _post(srv, "/v1/completions", {"prompt": "x", "max_tokens": 200})
        assert status == 400 and body["error"]["code"] == "context_length_exceeded"
    finally:
        srv.close()


def test_chat_on_a_llama_folder_with_max_context(tmp_path, monkeypatch, capsys, tiny_llama_folder):
    from gptlab.app import main

    folder = tiny_llama_folder(tmp_path / "llama")
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\n" + "word " * 50 + "\n/exit\n"))
    code = main(["chat", "--model", folder, "--temperature", "0", "--max-tokens", "5", "--max-context", "40"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.count("assistant> ") == 1
    assert "do not fit the 40-token context]" in out
    assert "(context 40 tokens" in err
    assert main(["chat", "--model", folder, "--max-context", "1"]) == 2
    assert "--max-context must be at least 2 tokens" in capsys.readouterr().err

"""Graceful shutdown, Prometheus metrics and logprobs of the HTTP API."""

from __future__ import annotations

import http.client
import json
import threading
import time

import pytest
import torch

from gptlab.serve.engine import Engine, wait_until
from gptlab.serve.server import create_server

openai = pytest.importorskip("openai")
API_KEY = "sk-test-key"  # the `server` fixture's key (conftest.py)


def _post(server, body: dict, key: str | None = API_KEY) -> http.client.HTTPResponse:
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=60)
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    conn.request("POST", "/v1/completions", json.dumps(body), headers)
    return conn.getresponse()


# ---------------------------------------------------------------------------------------- shutdown


def test_shutdown_lets_short_requests_finish_and_ends_the_rest_with_an_error(slow_engine):
    engine = slow_engine(max_batch=4, delay=0.02)  # 20 ms per step: 90 tokens take ~2 s, 3 tokens 60 ms
    srv = create_server(engine, "127.0.0.1", 0, shutdown_timeout=0.8).start()
    results: dict[str, object] = {}

    def run(name: str, body: dict) -> None:
        resp = _post(srv, body, key=None)
        results[name] = (resp.status, resp.read().decode())

    long = {"prompt": "x", "max_tokens": 90, "ignore_eos": True}
    threads = [threading.Thread(target=run, args=("stream", {**long, "stream": True})),
               threading.Thread(target=run, args=("whole", long))]
    for t in threads:
        t.start()
    assert wait_until(lambda: engine.stats()["active"] == 2, 10)
    threads.append(threading.Thread(target=run, args=("short", {"prompt": "y", "max_tokens": 3, "ignore_eos": True})))
    threads[-1].start()
    time.sleep(0.05)
    start = time.perf_counter()
    srv.close()
    took = time.perf_counter() - start
    for t in threads:
        t.join(10)
    status, text = results["short"]
    assert status == 200 and json.loads(text)["usage"]["completion_tokens"] == 3
    status, text = results["whole"]
    assert status == 503 and json.loads(text)["error"]["code"] == "server_shutting_down"
    status, text = results["stream"]
    events = [line[6:] for line in text.split("\n\n") if line.startswith("data: ")]
    assert status == 200 and events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] == "server_shutting_down"
    assert 0.7 < took < 5  # the grace period, then the end


# ---------------------------------------------------------------------------------------- metrics


def test_metrics_count_requests_tokens_and_latencies(model, gpt2_tok):
    from prometheus_client.parser import text_string_to_metric_families

    srv = create_server(Engine(model, gpt2_tok, max_batch=4), "127.0.0.1", 0, model_name="m").start()
    try:
        client = openai.OpenAI(api_key="unused", base_url=srv.url + "/v1", max_retries=0)
        made = [client.completions.create(model="m", prompt="hello", max_tokens=n, temperature=0, extra_body={
            "ignore_eos": True}) for n in (1, 4, 7)]
        chunks = list(client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}],
                                                     max_tokens=5, stream=True, temperature=0,
                                                     stream_options={"include_usage": True}))
        with pytest.raises(openai.NotFoundError):
            client.completions.create(model="other", prompt="x", max_tokens=1)
        host, port = srv.server_address[:2]
        conn = http.client.HTTPConnection(host, port, timeout=30)
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("Content-Type").startswith("text/plain")
        families = {f.name: f for f in text_string_to_metric_families(resp.read().decode())}
    finally:
        srv.close()

    def value(family: str, sample: str, **labels: str) -> float:
        return sum(s.value for s in families[family].samples
                   if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()))

    assert value("gptlab_requests", "gptlab_requests_total", route="/v1/completions", status="200") == 3
    assert value("gptlab_requests", "gptlab_requests_total", route="/v1/completions", status="404") == 1
    assert value("gptlab_requests", "gptlab_requests_total", route="/v1/chat/completions", status="200") == 1
    generated = sum(r.usage.completion_tokens for r in made) + chunks[-1].usage.completion_tokens
    assert value("gptlab_generation_tokens", "gptlab_generation_tokens_total") == generated
    prompts = sum(r.usage.prompt_tokens for r in made) + chunks[-1].usage.prompt_tokens
    assert value("gptlab_prompt_tokens", "gptlab_prompt_tokens_total") == prompts
    assert value("gptlab_time_to_first_token_seconds", "gptlab_time_to_first_token_seconds_count") == 4
    # One per sequence with more than one token: 4, 7 and the chat's answer if it went past one token.
    assert value("gptlab_time_per_output_token_seconds", "gptlab_time_per_output_token_seconds_count") == \
        2 + (chunks[-1].usage.completion_tokens > 1)
    assert value("gptlab_request_duration_seconds", "gptlab_request_duration_seconds_count",
                 route="/v1/completions") == 4
    assert value("gptlab_slots", "gptlab_slots") == 4 and value("gptlab_queue_depth", "gptlab_queue_depth") == 0
    assert "gptlab_running_sequences" in families


# ---------------------------------------------------------------------------------------- logprobs


def _direct_logprobs(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids])).float()[0], dim=-1)


def test_completion_logprobs_match_the_model(server, client, model, gpt2_tok):
    prompt = gpt2_tok.encode("The cat sat on")
    r = client.completions.create(model="tiny", prompt=prompt, max_tokens=6, temperature=0, logprobs=3,
                                  extra_body={"ignore_eos": True})
    lp = r.choices[0].logprobs
    generated = model.generate(prompt, 6)[len(prompt):]
    full = _direct_logprobs(model, prompt + generated[:-1])
    for i, token in enumerate(generated):
        row = full[len(prompt) - 1 + i]
        assert lp.token_logprobs[i] == pytest.approx(row[token].item(), abs=1e-4)
        top_ids = row.topk(3).indices.tolist()
        assert list(lp.top_logprobs[i].values()) == pytest.approx(row[top_ids].tolist(), abs=1e-4)
        assert lp.top_logprobs[i][gpt2_tok.decode([top_ids[0]])] == pytest.approx(lp.token_logprobs[i], abs=1e-4)
    assert "".join(lp.tokens) == r.choices[0].text
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    # Streamed, the same tokens and values arrive in pieces, with offsets that carry on.
    chunks = list(client.completions.create(model="tiny", prompt=prompt, max_tokens=6, temperature=0, logprobs=3,
                                            stream=True, extra_body={"ignore_eos": True}))
    pieces = [c.choices[0].logprobs for c in chunks if c.choices and c.choices[0].logprobs]
    assert sum((p.token_logprobs for p in pieces), []) == pytest.approx(lp.token_logprobs, abs=1e-6)
    assert sum((p.text_offset for p in pieces), []) == lp.text_offset


def test_echo_scores_the_prompt_without_generating(server, client, model, gpt2_tok):
    """What evaluation harnesses send: echo, max_tokens 0, logprobs; every prompt token but the first scored."""
    text = "Paris is the capital of France"
    ids = gpt2_tok.encode(text)
    r = client.completions.create(model="tiny", prompt=text, max_tokens=0, echo=True, logprobs=1, temperature=0)
    choice = r.choices[0]
    assert choice.text == text and r.usage.completion_tokens == 0 and choice.finish_reason == "length"
    lp = choice.logprobs
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None and len(lp.tokens) == len(ids)
    full = _direct_logprobs(model, ids)
    expected = [full[i, ids[i + 1]].item() for i in range(len(ids) - 1)]
    assert lp.token_logprobs[1:] == pytest.approx(expected, abs=1e-4)
    # Echo with generation: the prompt's text, then the answer, scores for both.
    r = client.completions.create(model="tiny", prompt=text, max_tokens=3, echo=True, logprobs=0, temperature=0,
                                  extra_body={"ignore_eos": True})
    assert r.choices[0].text.startswith(text) and len(r.choices[0].logprobs.tokens) == len(ids) + 3
    with pytest.raises(openai.BadRequestError):  # max_tokens 0 only makes sense when scoring
        client.completions.create(model="tiny", prompt=text, max_tokens=0)


def test_chat_logprobs(server, client, model):
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4,
                                       temperature=0, logprobs=True, top_logprobs=2)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens or r.choices[0].finish_reason == "stop"
    for entry in content:
        assert len(entry.top_logprobs) == 2 and entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob, abs=1e-5)  # greedy: the best one
        assert bytes(entry.bytes).decode("utf-8", "replace") == entry.token or entry.token.startswith("bytes:")
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], top_logprobs=2)

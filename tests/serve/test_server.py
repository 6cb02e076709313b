"""The HTTP API, driven by the official ``openai`` client and by raw HTTP for the error cases."""

from __future__ import annotations

import http.client
import json
import random
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from gptlab.data.chat_format import PlainChat
from gptlab.serve.engine import wait_until

openai = pytest.importorskip("openai")

API_KEY = "sk-test-key"  # the key of the `server` fixture (conftest.py)


def raw(server, method: str, path: str, body: bytes | str | None = None, headers: dict | None = None,
        key: str | None = API_KEY) -> tuple[int, dict]:
    """One request on a fresh connection; returns (status, JSON body)."""
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=30)
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    if key:
        hdrs["Authorization"] = f"Bearer {key}"
    conn.request(method, path, body=body.encode() if isinstance(body, str) else body, headers=hdrs)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, json.loads(data)


def greedy_text(model, tok, prompt_ids: list[int], n: int) -> str:
    return tok.decode(model.generate(prompt_ids, n))


def test_completions_match_the_model(client, model, gpt2_tok):
    prompt = "Every effort moves you"
    r = client.completions.create(model="tiny", prompt=prompt, max_tokens=12, temperature=0)
    ids = gpt2_tok.encode(prompt)
    assert r.object == "text_completion" and r.model == "tiny" and r.id.startswith("cmpl-")
    assert r.choices[0].text == greedy_text(model, gpt2_tok, ids, 12)
    assert r.choices[0].finish_reason == "length"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (len(ids), 12, len(ids) + 12)
    # Several prompts (text and token ids) in one request: one choice each.
    r = client.completions.create(model="tiny", prompt=["a", "b c"], max_tokens=3, temperature=0)
    assert [c.index for c in r.choices] == [0, 1]
    assert r.choices[1].text == greedy_text(model, gpt2_tok, gpt2_tok.encode("b c"), 3)
    r = client.completions.create(model="tiny", prompt=[464, 3290], max_tokens=3, temperature=0)
    assert r.choices[0].text == greedy_text(model, gpt2_tok, [464, 3290], 3)


def test_stop_and_seed(client, model, gpt2_tok):
    ids = gpt2_tok.encode("Hello there")
    full = greedy_text(model, gpt2_tok, ids, 20)
    stop = full[8:12]
    r = client.completions.create(model="tiny", prompt="Hello there", max_tokens=20, temperature=0, stop=[stop])
    assert r.choices[0].text == full[: full.index(stop)] and r.choices[0].finish_reason == "stop"
    runs = [client.completions.create(model="tiny", prompt="Hi", max_tokens=15, temperature=1.0, top_p=0.9,
                                      seed=7).choices[0].text for _ in range(2)]
    other = client.completions.create(model="tiny", prompt="Hi", max_tokens=15, temperature=1.0, seed=8)
    assert runs[0] == runs[1] != other.choices[0].text
    expected = model.generate(gpt2_tok.encode("Hi"), 15, temperature=1.0, top_p=0.9, seed=7)
    assert runs[0] == gpt2_tok.decode(expected)


def test_chat_uses_the_chat_format(client, model, gpt2_tok):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "How are you?"}]
    r = client.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0)
    prompt_ids = gpt2_tok.encode(PlainChat().format_chat(messages))
    expected = greedy_text(model, gpt2_tok, prompt_ids, 10)
    for s in PlainChat.stop:
        expected = expected.split(s)[0]
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == expected
    assert r.usage.prompt_tokens == len(prompt_ids)


def test_streaming_equals_the_whole_answer(client):
    whole = client.completions.create(model="tiny", prompt="Once upon", max_tokens=16, temperature=0)
    chunks = list(client.completions.create(model="tiny", prompt="Once upon", max_tokens=16, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert len([t for t in texts if t]) > 1  # really streamed, piece by piece
    assert "".join(texts) == whole.choices[0].text
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 16

    messages = [{"role": "user", "content": "Tell me a story"}]
    whole = client.chat.completions.create(model="tiny", messages=messages, max_tokens=16, temperature=0)
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=16, temperature=0,
                                                 stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_stream_ends_with_done(server):
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=30)
    body = json.dumps({"prompt": "x", "max_tokens": 3, "stream": True})
    conn.request("POST", "/v1/completions", body, {"Authorization": f"Bearer {API_KEY}",
                                                   "Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("Content-Type").startswith("text/event-stream")
    events = [e for e in resp.read().decode().split("\n\n") if e]
    assert events[-1] == "data: [DONE]" and all(e.startswith("data: ") for e in events)
    assert len(events) == 5  # 3 tokens, the finish chunk, [DONE]
    # The connection stays usable (keep-alive after a chunked stream).
    conn.request("GET", "/health")
    assert json.loads(conn.getresponse().read())["status"] == "ok"
    conn.close()


def test_models_health_and_page(server, client):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    assert client.models.retrieve("tiny").id == "tiny"
    status, body = raw(server, "GET", "/health", key=None)
    assert status == 200 and body["status"] == "ok" and body["slots"] == 8
    host, port = server.server_address[:2]
    assert host == "127.0.0.1"


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        ("{not json", 400, "invalid_json", None),
        ('["a list"]', 400, None, None),
        ('{"prompt": "x", "max_tokens": "3"}', 400, "invalid_type", "max_tokens"),
        ('{"prompt": "x", "max_tokens": 1.5}', 400, "invalid_type", "max_tokens"),
        ('{"prompt": "x", "temperature": "hot"}', 400, "invalid_type", "temperature"),
        ('{"prompt": "x", "temperature": 3}', 400, "invalid_value", "temperature"),
        ('{"prompt": "x", "top_p": 0}', 400, "invalid_value", "top_p"),
        ('{"prompt": "x", "stream": "yes"}', 400, "invalid_type", "stream"),
        ('{"prompt": "x", "stop": 5}', 400, "invalid_type", "stop"),
        ('{"prompt": "x", "seed": "s"}', 400, "invalid_type", "seed"),
        ('{"prompt": 12}', 400, "invalid_type", "prompt"),
        ('{"prompt": [1, 99999999]}', 400, "invalid_value", "prompt"),
        ('{"prompt": "x", "n": 2}', 400, "unsupported_parameter", "n"),
        ('{"prompt": "x", "frobnicate": 1}', 400, "unrecognized_argument", "frobnicate"),
        ('{"prompt": "x", "max_tokens": 0}', 400, "invalid_value", "max_tokens"),
        ('{"prompt": "x", "max_tokens": 96}', 400, "context_length_exceeded", "prompt"),
    ],
)
def test_completion_errors(server, body, status, code, param):
    got, err = raw(server, "POST", "/v1/completions", body)
    assert got == status
    assert set(err["error"]) == {"message", "type", "param", "code"} and err["error"]["message"]
    assert err["error"]["type"] == "invalid_request_error"
    if code:
        assert err["error"]["code"] == code
    assert err["error"]["param"] == param


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ('{"messages": "hi"}', "invalid_type"),
        ('{"messages": []}', "invalid_type"),
        ('{"messages": [{"role": "robot", "content": "x"}]}', "invalid_value"),
        ('{"messages": [{"role": "user", "content": 5}]}', "invalid_type"),
        ('{"messages": [{"role": "assistant", "content": "x"}]}', "invalid_value"),
        ('{"messages": [{"role": "user", "content": "x"}], "prompt": "y"}', "unrecognized_argument"),
    ],
)
def test_chat_errors(server, body, code):
    got, err = raw(server, "POST", "/v1/chat/completions", body)
    assert got == 400 and err["error"]["code"] == code


def test_context_overflow_oversized_body_wrong_key_and_the_server_keeps_serving(server, client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "word " * 200}])
    assert info.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError, match="maximum context length is 96"):
        client.completions.create(model="tiny", prompt="hi", max_tokens=96)

    big = json.dumps({"prompt": "x" * 70_000})  # the test server's limit is 64 KiB
    status, err = raw(server, "POST", "/v1/completions", big)
    assert status == 413 and err["error"]["code"] == "request_too_large"

    status, err = raw(server, "POST", "/v1/completions", '{"prompt": "x"}', key="sk-wrong")
    assert status == 401 and err["error"]["code"] == "invalid_api_key"
    status, err = raw(server, "GET", "/v1/models", key=None)
    assert status == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(api_key="sk-wrong", base_url=server.url + "/v1", max_retries=0).models.list()

    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=30)  # no Content-Length at all
    conn.putrequest("POST", "/v1/completions")
    conn.putheader("Authorization", f"Bearer {API_KEY}")
    conn.putheader("Content-Type", "application/json")
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 411 and json.loads(resp.read())["error"]["code"] == "length_required"
    conn.close()

    assert raw(server, "GET", "/nope")[0] == 404
    assert raw(server, "POST", "/v1/nope", "{}")[0] == 404
    assert raw(server, "GET", "/v1/completions")[0] == 405
    assert raw(server, "GET", "/v1/models/other")[0] == 404
    # Still healthy and serving.
    assert raw(server, "GET", "/health")[1]["status"] == "ok"
    assert client.completions.create(model="tiny", prompt="ok", max_tokens=2).usage.completion_tokens == 2


def test_client_disconnect_frees_its_slot(slow_server):
    engine = slow_server.engine
    for stream in (True, False):
        host, port = slow_server.server_address[:2]
        sock = socket.create_connection((host, port), timeout=30)
        body = json.dumps({"prompt": "x", "max_tokens": 90, "stream": stream, "ignore_eos": True}).encode()
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Authorization: Bearer sk-slow-key\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        assert wait_until(lambda: engine.stats()["active"] == 1, 10)
        if stream:
            assert sock.recv(100).startswith(b"HTTP/1.1 200")  # streaming has begun
        sock.close()
        assert wait_until(lambda: engine.stats()["active"] == 0, 5), "the slot was not freed"
    stats = engine.stats()
    assert stats["cancelled"] == 2 and stats["tokens_generated"] < 2 * 90 - 20


def test_load_200_requests_16_clients(server, client):
    """Mixed streaming and not, completions and chat, more clients than slots: no failures."""
    rng = random.Random(0)
    jobs = [(i, rng.choice(["completion", "chat"]), rng.random() < 0.5, rng.randrange(1, 25)) for i in range(200)]
    before = server.engine.stats()

    def one(job) -> int:
        i, kind, stream, max_tokens = job
        if kind == "completion":
            r = client.completions.create(model="tiny", prompt=f"request {i}:", max_tokens=max_tokens,
                                          temperature=0.8, stream=stream)
            if stream:
                chunks = list(r)
                assert chunks[-1].choices[0].finish_reason in ("stop", "length")
                return 1
            assert r.usage.completion_tokens <= max_tokens and r.choices[0].finish_reason in ("stop", "length")
            return 1
        messages = [{"role": "user", "content": f"message {i}"}]
        r = client.chat.completions.create(model="tiny", messages=messages, max_tokens=max_tokens,
                                           temperature=0.8, stream=stream)
        if stream:
            chunks = list(r)
            assert chunks[-1].choices[0].finish_reason in ("stop", "length")
            return 1
        assert r.choices[0].finish_reason in ("stop", "length")
        return 1

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, jobs))
    assert sum(results) == 200
    after = server.engine.stats()
    assert after["requests_done"] - before["requests_done"] == 200
    assert after["peak_batch"] == 8  # requests really were batched
    assert wait_until(lambda: server.engine.stats()["active"] == 0, 5)
    status, health = raw(server, "GET", "/health")
    assert status == 200 and health["status"] == "ok" and health["waiting"] == 0
    assert threading.active_count() < 100

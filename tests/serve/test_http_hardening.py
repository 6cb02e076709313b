"""The HTTP layer under hostile or careless clients: every request gets an answer, in the API's shape.

Each case here was seen to fail on the old standard-library server (no response at all, HTML errors,
a starved request, a cross-site page allowed to generate, 46 ms of delayed ACK per keep-alive request).
"""

from __future__ import annotations

import http.client
import json
import socket
import statistics
import threading
import time

import pytest
import torch

from gptlab.model import GPT, GPTConfig
from gptlab.serve.engine import Engine, wait_until
from gptlab.serve.server import create_server
from gptlab.tokenizer.char import CharTokenizer

API_KEY = "sk-test-key"  # the `server` fixture's key (conftest.py)


def call(server, method: str, path: str, body: bytes | str | None = None, headers: dict | None = None,
         key: str | None = API_KEY, timeout: float = 30) -> tuple[int, dict, dict]:
    """One request on a fresh connection: (status, headers, JSON body or {})."""
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    if key:
        hdrs["Authorization"] = f"Bearer {key}"
    conn.request(method, path, body=body.encode() if isinstance(body, str) else body, headers=hdrs)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    head = {k.lower(): v for k, v in resp.getheaders()}
    return resp.status, head, (json.loads(data) if data and "json" in head.get("content-type", "") else {})


def raw_exchange(server, request: bytes, timeout: float = 10) -> bytes:
    """Send bytes, read until the server closes; the whole answer."""
    sock = socket.create_connection(server.server_address[:2], timeout=timeout)
    sock.sendall(request)
    chunks = []
    while True:
        try:
            data = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not data:
            break
        chunks.append(data)
    sock.close()
    return b"".join(chunks)


def error_of(answer: bytes) -> tuple[int, dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert b"content-type: application/json" in head.lower()
    return status, json.loads(body)


# ---------------------------------------------------------------------------------------- 1. always an answer


@pytest.fixture(scope="module")
def char_server():
    """A character-level model whose alphabet lacks 'é', emoji and '<'."""
    tok = CharTokenizer.from_text("abcdefghijklmnopqrstuvwxyz .,?!\n")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.n_vocab, context_length=64, emb_dim=16, n_heads=2, n_layers=1)).eval()
    srv = create_server(Engine(model, tok, max_batch=2), "127.0.0.1", 0, model_name="chars").start()
    yield srv
    srv.close()


@pytest.mark.parametrize("text", ["café", "hi 🙂", "a < b", "\ud800"])
def test_text_a_char_model_cannot_encode_is_a_400(char_server, text):
    body = json.dumps({"prompt": text, "max_tokens": 3})  # json.dumps writes a lone surrogate as \ud800
    status, _, err = call(char_server, "POST", "/v1/completions", body, key=None)
    assert status == 400 and err["error"]["param"] == "prompt" and err["error"]["code"] == "invalid_value"
    body = json.dumps({"messages": [{"role": "user", "content": text}], "max_tokens": 3})
    status, _, err = call(char_server, "POST", "/v1/chat/completions", body, key=None)
    assert status == 400 and err["error"]["param"] == "messages"
    assert call(char_server, "POST", "/v1/completions", '{"prompt": "abc", "max_tokens": 2}', key=None)[0] == 200


@pytest.mark.parametrize("body, param", [
    ('{"prompt": "x", "seed": 18446744073709551616}', "seed"),
    ('{"prompt": "x", "seed": 1000000000000000000000000000000}', "seed"),
    ('{"prompt": "x", "temperature": NaN}', None),
    ('{"prompt": "x", "top_p": NaN}', None),
    ('{"prompt": "x", "temperature": Infinity}', None),
    ('{"prompt": "x", "temperature": 1e999}', "temperature"),
    ('{"prompt": "x", "max_tokens": ' + "9" * 5000 + "}", None),
    ("[" * 60_000, None),  # the test server takes 64 KiB; parse_json itself is tested at 200,000 below
])
def test_values_that_broke_handlers_are_400s(server, body, param):
    status, _, err = call(server, "POST", "/v1/completions", body)
    assert status == 400, err
    assert err["error"]["type"] == "invalid_request_error" and (param is None or err["error"]["param"] == param)


def test_a_lone_surrogate_is_read_as_tiktoken_reads_it(server, gpt2_tok):
    """GPT-2's byte-level BPE encodes it as U+FFFD (as tiktoken does), so the request is answered."""
    status, _, body = call(server, "POST", "/v1/completions", '{"prompt": "a\\ud800", "max_tokens": 2}')
    assert status == 200 and body["usage"]["prompt_tokens"] == len(gpt2_tok.encode("a\ufffd"))


def test_deep_nesting_and_long_numbers_are_invalid_json():
    from gptlab.serve.protocol import ApiError, parse_json

    for body in (b"[" * 200_000, b'{"max_tokens": ' + b"9" * 5000 + b"}", b'{"t": NaN}', b'{"t": -Infinity}'):
        with pytest.raises(ApiError) as info:
            parse_json(body)
        assert info.value.status == 400 and info.value.code == "invalid_json"


def test_unknown_model_is_404_and_a_missing_one_is_the_served_model(server):
    status, _, err = call(server, "POST", "/v1/completions", '{"model": "gpt-4", "prompt": "x", "max_tokens": 1}')
    assert status == 404 and err["error"]["code"] == "model_not_found" and "gpt-4" in err["error"]["message"]
    status, _, body = call(server, "POST", "/v1/completions", '{"prompt": "x", "max_tokens": 1}')
    assert status == 200 and body["model"] == "tiny"


def test_every_method_and_protocol_error_is_json(server):
    assert call(server, "HEAD", "/health")[0] == 200
    for method, path, status in (("PUT", "/v1/completions", 405), ("DELETE", "/health", 405),
                                 ("GET", "/v1/chat/completions", 405), ("PATCH", "/nope", 404)):
        got, head, err = call(server, method, path, "{}")
        assert got == status and err["error"]["code"] in ("method_not_allowed", "not_found"), (method, path)
        if status == 405:
            assert "allow" in head
    # Too long, whether the head arrives whole (the app checks) or grows past the buffer (h11 stops it).
    for whole in (True, False):
        for head, status, code in ((b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n", 414, "uri_too_long"),
                                   (b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 20_000 + b"\r\n",
                                    431, "headers_too_large")):
            got, err = error_of(raw_exchange(server, head + b"\r\n" if whole else head[: 17_000]))
            assert (got, err["error"]["code"]) == (status, code), (whole, status)
    status, err = error_of(raw_exchange(server, b"NOT HTTP AT ALL\r\n\r\n"))
    assert status == 400 and err["error"]["code"] == "bad_request"


def test_a_client_leaving_mid_body_is_no_server_error(server, caplog):
    """No traceback ("Exception in ASGI application") for a body that never completes."""
    for _ in range(3):
        sock = socket.create_connection(server.server_address[:2], timeout=10)
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Authorization: Bearer " + API_KEY.encode() + b"\r\nContent-Length: 100\r\n\r\n{\"prompt\"")
        time.sleep(0.1)
        sock.close()
    time.sleep(0.3)
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")], caplog.text
    assert call(server, "GET", "/health", key=None)[0] == 200


# ---------------------------------------------------------------------------------------- 2. slow clients


@pytest.fixture()
def guarded_server(model, gpt2_tok):
    """A server with short deadlines and a small connection cap."""
    srv = create_server(Engine(model, gpt2_tok, max_batch=4), "127.0.0.1", 0, model_name="tiny",
                        header_timeout=1.0, max_connections=100).start()
    yield srv
    srv.close()


def _health_latency(server) -> float:
    start = time.perf_counter()
    status, _, body = call(server, "GET", "/health", key=None, timeout=5)
    assert status == 200 and body["status"] == "ok"
    return time.perf_counter() - start


def test_a_request_head_has_a_deadline(guarded_server):
    sock = socket.create_connection(guarded_server.server_address[:2], timeout=10)
    start = time.perf_counter()
    sock.sendall(b"GET /health HTTP/1.1\r\n")
    answer = b""
    for piece in (b"Host: 127.0.0.1\r\n", b"X-A: 1\r\n", b"X-B: 2\r\n", b"X-C: 3\r\n"):
        time.sleep(0.4)  # each byte well inside any per-read timeout; the whole head is too slow
        try:
            sock.sendall(piece)
        except OSError:
            break
    sock.settimeout(5)
    try:
        while chunk := sock.recv(4096):
            answer += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408") and b"request_timeout" in answer
    assert time.perf_counter() - start < 4


def test_500_slow_connections_neither_block_health_nor_survive(guarded_server):
    socks = []
    for _ in range(500):
        s = socket.create_connection(guarded_server.server_address[:2], timeout=10)
        s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        socks.append(s)
    # Over the cap of 100: the oldest waiting connections were closed to make room, and /health answers.
    assert max(_health_latency(guarded_server) for _ in range(5)) < 1.0
    for s in socks:
        s.close()  # all at once
    assert max(_health_latency(guarded_server) for _ in range(5)) < 1.0
    assert wait_until(lambda: len(guarded_server._server.server_state.connections) <= 1, 5)


# ---------------------------------------------------------------------------------------- 3. fairness


def test_one_request_cannot_take_every_slot(slow_server):
    """64 prompts in one request hold half the slots; a small request behind them is served at once."""
    engine = slow_server.engine  # 2 slots, 20 ms per step
    assert engine.max_per_group == 1
    big_done = threading.Event()

    def big() -> None:
        call(slow_server, "POST", "/v1/completions",
             json.dumps({"prompt": ["Hello"] * 64, "max_tokens": 20, "ignore_eos": True}), key="sk-slow-key",
             timeout=120)
        big_done.set()

    thread = threading.Thread(target=big)
    thread.start()
    assert wait_until(lambda: engine.stats()["active"] >= 1, 10)
    start = time.perf_counter()
    status, _, body = call(slow_server, "POST", "/v1/completions",
                           json.dumps({"prompt": "Hi", "max_tokens": 5, "ignore_eos": True}), key="sk-slow-key")
    waited = time.perf_counter() - start
    assert status == 200 and body["usage"]["completion_tokens"] == 5
    assert not big_done.is_set() and waited < 5  # alone, 64 x 20 tokens at one slot takes ~25 s
    for h in list(engine._rows) + list(engine._waiting):  # let the big request go
        h.cancel()
    thread.join(60)


def test_engine_shares_slots_between_groups(model, gpt2_tok):
    from gptlab.serve.engine import SamplingParams

    engine = Engine(model, gpt2_tok, max_batch=4)
    params = SamplingParams(max_tokens=3, temperature=0, ignore_eos=True)
    a = [engine.submit([1, 2], params, group="a") for _ in range(6)]
    b = [engine.submit([3, 4], params, group="b") for _ in range(2)]
    with engine._cv:
        admitted = engine._admit(4)
    # Two each, alternating from the group that holds fewer, not the first four of group a.
    assert [r.group for r in admitted] == ["a", "b", "a", "b"]
    assert admitted[0] is a[0] and admitted[1] is b[0] and admitted[3] is b[1]


# ---------------------------------------------------------------------------------------- 4. cross-site requests


def test_cross_site_requests_are_refused(server):
    body = '{"prompt": "x", "max_tokens": 1}'
    status, _, err = call(server, "POST", "/v1/completions", body, headers={"Content-Type": "text/plain"})
    assert status == 415 and err["error"]["code"] == "unsupported_media_type"
    status, _, err = call(server, "POST", "/v1/completions", body, headers={"Host": "evil.example:8000"})
    assert status == 403 and err["error"]["code"] == "host_not_allowed"
    assert call(server, "GET", "/health", headers={"Host": "rebound.attacker.test"}, key=None)[0] == 403
    for host in ("localhost:1234", "127.0.0.1", "[::1]:80"):
        assert call(server, "GET", "/health", headers={"Host": host}, key=None)[0] == 200
    # A preflight is answered, but without Access-Control-Allow-Origin: the browser refuses.
    status, head, _ = call(server, "OPTIONS", "/v1/completions", key=None,
                           headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert status == 204 and "access-control-allow-origin" not in head and head["allow"] == "POST, OPTIONS"


def test_cors_origin_and_allowed_host_when_asked(model, gpt2_tok):
    srv = create_server(Engine(model, gpt2_tok, max_batch=2), "127.0.0.1", 0, model_name="tiny",
                        cors_origins=["http://app.example"], allowed_hosts=["llm.internal"]).start()
    try:
        pre = {"Origin": "http://app.example", "Access-Control-Request-Method": "POST",
               "Access-Control-Request-Headers": "content-type, authorization"}
        status, head, _ = call(srv, "OPTIONS", "/v1/chat/completions", headers=pre, key=None)
        assert status == 200 and head["access-control-allow-origin"] == "http://app.example"
        status, head, _ = call(srv, "OPTIONS", "/v1/chat/completions", key=None,
                               headers={**pre, "Origin": "http://other.example"})
        assert status == 400 and "access-control-allow-origin" not in head
        status, head, _ = call(srv, "POST", "/v1/completions", '{"prompt": "x", "max_tokens": 1}', key=None,
                               headers={"Origin": "http://app.example", "Host": "llm.internal:8000"})
        assert status == 200 and head["access-control-allow-origin"] == "http://app.example"
    finally:
        srv.close()


def test_host_rules():
    from gptlab.serve.app import host_allowed

    assert host_allowed("127.0.0.1:8000", "127.0.0.1", ()) and host_allowed("LOCALHOST", "127.0.0.1", ())
    assert not host_allowed("evil.test", "127.0.0.1", ()) and host_allowed("evil.test", "127.0.0.1", ("*",))
    assert host_allowed("192.168.1.5:8000", "0.0.0.0", ()) and not host_allowed("x.test", "0.0.0.0", ())
    assert host_allowed("10.0.0.2", "10.0.0.2", ()) and not host_allowed("localhost", "10.0.0.2", ())
    assert host_allowed("[fe80::1]:80", "::", ()) and host_allowed("My.Host.", "0.0.0.0", ("my.host",))


# ---------------------------------------------------------------------------------------- 5. keep-alive


def test_keep_alive_requests_are_not_delayed(server):
    """Headers and body meet no delayed ACK: a reused connection answers in milliseconds, not 40+."""
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=10)
    times = []
    for _ in range(21):
        start = time.perf_counter()
        conn.request("GET", "/v1/models", headers={"Authorization": f"Bearer {API_KEY}"})
        resp = conn.getresponse()
        assert resp.status == 200 and json.loads(resp.read())["data"][0]["id"] == "tiny"
        times.append(time.perf_counter() - start)
    # The cause, checked directly: Nagle's algorithm is off on the server's side of the connection.
    sockets = [c.transport.get_extra_info("socket") for c in list(server._server.server_state.connections)]
    assert sockets and all(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for s in sockets)
    conn.close()
    assert statistics.median(times) < 0.035, times  # the delayed-ACK floor is 40 ms


# ---------------------------------------------------------------------------------------- 7. the chat page


def test_chat_page_sizes_answers_to_the_context():
    from gptlab.serve.page import chat_page

    small = chat_page("m", 128)
    assert 'max="127"' in small and 'value="64"' in small and "Math.min(Number($(\"max-tokens\").value), 127)" in small
    assert 'value="128"' in chat_page("m", 1024)

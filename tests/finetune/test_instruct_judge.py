"""The LLM judge against a real OpenAI-compatible HTTP server started in the test (no mocked functions).

The server is a small stand-in for Ollama / ``gptlab serve``: it answers ``POST /v1/chat/completions``
with the next scripted reply, records every request body, and can answer garbage or fail.
"""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from gptlab.errors import GptlabError
from gptlab.finetune.instruct.evaluate import evaluate_responses
from gptlab.finetune.instruct.judge import ChatJudge, JudgeUnavailable, chat_url, histogram, judge_prompt, parse_score


class ChatStub:
    """A running chat-completions server; ``replies`` are message contents, or ("raw", status, bytes)."""

    def __init__(self, replies):
        self.replies = list(replies)
        self.requests: list[dict] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                if not stub.replies:
                    status, payload = 503, b'{"error": "model unloaded"}'
                else:
                    reply = stub.replies.pop(0)
                    if isinstance(reply, tuple):
                        _, status, payload = reply
                    else:
                        status = 200
                        payload = json.dumps({"object": "chat.completion", "model": body["model"], "choices": [
                            {"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}
                        ]}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):  # keep test output quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def free_port_url() -> str:
    """An address where nothing listens (a port that was free a moment ago)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


ENTRIES = [
    {"instruction": "Rewrite the sentence using a simile.", "input": "The car is very fast.",
     "output": "The car is as fast as lightning.", "model_response": "The car is as fast as a bullet."},
    {"instruction": "What type of cloud is typically associated with thunderstorms?", "input": "",
     "output": "The type of cloud typically associated with thunderstorms is cumulonimbus.",
     "model_response": "The type of cloud associated with thunderstorms is a cumulus cloud."},
    {"instruction": "Name the author of 'Pride and Prejudice'.", "input": "",
     "output": "Jane Austen.", "model_response": "The author of 'Pride and Prejudice' is Jane Austen."},
    {"instruction": "Name a color.", "input": "", "output": "Blue.", "model_response": "Blue."},
]


@pytest.fixture()
def responses(tmp_path):
    path = tmp_path / "resp.json"
    path.write_text(json.dumps(ENTRIES))
    return path


def test_the_books_prompt():
    assert judge_prompt(ENTRIES[0]) == (
        "Given the input `Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nRewrite the sentence using a simile.\n\n### Input:\n"
        "The car is very fast.` and correct output `The car is as fast as lightning.`, score the model response "
        "`The car is as fast as a bullet.` on a scale from 0 to 100, where 100 is the best score. "
        "Respond with the integer number only."
    )


@pytest.mark.parametrize("reply, score", [
    ("85", 85), (" 0\n", 0), ("100", 100), ("101", None), ("-5", None), ("85.", None), ("Score: 85", None),
    ("85/100", None), ("eighty", None), ("", None), ("8 5", None), ("0085", None),
])
def test_strict_parser(reply, score):
    assert parse_score(reply) == score


def test_chat_url_forms():
    assert chat_url("http://h:11434") == "http://h:11434/v1/chat/completions"
    assert chat_url("http://h:8000/v1/") == "http://h:8000/v1/chat/completions"
    assert chat_url("https://x/v1/chat/completions") == "https://x/v1/chat/completions"
    with pytest.raises(GptlabError, match="http"):
        chat_url("localhost:11434")


def test_histogram_bins():
    bins = histogram([0, 9, 10, 55, 99, 100])
    assert [b["count"] for b in bins] == [2, 1, 0, 0, 0, 1, 0, 0, 0, 2]
    assert (bins[-1]["low"], bins[-1]["high"]) == (90, 100)


def test_judge_over_http(responses, tmp_path):
    with ChatStub(["85", "40", "That is a great answer!", "100"]) as stub:
        summary = evaluate_responses(responses, tmp_path / "s.json", stub.url, "llama3", progress=False, log=lambda m: None)
    body = stub.requests[0]["body"]
    assert stub.requests[0]["path"] == "/v1/chat/completions"
    assert body["model"] == "llama3" and body["temperature"] == 0
    assert body["messages"] == [{"role": "user", "content": judge_prompt(ENTRIES[0])}]
    judge = summary["judge"]
    assert (judge["scored"], judge["unscorable"], judge["not_judged"], judge["error"]) == (3, 1, 0, None)
    assert judge["average"] == pytest.approx((85 + 40 + 100) / 3)
    assert [b["count"] for b in judge["histogram"]] == [0, 0, 0, 0, 1, 0, 0, 0, 1, 1]
    saved = json.loads((tmp_path / "s.json").read_text())
    assert [e["judge_score"] for e in saved["entries"]] == [85, 40, None, 100]
    assert saved["entries"][2]["judge_reply"] == "That is a great answer!"
    # The automatic scores are there as well: entry 3 is an exact match.
    assert saved["entries"][3]["scores"]["exact_match"] == 1.0
    assert summary["exact_match"] == pytest.approx(0.25)


def test_endpoint_dies_partial_results_kept_then_resumed(responses, tmp_path):
    out = tmp_path / "s.json"
    with ChatStub(["70", "60"]) as stub:  # then 503 for every request
        summary = evaluate_responses(responses, out, stub.url, "llama3", progress=False, log=lambda m: None)
    judge = summary["judge"]
    assert "HTTP 503" in judge["error"]
    assert (judge["judged"], judge["scored"], judge["not_judged"]) == (2, 2, 2)
    assert [e.get("judge_score") for e in json.loads(out.read_text())["entries"]] == [70, 60, None, None]
    # Run again: only the two answers not judged yet are sent.
    with ChatStub(["50", "90"]) as stub:
        summary = evaluate_responses(responses, out, stub.url, "llama3", progress=False, log=lambda m: None)
    assert len(stub.requests) == 2
    assert stub.requests[0]["body"]["messages"][0]["content"] == judge_prompt(ENTRIES[2])
    assert summary["judge"]["error"] is None and summary["judge"]["average"] == pytest.approx(67.5)


def test_down_endpoint_is_reported_not_raised(responses, tmp_path):
    summary = evaluate_responses(responses, tmp_path / "s.json", free_port_url(), "llama3", judge_timeout=5,
                                 progress=False, log=lambda m: None)
    assert "not reachable" in summary["judge"]["error"]
    assert summary["judge"]["judged"] == 0 and summary["rouge_l"] is not None
    assert (tmp_path / "s.json").is_file()


def test_garbage_body_stops_judging(responses, tmp_path):
    with ChatStub(["12", ("raw", 200, b"<html>not an API</html>")]) as stub:
        summary = evaluate_responses(responses, tmp_path / "s.json", stub.url, "m", progress=False, log=lambda m: None)
    assert "chat-completions format" in summary["judge"]["error"]
    assert summary["judge"]["scored"] == 1 and len(stub.requests) == 2


def test_client_sends_bearer_token():
    with ChatStub(["7"]) as stub:
        assert ChatJudge(stub.url + "/v1", "m", api_key="sekrit").complete("hi") == "7"
    assert stub.requests[0]["auth"] == "Bearer sekrit"
    with pytest.raises(JudgeUnavailable, match="not reachable"):
        ChatJudge(free_port_url(), "m", timeout=5).complete("hi")


def test_judge_flags_go_together(responses):
    with pytest.raises(GptlabError, match="--judge-model"):
        evaluate_responses(responses, judge_url="http://127.0.0.1:1", progress=False)


def test_responses_need_model_response(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps([{"instruction": "a", "output": "b", "model_response": "b"}, {"instruction": "a", "output": "b"}]))
    with pytest.raises(GptlabError, match="entry 1: field 'model_response'"):
        evaluate_responses(path, progress=False)


def test_judge_through_gptlab_serve(responses, tmp_path):
    """The same path against the project's own OpenAI-compatible server (a tiny random model as judge).

    A random model is no judge: its replies are not integers, so they must be counted as unscorable,
    with every answer judged and no error.
    """
    import torch

    pytest.importorskip("gptlab.serve.server")
    from gptlab.model import GPT, GPTConfig
    from gptlab.serve.engine import Engine
    from gptlab.serve.server import create_server
    from gptlab.tokenizer import get_tokenizer

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50257, context_length=256, emb_dim=32, n_heads=2, n_layers=2, tie_weights=True))
    server = create_server(Engine(model.eval(), get_tokenizer("gpt2"), max_batch=4), "127.0.0.1", 0,
                           api_key="k", model_name="tiny-judge").start()
    try:
        summary = evaluate_responses(responses, tmp_path / "s.json", server.url, "tiny-judge", api_key="k",
                                     progress=False, log=lambda m: None)
    finally:
        server.close()
    judge = summary["judge"]
    assert judge["error"] is None and judge["judged"] == len(ENTRIES)
    assert judge["scored"] + judge["unscorable"] == len(ENTRIES)
    saved = json.loads((tmp_path / "s.json").read_text())["entries"]
    assert all(isinstance(e["judge_reply"], str) for e in saved)
    assert [e["judge_score"] for e in saved] == [parse_score(e["judge_reply"]) for e in saved]


def test_a_refused_request_is_counted_and_judging_goes_on(responses, tmp_path):
    too_long = ("raw", 400, b'{"error": {"message": "maximum context length is 256 tokens", "code": "context_length_exceeded"}}')
    with ChatStub(["90", too_long, "x", "10"]) as stub:
        summary = evaluate_responses(responses, tmp_path / "s.json", stub.url, "m", progress=False, log=lambda m: None)
    judge = summary["judge"]
    assert (judge["judged"], judge["scored"], judge["unscorable"], judge["rejected"], judge["error"]) == (4, 2, 1, 1, None)
    assert judge["average"] == pytest.approx(50)
    saved = json.loads((tmp_path / "s.json").read_text())["entries"]
    assert "HTTP 400" in saved[1]["judge_error"] and saved[1]["judge_reply"] is None
    # A rerun keeps all four (nothing left to judge), the refusal included.
    with ChatStub([]) as stub:
        again = evaluate_responses(responses, tmp_path / "s.json", stub.url, "m", progress=False, log=lambda m: None)
    assert len(stub.requests) == 0 and again["judge"]["rejected"] == 1

"""``gptlab serve`` and ``gptlab chat`` as real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
import torch

from gptlab.app import main
from gptlab.model import GPT, GPTConfig

TINY = GPTConfig(vocab_size=50257, context_length=64, emb_dim=32, n_heads=4, n_layers=2, tie_weights=True)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random model saved in the Hugging Face format (GPT-2's tokenizer, no prompt style)."""
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("tiny-model")
    GPT(TINY).eval().save_pretrained(directory)
    return directory


def _env() -> dict:
    # One thread per process: two pytest workers share two cores.
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _gptlab(*args: str) -> list[str]:
    return [sys.executable, "-m", "gptlab", *args]


def test_help_and_bad_flags(capsys):
    for verb in ("serve", "chat"):
        with pytest.raises(SystemExit) as info:
            main([verb, "--help"])
        assert info.value.code == 0
        assert "--model" in capsys.readouterr().out
    assert main(["serve", "--model", "gpt-nano", "--port", "70000"]) == 2
    assert "--port must be in 0..65535" in capsys.readouterr().err
    assert main(["chat", "--model", "gpt-nano", "--max-tokens", "0"]) == 2
    assert "--max-tokens must be >= 1" in capsys.readouterr().err
    assert main(["serve", "--model", "no-such-model", "--port", "0"]) == 2
    assert "not a model folder" in capsys.readouterr().err
    # An empty key would mean "no authentication" without saying so.
    assert main(["serve", "--model", "gpt-nano", "--api-key", ""]) == 2
    err = capsys.readouterr().err
    assert "--api-key" in err and "empty" in err and len(err.strip().splitlines()) == 1
    assert main(["serve", "--model", "gpt-nano", "--shutdown-timeout", "nan"]) == 2
    assert "--shutdown-timeout" in capsys.readouterr().err


def test_serve_process(model_dir):
    """Starts on a free port (printing its URL), binds loopback, answers, logs one line per request without
    bodies or tracebacks (a client vanishing mid-stream included), and stops cleanly on SIGTERM (exit 0)."""
    proc = subprocess.Popen(_gptlab("serve", "--model", str(model_dir), "--port", "0", "--threads", "1",
                                    "--api-key", "k1", "--access-log", "json"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    code = None
    try:
        line = proc.stdout.readline()
        assert " at http://127.0.0.1:" in line, line + proc.stderr.read()
        url = line.split(" at ")[1].split()[0]
        with urllib.request.urlopen(url + "/health", timeout=30) as resp:
            health = json.loads(resp.read())
        assert health["status"] == "ok" and health["model"] == model_dir.name
        request = urllib.request.Request(
            url + "/v1/chat/completions", method="POST",
            data=json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5,
                             "temperature": 0}).encode(),
            headers={"Content-Type": "application/json", "Authorization": "Bearer k1"})
        with urllib.request.urlopen(request, timeout=30) as resp:
            body = json.loads(resp.read())
        assert body["object"] == "chat.completion" and body["usage"]["completion_tokens"] <= 5
        # A streaming client that reads one chunk and hangs up.
        import socket

        host, port = url[len("http://"):].split(":")
        secret = "do-not-log-this-prompt"
        payload = json.dumps({"prompt": secret, "max_tokens": 50, "stream": True, "ignore_eos": True}).encode()
        sock = socket.create_connection((host, int(port)), timeout=30)
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                     b"Authorization: Bearer k1\r\nContent-Length: %d\r\n\r\n%s"
                     % (host.encode(), len(payload), payload))
        assert sock.recv(64).startswith(b"HTTP/1.1 200")
        sock.close()
        time.sleep(0.5)
        # SIGTERM while a stream is being read: it still ends properly, and the process exits 0.
        stream = urllib.request.urlopen(urllib.request.Request(
            url + "/v1/completions", method="POST",
            data=json.dumps({"prompt": "x", "max_tokens": 60, "stream": True, "ignore_eos": True}).encode(),
            headers={"Content-Type": "application/json", "Authorization": "Bearer k1"}), timeout=30)
        assert stream.readline().startswith(b"data: ")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        err = proc.stderr.read()
    assert stream.read().rstrip().endswith(b"data: [DONE]")
    assert code == 0, err
    assert "Traceback" not in err and secret not in err, err
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    chat = [r for r in lines if r["path"] == "/v1/chat/completions"]
    assert len(chat) == 1 and chat[0]["status"] == 200 and chat[0]["method"] == "POST"
    assert chat[0]["completion_tokens"] == body["usage"]["completion_tokens"] and chat[0]["latency_s"] > 0
    assert [r["path"] for r in lines].count("/health") == 1


def test_chat_process(model_dir):
    """Streams answers, clears the history on /reset, drops old turns to fit the context, quits on /exit."""
    from gptlab.data.chat_format import PlainChat
    from gptlab.tokenizer import get_tokenizer

    stdin = "hello\n/reset\nhello\n" + "word " * 70 + "\n" + "more\nand more\nagain\n/exit\nnever read\n"
    start = time.time()
    proc = subprocess.run(_gptlab("chat", "--model", str(model_dir), "--temperature", "0", "--max-tokens", "20"),
                          input=stdin, capture_output=True, text=True, env=_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.count("assistant> ") == 5, out
    assert "[history cleared]" in out and "[message too long: 7" in out
    assert "oldest turn(s) to fit the context" in proc.stderr
    # The first answer is the model's greedy continuation of the plain chat prompt, and the same message
    # after /reset gets it again: the history really was cleared.
    tok = get_tokenizer("gpt2")
    model = GPT.from_pretrained(model_dir).eval()
    prompt = tok.encode(PlainChat().format_chat([{"role": "user", "content": "hello"}]))
    expected = tok.decode(model.generate(prompt, 20))
    for stop in PlainChat.stop:
        expected = expected.split(stop)[0]
    assert out.count("assistant> " + expected.lstrip() + "\n") == 2, (expected, out)
    assert time.time() - start < 120

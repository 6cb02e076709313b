"""``gptlab instruct train|generate|eval`` end to end with a tiny model and a local chat server as judge."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from gptlab.app import main
from gptlab.model import GPT, GPTConfig


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=50257, context_length=96, emb_dim=32, n_heads=2, n_layers=2, drop_rate=0.0,
                    qkv_bias=True, tie_weights=True)
    path = tmp_path_factory.mktemp("base")
    GPT(cfg).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    words = ["apple", "river", "stone", "cloud", "tiger"]
    entries = [{"instruction": "Repeat the word.", "input": words[i % 5], "output": f"{words[i % 5]}."}
               for i in range(40)]
    path = tmp_path_factory.mktemp("data") / "words.jsonl"
    path.write_text("\n".join(json.dumps(e) for e in entries))
    return str(path)


class ScoreServer:
    """A chat-completions endpoint that answers "75" to every request (a stand-in for Ollama)."""

    def __init__(self):
        self.count = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                self.rfile.read(int(self.headers["Content-Length"]))
                outer.count += 1
                payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": "75"}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_train_generate_eval(capsys, tmp_path, base_model, data_file):
    run_dir = tmp_path / "run"
    code, out, err = run(capsys, "instruct", "train", "--data", data_file, "--model", base_model, "--style", "phi3",
                         "--mask-prompt", "--batch-size", "4", "--lr", "3e-3", "--max-steps", "4", "--eval-interval", "2",
                         "--sample-tokens", "4", "--precision", "fp32", "--out", str(run_dir), "--no-progress")
    assert code == 0, err
    assert "validation loss" in out and f"--data {run_dir}/data/test.json" in out
    assert json.loads((run_dir / "prompt_style.json").read_text())["name"] == "phi3"

    # The fine-tuned run is an ordinary model folder for gptlab generate.
    code, out, err = run(capsys, "generate", "--model", str(run_dir), "--prompt", "<|user|>\nHi\n<|assistant|>\n",
                         "--max-new-tokens", "3")
    assert code == 0, err

    answers = tmp_path / "answers.json"
    code, out, err = run(capsys, "instruct", "generate", "--model", str(run_dir), "--data", str(run_dir / "data" / "test.json"),
                         "--out", str(answers), "--max-new-tokens", "5", "--no-progress", "--json")
    assert code == 0, err
    assert json.loads(out)["generated"] == 4
    assert all(isinstance(e["model_response"], str) for e in json.loads(answers.read_text()))

    server = ScoreServer()
    try:
        code, out, err = run(capsys, "instruct", "eval", "--responses", str(answers), "--judge-url", server.url,
                             "--judge-model", "stub", "--no-progress")
    finally:
        server.close()
    assert code == 0, err
    assert "judge (stub): average 75.00 over 4 scored answers; 0 replies unscorable, 0 requests rejected, 0 not judged" in out
    assert "ROUGE-L" in out and server.count == 4
    scored = json.loads((tmp_path / "answers-scored.json").read_text())
    assert scored["summary"]["judge"]["histogram"][7]["count"] == 4

    # Resume with more steps; task settings cannot change on resume.
    code, _, err = run(capsys, "instruct", "train", "--resume", str(run_dir), "--mask-prompt")
    assert code == 2 and "--mask-prompt cannot change" in err
    code, out, err = run(capsys, "instruct", "train", "--resume", str(run_dir), "--max-steps", "6", "--no-progress",
                         "--json")
    assert code == 0, err
    assert json.loads(out)["step"] == 6


def test_generate_split_of_a_named_set_and_eval_with_dead_judge(capsys, tmp_path, base_model):
    answers = tmp_path / "a.json"
    # --split val of a 20-entry file: the book's 85/10/5 split leaves the last entry for validation.
    data = tmp_path / "d.json"
    data.write_text(json.dumps([{"instruction": f"Say {i}.", "input": "", "output": str(i)} for i in range(20)]))
    code, out, err = run(capsys, "instruct", "generate", "--model", base_model, "--data", str(data), "--split", "val",
                         "--out", str(answers), "--max-new-tokens", "3", "--no-progress")
    assert code == 0, err
    assert [e["instruction"] for e in json.loads(answers.read_text())] == ["Say 19."]
    import socket

    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    code, out, err = run(capsys, "instruct", "eval", "--responses", str(answers), "--judge-url", dead,
                         "--judge-model", "x", "--no-progress")
    assert code == 1
    assert "not reachable" in err and "0 of 1 answers judged" in err
    assert "exact match" in out and (tmp_path / "a-scored.json").is_file()


@pytest.mark.parametrize("content, message", [
    ({"instruction": "a", "output": "b"}, "expected a JSON list"),
    ([{"instruction": "a", "output": "b"}, {"instruction": "c"}], "entry 1: field 'output' is missing"),
])
def test_bad_data_is_one_line(capsys, tmp_path, base_model, content, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(content))
    code, _, err = run(capsys, "instruct", "train", "--data", str(path), "--model", base_model,
                       "--out", str(tmp_path / "r"))
    assert code == 2
    assert err.startswith("gptlab: error: ") and message in err and len(err.strip().splitlines()) == 1


def test_help_and_missing_model(capsys):
    for verb in ("train", "generate", "eval"):
        with pytest.raises(SystemExit) as info:
            main(["instruct", verb, "--help"])
        assert info.value.code == 0
        assert "usage: gptlab instruct " + verb in capsys.readouterr().out
    code, _, err = run(capsys, "instruct", "train")
    assert code == 2 and "--model is required" in err


def test_missing_responses_file_names_the_flag(capsys, tmp_path):
    code, _, err = run(capsys, "instruct", "eval", "--responses", str(tmp_path / "nope.json"))
    assert code == 2
    assert err.strip().splitlines() == [f"gptlab: error: --responses '{tmp_path / 'nope.json'}': no such file "
                                        "(write it with gptlab instruct generate)"]


def _one_line_error(capsys, *argv: str) -> str:
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == "" and err.startswith("gptlab: error: ") and err.count("\n") == 1, err
    return err[len("gptlab: error: "):].rstrip("\n")


@pytest.mark.parametrize("flags, message", [
    (["--temperature", "-1"], "--temperature must be a finite number >= 0 (0 = greedy), got -1.0"),
    (["--top-k", "0"], "--top-k must be a positive integer, got 0"),
    (["--max-new-tokens", "-1"], "--max-new-tokens must be positive, got -1"),
])
def test_generate_bad_sampling_flags_are_one_line(capsys, tmp_path, data_file, flags, message):
    # Checked before the model loads: "no-such-model" would be an error of its own.
    argv = ["instruct", "generate", "--model", "no-such-model", "--data", data_file, "--out", str(tmp_path / "a.json")]
    assert _one_line_error(capsys, *argv, *flags) == message


def test_generate_unwritable_or_foreign_out_is_one_line(capsys, tmp_path, data_file):
    argv = ["instruct", "generate", "--model", "no-such-model", "--data", data_file, "--out"]
    blocker = tmp_path / "notes.txt"
    blocker.write_text("my notes")
    assert _one_line_error(capsys, *argv, str(blocker / "a.json")) == (
        f"--out {blocker / 'a.json'}: cannot create the folder {blocker}: {blocker} is a file")
    if Path("/proc/self").is_dir():
        assert _one_line_error(capsys, *argv, "/proc/x/y.json") == (
            "--out /proc/x/y.json: cannot create the folder /proc/x (No such file or directory)")
    for flags in ([], ["--overwrite"]):
        assert "refusing to replace it, even with --overwrite" in _one_line_error(capsys, *argv, str(blocker), *flags)
        assert "is the --data file" in _one_line_error(capsys, *argv, data_file, *flags)
    assert blocker.read_text() == "my notes"


def test_eval_unwritable_or_foreign_out_is_one_line(capsys, tmp_path):
    responses = tmp_path / "r.json"
    responses.write_text(json.dumps([{"instruction": "a", "input": "", "output": "b", "model_response": "b"}]))
    argv = ["instruct", "eval", "--responses", str(responses), "--no-progress", "--out"]
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    assert _one_line_error(capsys, *argv, str(notes / "s.json")) == (
        f"--out {notes / 's.json'}: cannot create the folder {notes}: {notes} is a file")
    assert "is not a scores file of gptlab instruct eval" in _one_line_error(capsys, *argv, str(notes))
    assert "is the --responses file" in _one_line_error(capsys, *argv, str(responses))
    assert notes.read_text() == "my notes"
    # Scores it wrote itself are rewritten, as before.
    scores = tmp_path / "s.json"
    for _ in range(2):
        assert run(capsys, *argv, str(scores))[0] == 0
    assert json.loads(scores.read_text())["summary"]["n"] == 1

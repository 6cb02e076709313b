"""``gptlab pretrain`` / ``export`` / ``prepare`` as a user meets them: nothing saved is lost, one-line errors."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gptlab.app import main
from gptlab.model.run_folder import latest_checkpoint

REPO = Path(__file__).resolve().parents[2]

# char-level the-verdict with a 2-layer, 32-wide model: a step takes milliseconds.
SMALL = [
    "--data", "the-verdict", "--tokenizer", "char", "--preset", "gpt-nano", "--batch-size", "4",
    "--block-size", "32", "--model-set", "emb_dim=32", "--model-set", "n_heads=2", "--model-set", "n_layers=2",
    "--model-set", "context_length=32", "--eval-batches", "2", "--sample-tokens", "8", "--warmup-steps", "2",
    "--precision", "fp32", "--no-progress",
]


def pretrain(out: Path, *extra: str) -> int:
    return main(["pretrain", *SMALL, "--out", str(out), *extra])


def one_line_error(capsys, pattern: str) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("gptlab: error:")]
    assert len(lines) == 1, err
    import re

    assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "small"
    assert pretrain(out, "--max-steps", "4", "--eval-interval", "2") == 0
    return out


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- data loss


def test_pretrain_into_an_existing_run_is_refused(run, capsys):
    before = _snapshot(run)
    assert pretrain(run, "--max-steps", "2", "--tokenizer", "char") == 2
    one_line_error(capsys, rf"--out {run}: folder exists and is not empty \(to continue that run: --resume {run}\)")
    assert _snapshot(run) == before


def test_pretrain_overwrite_replaces_the_run_whole(tmp_path, capsys):
    out = tmp_path / "r"
    assert pretrain(out, "--max-steps", "4", "--eval-interval", "2") == 0
    (out / "hf").mkdir()  # anything of the old run, even a user's subfolder, goes with it
    assert pretrain(out, "--max-steps", "2", "--eval-interval", "1", "--overwrite") == 0
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2]  # not the old run's 0, 2, 4 followed by the new one's
    assert not (out / "hf").exists()
    assert latest_checkpoint(out).step == 2
    assert [p.name for p in tmp_path.iterdir()] == ["r"]


def test_failed_setup_leaves_no_folder_and_restores_a_replaced_run(tmp_path, capsys):
    out = tmp_path / "runs" / "empty"
    assert pretrain(out, "--max-steps", "2", "--block-size", "9999") == 2
    one_line_error(capsys, "block_size 9999 exceeds")
    assert not out.exists()
    # A failure during data preparation (inside the folder) after --overwrite puts the old run back.
    good = tmp_path / "good"
    assert pretrain(good, "--max-steps", "2", "--eval-interval", "2") == 0
    before = _snapshot(good)
    (tmp_path / "empty.txt").write_text("")
    code = main(["pretrain", *SMALL, "--out", str(good), "--max-steps", "2", "--overwrite",
                 "--data", str(tmp_path / "empty.txt")])
    assert code == 2
    one_line_error(capsys, "empty")
    assert _snapshot(good) == before


def test_bad_settings_fail_before_the_data_is_prepared(tmp_path, capsys, monkeypatch):
    import gptlab.train.setup

    def no_prepare(*a, **k):  # pragma: no cover - reached only if validation comes too late
        raise AssertionError("data was prepared before the settings were checked")

    monkeypatch.setattr(gptlab.train.setup, "prepare", no_prepare)
    for extra, pattern in [
        (["--preset", "gpt-huge"], "unknown model preset 'gpt-huge'"),
        (["--model-set", "n_layerz=2"], "unknown GPTConfig field"),
        (["--model-set", "emb_dim=33"], "divisible by n_heads"),
        (["--tokenizer", "bpe:abc"], r"expected bpe:N"),
        (["--tokenizer", "no-such-file.json"], "expected gpt2, char, bpe:N or a tokenizer file"),
    ]:
        assert pretrain(tmp_path / "r", "--max-steps", "2", *extra) == 2
        one_line_error(capsys, pattern)
    assert not (tmp_path / "r").exists()


def test_export_into_the_run_folder_is_refused(run, capsys):
    before = _snapshot(run)
    for target in (run, run / "checkpoints" / "x", run / "data"):
        assert main(["export", str(run), "--out", str(target)]) == 2
        one_line_error(capsys, "run folder")
    assert _snapshot(run) == before
    # A dedicated subfolder is what the pretrain summary suggests; exporting again needs --overwrite.
    assert main(["export", str(run), "--out", str(run / "hf")]) == 0
    assert main(["export", str(run), "--out", str(run / "hf")]) == 2
    one_line_error(capsys, "not empty.*--overwrite")
    assert main(["export", str(run), "--out", str(run / "hf"), "--overwrite"]) == 0
    assert main(["generate", "--model", str(run / "hf"), "--prompt", "I", "--max-new-tokens", "3"]) == 0


def test_export_writes_no_foreign_tokenizer_json(run, tmp_path, capsys):
    out = tmp_path / "hf"
    assert main(["export", str(run), "--out", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["config.json", "gptlab-tokenizer.json", "model.safetensors"]
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(out)  # the folder is still a valid HF model
    assert model.config.vocab_size > 0


def test_prepare_into_existing_data_is_refused(tmp_path, capsys):
    out = tmp_path / "p"
    assert main(["prepare", "--data", "the-verdict", "--tokenizer", "char", "--out", str(out), "--no-progress"]) == 0
    before = _snapshot(out)
    assert main(["prepare", "--data", "tinyshakespeare", "--max-mb", "0.05", "--out", str(out), "--no-progress"]) == 2
    one_line_error(capsys, "not empty.*--overwrite")
    assert _snapshot(out) == before
    assert main(["prepare", "--data", "tinyshakespeare", "--max-mb", "0.05", "--out", str(out), "--no-progress",
                 "--overwrite"]) == 0
    assert json.loads((out / "meta.json").read_text())["sources"][0]["spec"] == "tinyshakespeare"
    assert not (out / "tokenizer.json").exists()  # gpt2 this time: the char run's file went with the old data
    # Never over a folder of something else, even with --overwrite.
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    assert main(["prepare", "--data", "the-verdict", "--out", str(tmp_path / "notes"), "--overwrite"]) == 2
    one_line_error(capsys, "not a prepared data folder")
    assert (tmp_path / "notes" / "todo.txt").read_text() == "mine"


# --------------------------------------------------------------------------- one line, not a traceback


@pytest.mark.parametrize("verb", ["prepare", "pretrain", "export", "instruct train"])
def test_unwritable_out_is_one_line(verb, run, capsys):
    argv = {
        "prepare": ["prepare", "--data", "the-verdict", "--out", "/proc/x"],
        "pretrain": ["pretrain", *SMALL, "--max-steps", "2", "--out", "/proc/x"],
        "export": ["export", str(run), "--out", "/proc/x"],
        "instruct train": ["instruct", "train", "--model", "gpt-nano", "--max-steps", "1", "--out", "/proc/x"],
    }[verb]
    assert main(argv) == 2
    one_line_error(capsys, r"--out /proc/x: cannot create a folder there")


@pytest.fixture()
def damaged_run(run, tmp_path) -> Path:
    import shutil

    copy = tmp_path / "damaged"
    shutil.copytree(run, copy)
    for weights in [copy / "checkpoints" / "best" / "model.safetensors", latest_checkpoint(copy).path / "model.safetensors"]:
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2])
    return copy


def test_truncated_weights_are_one_line(damaged_run, tmp_path, capsys):
    assert main(["generate", "--model", str(damaged_run), "--prompt", "I", "--max-new-tokens", "2"]) == 2
    one_line_error(capsys, r"model.safetensors: cannot read weights, the file is damaged or truncated")
    assert main(["export", str(damaged_run), "--out", str(tmp_path / "x")]) == 2
    one_line_error(capsys, "damaged or truncated")
    assert not (tmp_path / "x").exists()


def test_resume_falls_back_past_a_damaged_checkpoint(damaged_run, capsys):
    newest = latest_checkpoint(damaged_run)
    assert newest.step == 4
    assert main(["pretrain", "--resume", str(damaged_run), "--max-steps", "6"]) == 0
    out = capsys.readouterr().out
    assert f"checkpoint {newest.path} is damaged" in out and "resuming from the one before it" in out
    assert "resumed" in out and "at step 2" in out
    assert latest_checkpoint(damaged_run).step == 6
    assert (damaged_run / "checkpoints" / ".damaged-step-00000004").is_dir()  # set aside, not deleted


def test_ctrl_c_before_the_first_evaluation(tmp_path):
    """SIGINT mid-run: one message, a checkpoint, exit 130 (the issue's repro, scaled down)."""
    out = tmp_path / "r"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gptlab", "pretrain", *SMALL, "--out", str(out), "--max-steps", "100000",
         "--eval-interval", "50000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
    )
    import threading

    watchdog = threading.Timer(180, proc.kill)  # a hung run fails the test instead of hanging it
    watchdog.start()
    seen = []
    for line in proc.stdout:  # wait for the step-0 evaluation's line: training has started
        seen.append(line)
        if line.startswith("step"):
            break
    time.sleep(1.5)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    watchdog.cancel()
    stdout = "".join(seen) + stdout
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "saving a checkpoint" in stdout and "stopped because it was interrupted" in stdout
    assert f"gptlab pretrain --resume {out}" in stdout
    assert latest_checkpoint(out).step > 0


# --------------------------------------------------------------------------- values accepted silently


@pytest.mark.parametrize("flag,value", [("--max-steps", "0"), ("--max-tokens", "0"), ("--epochs", "0"),
                                        ("--time-budget", "0"), ("--max-steps", "-3")])
def test_zero_stop_conditions_are_refused(flag, value, tmp_path, capsys):
    assert pretrain(tmp_path / "r", flag, value) == 2
    one_line_error(capsys, rf"{flag} must be (a )?positive")
    assert not (tmp_path / "r").exists()


def test_rounded_global_batch_is_reported(tmp_path, capsys):
    assert pretrain(tmp_path / "r", "--max-steps", "1", "--global-batch-tokens", "200") == 0
    assert "note: global batch 200 tokens rounded up to 256 (2 micro-batches of 4 x 32 tokens)" in capsys.readouterr().out


# --------------------------------------------------------------------------- stop conditions


def test_summary_says_why_the_run_stopped(run, tmp_path, capsys):
    assert pretrain(tmp_path / "r", "--max-steps", "3", "--eval-interval", "2") == 0
    assert "stopped because it reached --max-steps 3" in capsys.readouterr().out


def test_resume_with_new_max_steps_replaces_the_saved_time_budget(tmp_path, capsys):
    out = tmp_path / "r"
    # A first run bounded by time (and, to keep the test short, by steps too).
    assert pretrain(out, "--time-budget", "10m", "--max-steps", "3", "--eval-interval", "3") == 0
    saved = json.loads((out / "config.json").read_text())["train"]
    saved["time_budget"] = "0.01s"  # as if its budget had been used up
    cfg = json.loads((out / "config.json").read_text())
    cfg["train"] = saved
    (out / "config.json").write_text(json.dumps(cfg))
    capsys.readouterr()
    assert main(["pretrain", "--resume", str(out), "--max-steps", "8", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["step"] == 8 and result["stopped_by"] == "max_steps"


def test_a_max_steps_run_is_not_cut_by_a_default_time_budget(tmp_path, capsys):
    from gptlab.train import resolve_run_config

    cfg, _ = resolve_run_config({"max_steps": 2000})
    assert cfg.time_budget == ""  # the 3-minute default is only for runs with no stop condition
    cfg, _ = resolve_run_config({})
    assert cfg.time_budget == "3m"


def test_time_budget_includes_the_final_evaluation(tmp_path, capsys):
    # Evaluations here are slow on purpose (many batches); the run must still end within its budget.
    start = time.perf_counter()
    assert pretrain(tmp_path / "r", "--time-budget", "6s", "--eval-interval", "20", "--eval-batches", "60",
                    "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["stopped_by"] == "time_budget"
    assert result["elapsed"] <= 6.5, result["elapsed"]
    assert time.perf_counter() - start < 30


def test_short_run_warmup_is_scaled(tmp_path):
    from gptlab.train import TrainConfig

    assert TrainConfig().warmup_for(50) == 5
    assert TrainConfig().warmup_for(5000) == 100
    assert TrainConfig().warmup_for(0) == 100
    assert TrainConfig(warmup_steps=40).warmup_for(50) == 40


def test_explicit_warmup_longer_than_the_run_is_a_warning(tmp_path, capsys):
    assert pretrain(tmp_path / "r", "--max-steps", "3", "--warmup-steps", "10") == 0  # the last flag wins
    assert "warning: warmup_steps 10 is not shorter than the run's 3 steps" in capsys.readouterr().out


# --------------------------------------------------------------------------- misleading or missing


def test_info_lists_presets_and_reads_a_run_folder(run, capsys):
    assert main(["info", "--list-presets", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} >= {"gpt2", "gpt-nano", "gpt-micro"}
    assert main(["info", "--model", str(run), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["config"]["emb_dim"] == 32 and info["config"]["n_layers"] == 2


def test_default_bpe_vocabulary_fits_a_small_corpus(tmp_path, capsys):
    assert main(["pretrain", "--data", "the-verdict", "--preset", "gpt-nano", "--batch-size", "4", "--block-size",
                 "32", "--eval-batches", "2", "--sample-tokens", "4", "--precision", "fp32", "--no-progress",
                 "--max-steps", "1", "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "note: the-verdict has too few repeated pairs for bpe:4096; training bpe:" in out
    n_vocab = json.loads((tmp_path / "r" / "config.json").read_text())["model"]["vocab_size"]
    assert 256 < n_vocab < 4096


def test_files_follow_the_umask(run):
    expected = 0o666 & ~_current_umask()
    for name in ("config.json", "tokenizer.json", "checkpoints/best/model.safetensors", "data/train.bin",
                 "data/meta.json"):
        assert stat.S_IMODE(os.stat(run / name).st_mode) == expected, name


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_pretrain_help_points_to_a_real_flag(capsys):
    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    assert "gptlab info --list-presets" in capsys.readouterr().out

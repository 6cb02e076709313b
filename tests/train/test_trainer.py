"""The pretraining loop: exact resume, stop conditions, NaN handling, a full disk, bad input, DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gptlab.errors import GptlabError
from gptlab.model.run_folder import latest_checkpoint
from gptlab.train import TrainConfig, pretrain, resolve_run_config
from gptlab.train import checkpoint as ckpt
from gptlab.train.trainer import TrainingRun
from run_helpers import assert_same_weights, final_weights, losses

REPO = Path(__file__).resolve().parents[2]

# A model small enough that a step takes milliseconds: char-level the-verdict, 2 layers of 32 dims.
SMALL = dict(
    data="the-verdict", tokenizer="char", preset="gpt-nano", batch_size=4, block_size=32,
    model={"emb_dim": 32, "n_heads": 2, "n_layers": 2, "context_length": 32},
    eval_batches=2, sample_tokens=8, warmup_steps=3, time_budget="", precision="fp32", lr=3e-3,
)


def small_cfg(out: Path, **changes) -> TrainConfig:
    values = {**SMALL, "out": str(out), **changes}
    return TrainConfig(**values)








# --------------------------------------------------------------------------- exact resume


@pytest.mark.parametrize("optimizer", ["muon", "adamw"])
def test_interrupt_at_arbitrary_step_then_resume_is_exact(tmp_path, monkeypatch, optimizer):
    """Bit-identical only if the optimizer's state (Muon's momentum, AdamW's moments) is saved and restored."""
    full = pretrain(small_cfg(tmp_path / "full", max_steps=12, eval_interval=4, optimizer=optimizer),
                    progress=False, log=lambda m: None)
    assert full.step == 12

    original = TrainingRun._train_step

    def interrupt_at_7(self, lr):
        if self.step == 7:
            raise KeyboardInterrupt
        return original(self, lr)

    monkeypatch.setattr(TrainingRun, "_train_step", interrupt_at_7)
    part = pretrain(small_cfg(tmp_path / "part", max_steps=12, eval_interval=4, optimizer=optimizer),
                    progress=False, log=lambda m: None)
    assert part.stopped_by == "interrupted" and part.step == 7
    assert latest_checkpoint(tmp_path / "part").step == 7
    monkeypatch.setattr(TrainingRun, "_train_step", original)

    cfg, run_dir = resolve_run_config({}, None, str(tmp_path / "part"))
    assert cfg.optimizer == optimizer
    resumed = pretrain(cfg, resume=run_dir, progress=False, log=lambda m: None)
    assert resumed.step == 12
    assert_same_weights(final_weights(tmp_path / "full"), final_weights(tmp_path / "part"))
    # The evaluations after the interruption are the same as well (step 8's train loss averages only
    # the steps after the resume, so compare validation losses, which see the same weights).
    full_val = {s: v for s, _, v in losses(tmp_path / "full")}
    part_val = {s: v for s, _, v in losses(tmp_path / "part")}
    assert full_val == part_val


def _cli(*args: str, env=None) -> list[str]:
    return [sys.executable, "-m", "gptlab", "pretrain", *args]


def _small_flags(out: Path, steps: int) -> list[str]:
    return [
        "--data", "the-verdict", "--tokenizer", "char", "--preset", "gpt-nano", "--batch-size", "4",
        "--block-size", "32", "--model-set", "emb_dim=32", "--model-set", "n_heads=2",
        "--model-set", "n_layers=2", "--model-set", "context_length=32", "--eval-batches", "2",
        "--sample-tokens", "8", "--warmup-steps", "3", "--precision", "fp32", "--lr", "3e-3",
        "--max-steps", str(steps), "--eval-interval", "10", "--out", str(out), "--no-progress",
    ]


def _env() -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return env


def test_sigkill_between_checkpoints_then_resume_is_exact(tmp_path):
    steps = 60
    subprocess.run(_cli(*_small_flags(tmp_path / "full", steps)), check=True, env=_env(), cwd=REPO,
                   capture_output=True, timeout=300)

    proc = subprocess.Popen(_cli(*_small_flags(tmp_path / "killed", steps)), env=_env(), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = tmp_path / "killed" / "checkpoints" / "step-00000010"
    deadline = time.time() + 240
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = latest_checkpoint(tmp_path / "killed")
    assert killed_at is not None and killed_at.step < steps, "the run finished before it could be killed"

    subprocess.run(_cli("--resume", str(tmp_path / "killed"), "--no-progress"), check=True, env=_env(), cwd=REPO,
                   capture_output=True, timeout=300)
    assert_same_weights(final_weights(tmp_path / "full"), final_weights(tmp_path / "killed"))
    assert losses(tmp_path / "full") == losses(tmp_path / "killed")


# --------------------------------------------------------------------------- stop conditions


def test_epochs_and_tokens_stop_conditions(tmp_path):
    by_tokens = pretrain(small_cfg(tmp_path / "t", max_tokens=4 * 32 * 5, eval_interval=100), progress=False,
                         log=lambda m: None)
    assert by_tokens.step == 5 and by_tokens.tokens == 4 * 32 * 5
    by_epochs = pretrain(small_cfg(tmp_path / "e", epochs=1.0, sampling="epoch", eval_interval=100), progress=False,
                         log=lambda m: None)
    # The book's loop: windows at stride 32 over the training tokens, batches of 4, drop_last.
    from gptlab.data.prepared import PreparedData

    n_train = len(PreparedData(tmp_path / "e" / "data").train)
    assert by_epochs.step == len(range(0, n_train - 32, 32)) // 4


def test_time_budget_stops_the_run(tmp_path):
    start = time.perf_counter()
    result = pretrain(small_cfg(tmp_path / "b", time_budget="3s", eval_interval=50), progress=False, log=lambda m: None)
    assert result.stopped_by == "time_budget"
    # The cosine is planned from measured step times to end just inside the budget (leaving room for
    # the final evaluation), so the run ends close to 3 s and well before anything slow could happen.
    assert 2.0 <= result.elapsed < 20.0 and time.perf_counter() - start < 60


def test_metrics_and_plot_are_written(tmp_path):
    run = tmp_path / "m"
    pretrain(small_cfg(run, max_steps=8, eval_interval=4), progress=False, log=lambda m: None)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 4, 8]
    for key in ("tokens", "elapsed", "train_loss", "val_loss", "lr"):
        assert key in rows[-1]
    assert rows[-1]["tokens"] == 8 * 4 * 32
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run / "checkpoints" / "best" / "model.safetensors").is_file()


def test_the_plot_is_redrawn_at_most_every_interval_and_at_the_end(tmp_path, monkeypatch):
    """Frequent evaluations do not each pay for a matplotlib plot, yet loss.png ends with every record."""
    import gptlab.train.trainer as trainer

    drawn: list[int] = []
    real = trainer.plot_curves

    def counting(records, path, **kw):
        drawn.append(len(records))
        real(records, path, **kw)

    monkeypatch.setattr(trainer, "plot_curves", counting)
    monkeypatch.setattr(trainer, "PLOT_INTERVAL_S", 3600.0)
    run = tmp_path / "p"
    pretrain(small_cfg(run, max_steps=8, eval_interval=2), progress=False, log=lambda m: None)
    assert drawn == [1, 5]  # the first evaluation, then the end with all 5 records (steps 0, 2, 4, 6, 8)
    monkeypatch.setattr(trainer, "PLOT_INTERVAL_S", 0.0)
    monkeypatch.setattr(trainer, "PLOT_COST_RATIO", 0.0)
    drawn.clear()
    pretrain(small_cfg(tmp_path / "q", max_steps=8, eval_interval=2), progress=False, log=lambda m: None)
    assert drawn == [1, 2, 3, 4, 5]  # every evaluation once the interval has passed, and no extra at the end
    # A plot that takes long pushes the next one back by PLOT_COST_RATIO times its duration.
    monkeypatch.setattr(trainer, "PLOT_COST_RATIO", 1e6)
    drawn.clear()
    pretrain(small_cfg(tmp_path / "r", max_steps=8, eval_interval=2), progress=False, log=lambda m: None)
    assert drawn == [1, 5]


def test_eval_batch_size_regroups_the_same_windows(tmp_path):
    """2 batches of 4 windows and 1 batch of 8 cover the same windows: the same validation loss."""
    a = pretrain(small_cfg(tmp_path / "a", max_steps=3, eval_interval=3), progress=False, log=lambda m: None)
    b = pretrain(small_cfg(tmp_path / "b", max_steps=3, eval_interval=3, eval_batch_size=8, eval_batches=1),
                 progress=False, log=lambda m: None)
    assert a.history[-1]["val_loss"] == pytest.approx(b.history[-1]["val_loss"], abs=1e-5)
    c = pretrain(small_cfg(tmp_path / "c", max_steps=3, eval_interval=3, eval_batch_size=4, eval_batches=1),
                 progress=False, log=lambda m: None)
    assert c.history[-1]["val_loss"] != pytest.approx(a.history[-1]["val_loss"], abs=1e-5)  # half the windows


def test_gradient_accumulation_equals_one_big_batch(tmp_path):
    """4 micro-batches of 2 sequences = 1 batch of 8 (fp32, no dropout), within float rounding.

    With epoch sampling both runs walk the same shuffled window order, so optimizer step k sees the
    same 8 windows whether they come at once or as 4 accumulated micro-batches.
    """
    common = dict(max_steps=3, eval_interval=100, sampling="epoch", model={**SMALL["model"], "drop_rate": 0.0})
    big = pretrain(small_cfg(tmp_path / "big", batch_size=8, **common), progress=False, log=lambda m: None)
    acc = pretrain(small_cfg(tmp_path / "acc", batch_size=2, global_batch_tokens=8 * 32, **common), progress=False,
                   log=lambda m: None)
    assert big.tokens == acc.tokens == 3 * 8 * 32
    a, b = final_weights(tmp_path / "big"), final_weights(tmp_path / "acc")
    moved = any(not torch.allclose(a[n], GPTInit(tmp_path / "big")[n]) for n in a)
    assert moved
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-5, rtol=1e-4), name


# --------------------------------------------------------------------------- failures


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    from gptlab.model import GPT

    forward = GPT.forward
    calls = {"n": 0}

    def poisoned(self, idx, targets=None, **kw):
        out = forward(self, idx, targets, **kw)
        if targets is not None and self.training:
            calls["n"] += 1
            if calls["n"] > 6:
                return out[0], out[1] * float("nan")
        return out

    monkeypatch.setattr(GPT, "forward", poisoned)
    with pytest.raises(GptlabError, match=r"nan at step 7.*checkpoint"):
        pretrain(small_cfg(tmp_path / "n", max_steps=20, eval_interval=3), progress=False, log=lambda m: None)
    latest = latest_checkpoint(tmp_path / "n")
    assert latest.step == 6
    for t in final_weights(tmp_path / "n").values():
        assert torch.isfinite(t).all()


def test_full_disk_keeps_previous_checkpoint(tmp_path, monkeypatch):
    run = tmp_path / "d"
    pretrain(small_cfg(run, max_steps=4, eval_interval=4), progress=False, log=lambda m: None)
    before = final_weights(run)

    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt, "save_file", no_space)
    cfg, run_dir = resolve_run_config({"max_steps": 8}, None, str(run))
    with pytest.raises(GptlabError, match="No space left.*intact"):
        pretrain(cfg, resume=run_dir, progress=False, log=lambda m: None)
    assert latest_checkpoint(run).step == 4
    assert_same_weights(before, final_weights(run))
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".tmp")]


def test_data_shorter_than_one_window(tmp_path):
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("just a few characters of text here, not enough for windows of 32 across two splits")
    with pytest.raises(GptlabError, match="tokens"):
        pretrain(small_cfg(tmp_path / "s", data=str(tiny), max_steps=2), progress=False, log=lambda m: None)


def test_unknown_config_key_names_file_and_key(tmp_path):
    cfg_file = tmp_path / "run.toml"
    cfg_file.write_text('preset = "gpt-nano"\nlearning_rate = 0.1\n')
    with pytest.raises(GptlabError, match=r"run.toml.*'learning_rate'"):
        resolve_run_config({}, str(cfg_file))
    cfg_file.write_text('preset = "gpt-nano"\nmax_steps = "ten"\n')
    with pytest.raises(GptlabError, match=r"run.toml.*max_steps.*int"):
        resolve_run_config({}, str(cfg_file))


def test_config_file_yaml_and_toml_agree(tmp_path):
    toml = tmp_path / "a.toml"
    toml.write_text('preset = "gpt-nano"\nmax_steps = 7\nlr = 0.002\n[model]\nn_layers = 3\n')
    yaml = tmp_path / "a.yaml"
    yaml.write_text("preset: gpt-nano\nmax_steps: 7\nlr: 0.002\nmodel:\n  n_layers: 3\n")
    a, _ = resolve_run_config({}, str(toml))
    b, _ = resolve_run_config({"lr": 0.004}, str(yaml))
    assert a.max_steps == b.max_steps == 7 and a.model == b.model == {"n_layers": 3}
    assert a.lr == 0.002 and b.lr == 0.004  # the command line wins over the file


def test_resume_with_a_different_config_is_refused(tmp_path):
    run = tmp_path / "r"
    pretrain(small_cfg(run, max_steps=2, eval_interval=2), progress=False, log=lambda m: None)
    with pytest.raises(GptlabError, match="preset"):
        resolve_run_config({"preset": "gpt-micro"}, None, str(run))
    with pytest.raises(GptlabError, match="not a gptlab run folder"):
        resolve_run_config({}, None, str(tmp_path))


# --------------------------------------------------------------------------- distributed


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_ddp_two_processes_equal_one_process(tmp_path, optimizer):
    """torchrun with 2 gloo processes x batch 4 == one process x batch 8 (no dropout, fp32).

    With Muon every rank orthogonalizes the same all-reduced gradients, so the ranks stay identical."""
    flags = _small_flags(tmp_path / "x", 4) + ["--optimizer", optimizer]
    flags[flags.index("--eval-interval") + 1] = "4"

    def with_out(out: Path, batch: int) -> list[str]:
        f = list(flags)
        f[f.index("--out") + 1] = str(out)
        f[f.index("--batch-size") + 1] = str(batch)
        return f + ["--model-set", "drop_rate=0.0"]

    subprocess.run([sys.executable, "-m", "gptlab", "pretrain", *with_out(tmp_path / "single", 8)],
                   check=True, env=_env(), cwd=REPO, capture_output=True, timeout=300)
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "gptlab", "pretrain", *with_out(tmp_path / "ddp", 4)],
        env=_env(), cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    a, b = final_weights(tmp_path / "single"), final_weights(tmp_path / "ddp")
    changed = False
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-5, rtol=1e-4), name
    init = GPTInit(tmp_path / "single")
    for name in a:
        changed |= not torch.allclose(a[name], init[name])
    assert changed, "the runs did not train"
    assert [r[2] for r in losses(tmp_path / "single")] == pytest.approx([r[2] for r in losses(tmp_path / "ddp")], rel=1e-5)


def GPTInit(run_dir: Path) -> dict[str, torch.Tensor]:
    """The initial weights of a run (same seed, same config) for checking that training moved them."""
    from gptlab.model import GPT, GPTConfig

    saved = json.loads((run_dir / "config.json").read_text())
    torch.manual_seed(saved["train"]["seed"])
    model = GPT(GPTConfig.from_dict(saved["model"]))
    return {k: v for k, v in ckpt.model_state_for_saving(model).items()}


def test_compile_failure_falls_back_to_eager_with_a_warning(tmp_path, monkeypatch):
    """A model that cannot compile trains anyway, with a warning, and computes what eager mode does."""

    class Uncompilable:
        def __init__(self, module):
            self._orig_mod = module

        def __call__(self, *args, **kwargs):
            raise RuntimeError("inductor: no C++ compiler found")

    monkeypatch.setattr(torch, "compile", lambda module, **kw: Uncompilable(module))
    with pytest.warns(UserWarning, match="torch.compile failed.*without compilation"):
        compiled = pretrain(small_cfg(tmp_path / "c", max_steps=4, eval_interval=4, compile=True), progress=False,
                            log=lambda m: None)
    eager = pretrain(small_cfg(tmp_path / "e", max_steps=4, eval_interval=4), progress=False, log=lambda m: None)
    assert compiled.step == 4
    assert_same_weights(final_weights(tmp_path / "c"), final_weights(tmp_path / "e"))

"""The pretraining benchmark's own logic: matched model sizes and the race calibration's choices."""

from __future__ import annotations

import pytest

from gptlab.bench import pretrain as bench
from gptlab.model.config import GPTConfig
from gptlab.model.memory import count_parameters


@pytest.mark.parametrize("model, vocab", [
    (bench.FAST_CHAR["model"], 65),
    (bench.DESIGN_SETUPS["tinyshakespeare (char)"]["model"], 65),
    (bench.DESIGN_SETUPS["python-stdlib (BPE 4,096)"]["model"], 4096),
])
def test_matched_llama_has_the_gpt_models_parameter_count(model, vocab):
    gpt = count_parameters(GPTConfig.from_preset("gpt-nano", vocab_size=vocab, **model))[0]
    fields = bench.matched_llama(model, vocab)
    llama_cfg = GPTConfig.from_preset("llama-nano", vocab_size=vocab, **fields)
    assert llama_cfg.positions == "rope" and llama_cfg.mlp == "gated" and llama_cfg.kv_heads == model["n_heads"] // 2
    assert (llama_cfg.emb_dim, llama_cfg.n_layers, llama_cfg.context_length) == (
        model["emb_dim"], model["n_layers"], model["context_length"])
    llama = count_parameters(llama_cfg)[0]
    assert abs(llama - gpt) / gpt < 0.005


def test_calibration_picks_the_fastest_measured_settings(monkeypatch, tmp_path):
    # Speeds as a machine without fast bf16 would measure them: fp32 wins, sdpa beats explicit, and
    # batch 16 is slower per token than 32 but needs fewer tokens (RACE_BATCHES).
    table = {("bf16", "explicit", 8): 700.0, ("fp32", "explicit", 8): 11000.0, ("fp32", "explicit", 32): 14000.0,
             ("fp32", "sdpa", 32): 16000.0, ("fp32", "sdpa", 16): 15000.0}
    calls = []

    def fake_speed(data_dir, fields, seconds=0.6):
        key = (fields["precision"], fields["model"]["attn_impl"], fields["batch_size"])
        calls.append(key)
        return table[key]

    monkeypatch.setattr(bench, "_race_speed", fake_speed)
    cal = bench.calibrate_race(tmp_path, {**bench.FAST_CHAR, "precision": "auto"})
    assert (cal["precision"], cal["attn_impl"]) == ("fp32", "sdpa")
    assert cal["optimizer"] == bench.FAST_CHAR["optimizer"] == "muon"
    tokens16, tokens32 = bench.RACE_BATCHES[16][0], bench.RACE_BATCHES[32][0]
    expected = 16 if tokens16 / 15000.0 < tokens32 / 16000.0 else 32
    assert cal["batch_size"] == expected and cal["max_steps"] == bench.RACE_BATCHES[expected][1]
    assert len(calls) == len(set(calls))  # nothing measured twice
    table[("fp32", "sdpa", 16)] = 5000.0  # now batch 16 is too slow to make up for its fewer tokens
    monkeypatch.setattr(bench, "_race_speed", fake_speed)
    assert bench.calibrate_race(tmp_path, {**bench.FAST_CHAR, "precision": "auto"})["batch_size"] == 32


@pytest.mark.parametrize("flags", [["--design-budget", "abc"], ["--budget", "0"]])
def test_bad_budgets_fail_at_once_with_one_line(flags, capsys):
    from gptlab.app import main

    assert main(["bench", "pretrain", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{flags[0]} '{flags[1]}': expected a positive duration" in err and "\n" not in err


def test_the_whole_split_is_evaluated_only_near_the_target(monkeypatch, tmp_path):
    """Screens far from the target cost nothing more; near it, the whole split decides, and its gap corrects later screens."""
    check = bench.WholeSplitCheck(GPTConfig_model(), tmp_path, evaluate=None, target=1.88)
    whole = {100: 1.95, 150: 1.90, 200: 1.87}
    asked: list[int] = []

    def fake_whole(step):
        asked.append(step)
        check.history.append((step, 0.0, whole[step]))
        return whole[step]

    monkeypatch.setattr(check, "_whole", fake_whole)
    check.start()
    assert not check.on_eval({"step": 50, "val_loss": 2.5})  # far: no whole evaluation
    assert not check.on_eval({"step": 100, "val_loss": 1.89})  # near (gap unknown): whole says 1.95
    assert asked == [100] and abs(check.gap - 0.06) < 1e-9
    assert not check.on_eval({"step": 125, "val_loss": 1.84})  # 1.84 + 0.06 is not near: skipped
    assert not check.on_eval({"step": 150, "val_loss": 1.825})  # 1.885 is within the margin: 1.90, not yet
    assert check.on_eval({"step": 200, "val_loss": 1.80})  # whole 1.87: reached, the run stops
    assert asked == [100, 150, 200] and len(check.screens) == 5


def GPTConfig_model():  # noqa: N802 - a tiny model for the check's bookkeeping
    from gptlab.model import GPT

    return GPT(GPTConfig(vocab_size=65, context_length=16, emb_dim=16, n_heads=2, n_layers=1))


@pytest.mark.slow
def test_the_whole_split_check_evaluates_the_checkpoint_just_saved(monkeypatch, tmp_path):
    """Given the screen's own batch as its "whole split", the check must find exactly the screen's loss at every step."""
    import torch.nn.functional as F

    from gptlab.data.prepared import PreparedData
    from gptlab.model import GPT
    from gptlab.train import TrainConfig, pretrain
    from gptlab.train.batches import eval_windows

    data_dir = bench._char_data(tmp_path)
    data = PreparedData(data_dir)
    first = eval_windows(data.val.tokens, 16, 1, 32)

    def evaluate(model) -> float:
        (x, y), = first
        return F.cross_entropy(model(x).flatten(0, 1).float(), y.flatten()).item()

    model = dict(emb_dim=32, n_heads=2, n_layers=1, context_length=16, drop_rate=0.0)
    check = bench.WholeSplitCheck(GPT(GPTConfig.from_preset("gpt-nano", vocab_size=data.n_vocab, **model)),
                                  tmp_path / "run", evaluate, target=0.0)
    monkeypatch.setattr(bench, "SCREEN_MARGIN", 100.0)  # every screen looks near: every checkpoint is evaluated
    cfg = TrainConfig(data=str(data_dir), preset="gpt-nano", model=model, block_size=16, batch_size=4,
                      max_steps=6, eval_interval=2, eval_batches=1, eval_batch_size=32, sample_tokens=1,
                      out=str(tmp_path / "run"), time_budget="", lr=1e-2)
    check.start()
    pretrain(cfg, progress=False, on_eval=check.on_eval, log=lambda _m: None)
    history = check.finish()
    assert [s for s, _, _ in history] == [2, 4, 6]  # step 0 has no checkpoint yet
    screens = {s: loss for s, _, loss in check.screens}
    for step, seconds, loss in history:
        assert abs(loss - screens[step]) < 1e-5 and seconds > 0
    assert len({round(loss, 4) for _, _, loss in history}) == 3  # three different checkpoints

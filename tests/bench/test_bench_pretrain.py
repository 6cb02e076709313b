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

"""The checkpoint writer on its own: atomic folders, keep_last pruning, the best/ copy, full disks, RNG states."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from gptlab.errors import GptlabError
from gptlab.model import GPT, GPTConfig
from gptlab.model.run_folder import checkpoint_dir, latest_checkpoint, list_checkpoints, load_model_weights, load_state
from gptlab.train import checkpoint as ckpt

TIED = GPTConfig(vocab_size=32, context_length=8, emb_dim=16, n_heads=2, n_layers=1, tie_weights=True)


def _save(run, step, model=None, **kwargs):
    model = model or GPT(TIED)
    return ckpt.save_checkpoint(run, step, model, {"step": step}, {"val_loss": 1.0 / step}, **kwargs)


def _names(run) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir())


def test_a_checkpoint_is_a_complete_folder_and_nothing_else_is_left(tmp_path):
    path = _save(tmp_path, 3)
    assert path == tmp_path / "checkpoints" / "step-00000003"
    assert sorted(p.name for p in path.iterdir()) == ["meta.json", "model.safetensors", "state.pt"]
    assert json.loads((path / "meta.json").read_text()) == {"val_loss": 1 / 3, "step": 3}
    assert load_state(path) == {"step": 3}
    assert _names(tmp_path) == ["step-00000003"]  # no temporary folder left behind
    _save(tmp_path, 3)  # writing the same step again replaces it
    assert _names(tmp_path) == ["step-00000003"]


def test_keep_last_prunes_the_oldest_steps_but_never_best(tmp_path):
    for step in range(1, 6):
        _save(tmp_path, step, keep_last=2, best=step == 2)
    assert _names(tmp_path) == ["best", "step-00000004", "step-00000005"]
    assert json.loads((tmp_path / "checkpoints" / "best" / "meta.json").read_text())["step"] == 2
    assert [c.step for c in list_checkpoints(tmp_path)] == [4, 5]  # best/ is not a step checkpoint
    _save(tmp_path, 6, keep_last=0)  # 0 keeps every step
    assert [c.step for c in list_checkpoints(tmp_path)] == [4, 5, 6]


def test_best_is_a_copy_replaced_by_the_next_best(tmp_path):
    torch.manual_seed(0)
    first = GPT(TIED)
    _save(tmp_path, 1, first, best=True)
    _save(tmp_path, 2, GPT(TIED))
    best = checkpoint_dir(tmp_path, "best")
    assert json.loads((best / "meta.json").read_text())["step"] == 1
    assert torch.equal(load_file(str(best / "model.safetensors"))["tok_emb.weight"], first.tok_emb.weight)
    _save(tmp_path, 3, GPT(TIED), best=True, keep_last=1)
    assert json.loads((best / "meta.json").read_text())["step"] == 3
    assert _names(tmp_path) == ["best", "step-00000003"]


def test_tied_weights_are_stored_once_and_load_back_tied(tmp_path):
    torch.manual_seed(0)
    model = GPT(TIED)
    path = _save(tmp_path, 1, model)
    stored = load_file(str(path / "model.safetensors"))
    assert "out_head.weight" not in stored and "tok_emb.weight" in stored
    again = GPT(TIED)
    load_model_weights(again, path)
    assert again.out_head.weight is again.tok_emb.weight
    assert torch.equal(again.tok_emb.weight, model.tok_emb.weight)


def test_given_weights_are_written_instead_of_the_models(tmp_path):
    weights = {"anything": torch.arange(4.0)}
    path = _save(tmp_path, 1, weights=weights)
    assert load_file(str(path / "model.safetensors")).keys() == {"anything"}


def test_a_full_disk_keeps_the_earlier_checkpoints(tmp_path, monkeypatch):
    _save(tmp_path, 1)

    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt, "save_file", no_space)
    with pytest.raises(GptlabError, match="could not write checkpoint .*step-00000002.*No space left.*intact"):
        _save(tmp_path, 2)
    assert _names(tmp_path) == ["step-00000001"]  # no half-written folder, the earlier one untouched
    assert latest_checkpoint(tmp_path).step == 1


def test_damaged_files_are_errors_that_name_the_file(tmp_path):
    path = _save(tmp_path, 1)
    for name in ("model.safetensors", "state.pt"):
        data = (path / name).read_bytes()
        (path / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(GptlabError, match="model.safetensors: cannot read weights, the file is damaged or truncated"):
        load_model_weights(GPT(TIED), path)
    with pytest.raises(GptlabError, match="state.pt: cannot read training state") as exc:
        load_state(path)
    assert "\n" not in str(exc.value)


def test_rng_states_round_trip_through_a_checkpoint(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.normal()  # leaves a cached Gaussian in numpy's state
    path = ckpt.save_checkpoint(tmp_path, 1, GPT(TIED), {"rng": ckpt.rng_state()}, {})
    expected = (random.random(), np.random.normal(), np.random.rand(), torch.rand(3))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    ckpt.set_rng_state(load_state(path)["rng"])  # loads with weights_only=True
    got = (random.random(), np.random.normal(), np.random.rand(), torch.rand(3))
    assert got[:3] == expected[:3] and torch.equal(got[3], expected[3])

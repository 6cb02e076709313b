"""Reading a run folder back (gptlab.model.run_folder), on folders written here by hand, without the trainer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from gptlab.errors import GptlabError
from gptlab.model import GPT, GPTConfig
from gptlab.model.load import load_model
from gptlab.model.run_folder import (
    checkpoint_dir,
    is_run_dir,
    latest_checkpoint,
    list_checkpoints,
    load_model_weights,
    load_run,
    load_run_tokenizer,
    load_state,
    read_run_config,
    run_model_config,
)
from gptlab.tokenizer import CharTokenizer

CFG = GPTConfig(vocab_size=40, context_length=16, emb_dim=16, n_heads=2, n_layers=1, drop_rate=0.0)
TEXT = "the quick brown fox jumps over the lazy dog, again and again."


def _weights(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v.clone() for k, v in GPT(CFG).state_dict().items()}  # untied: every tensor stored


def _checkpoint(folder: Path, step: int, seed: int, val_loss: float | None = None) -> Path:
    folder.mkdir(parents=True)
    save_file(_weights(seed), str(folder / "model.safetensors"))
    torch.save({"step": step, "optimizer": {"lr": torch.tensor(0.5)}}, folder / "state.pt")
    (folder / "meta.json").write_text(json.dumps({"step": step, "val_loss": val_loss}))
    return folder


def _config(**changes) -> dict:
    config = {"format": "gptlab-run", "version": 1, "train": {"seed": 7, "max_steps": 5}, "model": CFG.to_dict(),
              "tokenizer": {"file": "tokenizer.json"}, "world_size": 2}
    config.update(changes)
    return config


@pytest.fixture
def run(tmp_path) -> Path:
    """A run folder as the trainer leaves it: steps 2 and 5 kept, best/ a copy of step 2."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(_config()))
    CharTokenizer.from_text(TEXT).save(run / "tokenizer.json")
    _checkpoint(run / "checkpoints" / "step-00000002", 2, seed=2, val_loss=1.5)
    _checkpoint(run / "checkpoints" / "step-00000005", 5, seed=5, val_loss=1.7)
    _checkpoint(run / "checkpoints" / "best", 2, seed=2, val_loss=1.5)
    return run


def test_config_sections_are_read_and_checked(run):
    saved = read_run_config(run)
    assert saved.path == run / "config.json"
    assert saved.train == {"seed": 7, "max_steps": 5}
    assert saved.model == CFG == run_model_config(run)
    assert saved.tokenizer == {"file": "tokenizer.json"}
    assert saved.world_size == 2 and saved.task is None
    assert is_run_dir(run) and not is_run_dir(run / "checkpoints")
    (run / "config.json").write_text(json.dumps(_config(task={"name": "instruct", "style": "alpaca"})))
    assert read_run_config(run).task == {"name": "instruct", "style": "alpaca"}


def test_defaults_for_optional_sections(run):
    config = _config()
    del config["tokenizer"], config["world_size"]
    (run / "config.json").write_text(json.dumps(config))
    saved = read_run_config(run)
    assert saved.tokenizer == {} and saved.world_size == 1


@pytest.mark.parametrize(
    "content, expected",
    [
        (None, "not a gptlab run folder"),
        ('{"model_type": "gpt2", "n_embd": 16}', "not a gptlab run folder"),  # a Hugging Face folder
        ("{not json", "corrupt run config"),
        (json.dumps(_config(model={"emb_dim": 16, "n_heads": 3})), "corrupt run config"),
        (json.dumps(_config(model={"typo": 1})), "corrupt run config"),
        (json.dumps({k: v for k, v in _config().items() if k != "train"}), "corrupt run config"),
        (json.dumps(_config(train=[1, 2])), "corrupt run config"),
        (json.dumps(_config(task="instruct")), "corrupt run config"),
    ],
)
def test_bad_configs_are_one_line_errors_naming_the_folder(tmp_path, content, expected):
    if content is not None:
        (tmp_path / "config.json").write_text(content)
    with pytest.raises(GptlabError, match=expected) as exc:
        read_run_config(tmp_path)
    assert str(tmp_path) in str(exc.value) and "\n" not in str(exc.value)


def test_tokenizer_is_the_runs_own_or_gpt2s(run):
    tok = load_run_tokenizer(run)
    assert tok.decode(tok.encode("the lazy dog")) == "the lazy dog"
    assert tok.n_vocab == CharTokenizer.from_text(TEXT).n_vocab
    (run / "config.json").write_text(json.dumps(_config(tokenizer={"name": "gpt2"})))
    assert load_run_tokenizer(run).n_vocab == 50257


def test_listing_ignores_folders_that_are_not_complete_checkpoints(run):
    root = run / "checkpoints"
    (root / ".tmp-step-00000009-123").mkdir()  # being written
    _checkpoint(root / ".damaged-step-00000007", 7, seed=7)  # set aside by a resume
    (root / "step-00000008").mkdir()  # no meta.json: never finished
    _checkpoint(root / "step-00000006", 6, seed=6).joinpath("meta.json").write_text("{trunc")
    assert [(c.path.name, c.step, c.val_loss) for c in list_checkpoints(run)] == [
        ("step-00000002", 2, 1.5), ("step-00000005", 5, 1.7),
    ]
    assert latest_checkpoint(run).step == 5
    assert list_checkpoints(run / "nowhere") == [] and latest_checkpoint(run / "nowhere") is None


def test_checkpoint_dir_picks_best_latest_or_a_step(run):
    assert checkpoint_dir(run) == run / "checkpoints" / "best"
    assert checkpoint_dir(run, "latest").name == "step-00000005"
    assert checkpoint_dir(run, "2").name == "step-00000002"
    with pytest.raises(GptlabError, match="no checkpoint for step 3"):
        checkpoint_dir(run, "3")
    with pytest.raises(GptlabError, match="expected best, latest or a step number"):
        checkpoint_dir(run, "newest")
    (run / "checkpoints" / "best" / "model.safetensors").unlink()  # no best yet: the latest stands in
    assert checkpoint_dir(run).name == "step-00000005"
    with pytest.raises(GptlabError, match="no checkpoint yet"):
        checkpoint_dir(run.parent / "empty")


def test_weights_and_state_load_back(run):
    model = GPT(CFG)
    load_model_weights(model, checkpoint_dir(run, "5"))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in _weights(5).items())
    state = load_state(checkpoint_dir(run, "5"))
    assert state["step"] == 5 and torch.equal(state["optimizer"]["lr"], torch.tensor(0.5))


def test_weights_of_another_shape_are_refused(run):
    wider = GPT(CFG.replace(emb_dim=32))
    with pytest.raises(GptlabError, match=r"model.safetensors: tensor \S+ has shape \(.*16.*\), the model expects \(.*32.*\)"):
        load_model_weights(wider, checkpoint_dir(run))


@pytest.mark.parametrize("name, expected", [("model.safetensors", "damaged or truncated"),
                                            ("state.pt", "cannot read training state")])
def test_damaged_files_are_one_line_errors_naming_the_file(run, name, expected):
    path = checkpoint_dir(run, "5") / name
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(GptlabError, match=expected) as exc:
        load_model_weights(GPT(CFG), path.parent) if name == "model.safetensors" else load_state(path.parent)
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)
    path.unlink()
    with pytest.raises(GptlabError, match="missing" if name == "model.safetensors" else expected):
        load_model_weights(GPT(CFG), path.parent) if name == "model.safetensors" else load_state(path.parent)


def test_load_run_and_load_model_give_the_same_pair(run):
    model, tok = load_run(run, "best")
    assert not model.training
    assert all(torch.equal(model.state_dict()[k], v) for k, v in _weights(2).items())
    same, same_tok = load_model(run)
    assert all(torch.equal(same.state_dict()[k], v) for k, v in model.state_dict().items())
    assert same_tok.encode(TEXT) == tok.encode(TEXT)
    half, _ = load_run(run, "latest", dtype=torch.bfloat16)
    assert half.tok_emb.weight.dtype == torch.bfloat16
    with pytest.raises(GptlabError, match="not a gptlab run folder"):
        load_run(run / "checkpoints")

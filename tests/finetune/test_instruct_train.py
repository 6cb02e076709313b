"""Instruction fine-tuning on the pretraining trainer, with a tiny GPT-2-vocabulary model (seconds on a CPU)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from gptlab.data.prompts import ALPACA, load_style
from gptlab.errors import GptlabError
from gptlab.finetune.instruct.collate import encode_example, fixed_batches
from gptlab.finetune.instruct.train import InstructConfig, finetune, instruct_train_config, resume_finetune
from gptlab.model.load import load_model
from gptlab.tokenizer import get_tokenizer

WORDS = ["apple", "river", "stone", "cloud", "tiger", "piano", "lemon", "forest", "candle", "rocket"]


@pytest.fixture(scope="module")
def base_model(tmp_path_factory, tiny_gpt_folder):
    """A tiny random GPT with GPT-2's vocabulary, saved in the Hugging Face format."""
    return tiny_gpt_folder(tmp_path_factory.mktemp("base"))


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    entries = []
    for i in range(40):
        w = WORDS[i % len(WORDS)]
        entries.append({"instruction": "Repeat the word.", "input": w if i % 2 else "", "output": f"{w} {w}."})
    path = tmp_path_factory.mktemp("data") / "words.json"
    path.write_text(json.dumps(entries))
    return str(path)


def _cfg(tmp_path, name, **kw):
    values = {"batch_size": 4, "lr": 3e-3, "eval_interval": 3, "max_steps": 6, "sample_tokens": 4,
              "precision": "fp32", "device": "cpu", "out": str(tmp_path / name), **kw}
    return instruct_train_config(values)


def quiet(msg):
    pass


def test_run_folder_loads_and_validation_loss_falls(tmp_path, base_model, data_file):
    icfg = InstructConfig(data=data_file, model=base_model)
    result = finetune(icfg, _cfg(tmp_path, "run"), progress=False, log=quiet)
    run = result.run_dir
    losses = [h["val_loss"] for h in result.history]
    assert len(losses) == 3 and losses[-1] < losses[0]
    saved = json.loads((run / "config.json").read_text())
    assert saved["format"] == "gptlab-run" and saved["task"]["name"] == "instruct"
    assert saved["task"]["sizes"] == {"train": 34, "test": 4, "val": 2}
    assert saved["train"]["lr"] == saved["train"]["min_lr"] == 3e-3  # --lr alone stays constant
    assert load_style(run) == ALPACA
    assert len(json.loads((run / "data" / "test.json").read_text())) == 4
    assert (run / "loss.png").is_file()
    (tuned, _), (base, _) = load_model(run), load_model(base_model)
    assert not torch.equal(tuned.blocks[0].att.qkv.weight, base.blocks[0].att.qkv.weight)


def test_step0_val_loss_is_the_mean_over_answer_tokens(tmp_path, base_model, data_file):
    # With --mask-prompt, the trainer's first validation loss must equal the loss over answer tokens
    # (and the end-of-text) only, weighted by token: computed here by hand from the same model.
    icfg = InstructConfig(data=data_file, model=base_model, mask_prompt=True)
    result = finetune(icfg, _cfg(tmp_path, "masked", max_steps=1, eval_interval=1), progress=False, log=quiet)
    val = json.loads((result.run_dir / "data" / "val.json").read_text())
    tok = get_tokenizer("gpt2")
    model = load_model(base_model)[0].float()
    total = count = 0
    for x, y in fixed_batches([encode_example(tok, ALPACA, e) for e in val], 4, tok.eot_id, mask_prompt=True):
        logits = model(x)
        total += F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").item()
        count += int((y != -100).sum())
    # Answer "w w." is 3-4 tokens + end-of-text; the prompt's ~40 tokens are not counted.
    assert count < 14
    assert result.history[0]["val_loss"] == pytest.approx(total / count, rel=1e-5)


@pytest.mark.parametrize("lora", [0, 2])
def test_resume_is_exact(tmp_path, base_model, data_file, lora):
    icfg = InstructConfig(data=data_file, model=base_model, lora_rank=lora, lora_alpha=4.0)
    full = finetune(icfg, _cfg(tmp_path, "full"), progress=False, log=quiet)
    half = finetune(icfg, _cfg(tmp_path, "half", max_steps=3), progress=False, log=quiet)
    resumed = resume_finetune(half.run_dir, {"max_steps": 6}, progress=False, log=quiet)
    assert resumed.step == 6
    a = load_file(str(full.run_dir / "checkpoints" / "step-00000006" / "model.safetensors"))
    b = load_file(str(resumed.run_dir / "checkpoints" / "step-00000006" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [h["val_loss"] for h in full.history] == [h["val_loss"] for h in resumed.history]


def test_lora_run_exports_merged_weights_and_adapter(tmp_path, base_model, data_file):
    icfg = InstructConfig(data=data_file, model=base_model, lora_rank=2, lora_alpha=4.0)
    result = finetune(icfg, _cfg(tmp_path, "lora", max_steps=3), progress=False, log=quiet)
    run = result.run_dir
    weights = load_file(str(run / "checkpoints" / "best" / "model.safetensors"))
    assert not any("lora_" in k for k in weights)  # plain names: loads like any run
    (tuned, _), (base, _) = load_model(run), load_model(base_model)
    assert torch.equal(tuned.tok_emb.weight, base.tok_emb.weight)  # frozen, not a LoRA target
    assert not torch.equal(tuned.blocks[1].ff.fc.weight, base.blocks[1].ff.fc.weight)
    adapter = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert adapter["rank"] == 2 and adapter["base"] == {"model": base_model}


def test_lora_on_a_tied_head_is_refused(tmp_path, base_model, data_file):
    icfg = InstructConfig(data=data_file, model=base_model, lora_rank=2, lora_targets="all")
    with pytest.raises(GptlabError, match="out_head shares its weight"):
        finetune(icfg, _cfg(tmp_path, "tied"), progress=False, log=quiet)


def test_bad_settings(tmp_path, base_model, data_file):
    with pytest.raises(GptlabError, match="context length"):
        finetune(InstructConfig(data=data_file, model=base_model, max_length=65), _cfg(tmp_path, "a"),
                 progress=False, log=quiet)
    with pytest.raises(GptlabError, match="fewer than one batch"):
        finetune(InstructConfig(data=data_file, model=base_model), _cfg(tmp_path, "b", batch_size=64),
                 progress=False, log=quiet)
    # A run that fails while setting up leaves no folder behind.
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    finetune(InstructConfig(data=data_file, model=base_model), _cfg(tmp_path, "c", max_steps=1), progress=False,
             log=quiet)
    before = (tmp_path / "c" / "config.json").read_bytes()
    with pytest.raises(GptlabError, match="folder exists and is not empty .*--resume .*--overwrite"):
        finetune(InstructConfig(data=data_file, model=base_model), _cfg(tmp_path, "c"), progress=False, log=quiet)
    assert (tmp_path / "c" / "config.json").read_bytes() == before
    # A run folder without the task section (a pretraining run) is refused by the instruct resume.
    run = tmp_path / "c"
    cfg = json.loads((run / "config.json").read_text())
    del cfg["task"]
    (run / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(GptlabError, match="not an instruction fine-tuning run"):
        resume_finetune(run, {}, progress=False, log=quiet)

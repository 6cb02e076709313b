"""Pretraining the Llama design (``--preset llama-*``, a ``[model]`` table, ``--model-set``) with all the trainer has.

The GPT-2 presets' tests (test_trainer.py) cover each feature of the loop; these run the same checks on
a model of the modern design (RoPE, RMSNorm, SwiGLU, grouped-query attention, separate q/k/v, no
biases): exact resume after SIGKILL, gradient accumulation, bf16 autocast, torch.compile, DDP, config
files, the FLOP count behind MFU, weight decay, and the export to Hugging Face's LlamaForCausalLM.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from gptlab.app import main
from gptlab.errors import GptlabError
from gptlab.model import GPT, GPTConfig
from gptlab.model.config import PRESETS
from gptlab.model.norm import RMSNorm
from gptlab.model.run_folder import latest_checkpoint, load_run
from gptlab.train import TrainConfig, pretrain, resolve_run_config
from gptlab.train.config import model_overrides, parse_model_value
from gptlab.train.flops import flops_per_token, matmul_params
from gptlab.train.optim import param_groups
from gptlab.train.trainer import TrainingRun
from run_helpers import assert_same_weights, final_weights, losses

REPO = Path(__file__).resolve().parents[2]

# llama-nano shrunk so that a step takes milliseconds: char-level the-verdict, 2 layers 32 wide, 4 query
# heads of 8 sharing 2 key/value heads (grouped-query attention stays in play).
TINY = {"emb_dim": 32, "n_heads": 4, "n_kv_heads": 2, "n_layers": 2, "ff_dim": 64, "context_length": 32}
SMALL = dict(
    data="the-verdict", tokenizer="char", preset="llama-nano", batch_size=4, block_size=32, model=dict(TINY),
    eval_batches=2, sample_tokens=8, warmup_steps=3, time_budget="", precision="fp32", lr=3e-3,
)


def small_cfg(out: Path, **changes) -> TrainConfig:
    return TrainConfig(**{**SMALL, "out": str(out), **changes})


def small_flags(out: Path, steps: int, eval_interval: int = 10) -> list[str]:
    """The same run as :data:`SMALL`, as ``gptlab pretrain`` flags."""
    flags = ["--data", "the-verdict", "--tokenizer", "char", "--preset", "llama-nano", "--batch-size", "4",
             "--block-size", "32", "--eval-batches", "2", "--sample-tokens", "8", "--warmup-steps", "3",
             "--precision", "fp32", "--lr", "3e-3", "--max-steps", str(steps), "--eval-interval", str(eval_interval),
             "--out", str(out), "--no-progress"]
    for key, value in TINY.items():
        flags += ["--model-set", f"{key}={value}"]
    return flags


def quiet(_msg: str) -> None:
    """A log function that drops the run's messages."""








def initial_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """The weights a run started from (same seed, same config), to check that training moved them."""
    saved = json.loads((run_dir / "config.json").read_text())
    torch.manual_seed(saved["train"]["seed"])
    model = GPT(GPTConfig.from_dict(saved["model"]))
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k != "out_head.weight"}


def env() -> dict:
    out = dict(os.environ)
    out.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return out


# --------------------------------------------------------------------------- end to end


def test_llama_preset_trains_end_to_end(tmp_path, capsys):
    run = tmp_path / "llama"
    assert main(["pretrain", *small_flags(run, 12, eval_interval=6)]) == 0
    saved = json.loads((run / "config.json").read_text())
    model = saved["model"]
    assert (model["norm"], model["positions"], model["mlp"], model["activation"]) == ("rmsnorm", "rope", "gated", "silu")
    assert model["n_kv_heads"] == 2 and model["fused_qkv"] is False and model["proj_bias"] is False
    rows = losses(run)
    assert [r[0] for r in rows] == [0, 6, 12]
    assert rows[-1][2] < rows[0][2] - 0.1, rows  # it learned something
    weights = final_weights(run)
    assert not any("pos_emb" in name for name in weights)  # rotary: no position table
    assert "blocks.0.att.k_proj.weight" in weights and weights["blocks.0.att.k_proj.weight"].shape == (16, 32)
    assert "blocks.0.ff.gate.weight" in weights
    assert not any(name.endswith(".bias") for name in weights)
    # The summary's MFU counts the Llama block's own matrices; it is a fraction, not a GPT-2 estimate.
    out = capsys.readouterr().out
    assert "run saved in" in out and "MFU" in out
    loaded, _ = load_run(run, "latest")
    assert loaded.pos_emb is None and loaded.rope_inv_freq is not None
    assert loaded.cfg == GPTConfig.from_dict(model)


def test_interrupt_then_resume_is_exact(tmp_path, monkeypatch):
    full = pretrain(small_cfg(tmp_path / "full", max_steps=10, eval_interval=4), progress=False, log=quiet)
    assert full.step == 10
    original = TrainingRun._train_step

    def interrupt_at_6(self, lr):
        if self.step == 6:
            raise KeyboardInterrupt
        return original(self, lr)

    monkeypatch.setattr(TrainingRun, "_train_step", interrupt_at_6)
    part = pretrain(small_cfg(tmp_path / "part", max_steps=10, eval_interval=4), progress=False, log=quiet)
    assert part.stopped_by == "interrupted" and part.step == 6
    monkeypatch.setattr(TrainingRun, "_train_step", original)
    cfg, run_dir = resolve_run_config({}, None, str(tmp_path / "part"))
    assert pretrain(cfg, resume=run_dir, progress=False, log=quiet).step == 10
    assert_same_weights(final_weights(tmp_path / "full"), final_weights(tmp_path / "part"))
    assert {s: v for s, _, v in losses(tmp_path / "full")} == {s: v for s, _, v in losses(tmp_path / "part")}


def test_sigkill_between_checkpoints_then_resume_is_exact(tmp_path):
    """The GPT-2 test's mechanism: kill -9 after the first checkpoint, resume, compare with a clean run."""
    steps = 60
    cli = [sys.executable, "-m", "gptlab", "pretrain"]
    subprocess.run(cli + small_flags(tmp_path / "full", steps), check=True, env=env(), cwd=REPO,
                   capture_output=True, timeout=300)
    proc = subprocess.Popen(cli + small_flags(tmp_path / "killed", steps), env=env(), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = tmp_path / "killed" / "checkpoints" / "step-00000010"
    deadline = time.time() + 240
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = latest_checkpoint(tmp_path / "killed")
    assert killed_at is not None and killed_at.step < steps, "the run finished before it could be killed"
    subprocess.run(cli + ["--resume", str(tmp_path / "killed"), "--no-progress"], check=True, env=env(), cwd=REPO,
                   capture_output=True, timeout=300)
    assert_same_weights(final_weights(tmp_path / "full"), final_weights(tmp_path / "killed"))
    assert losses(tmp_path / "full") == losses(tmp_path / "killed")


# --------------------------------------------------------------------------- the trainer's paths


def test_gradient_accumulation_equals_one_big_batch(tmp_path):
    """4 micro-batches of 2 windows = 1 batch of 8 (fp32, epoch sampling: the same windows per step)."""
    common = dict(max_steps=3, eval_interval=100, sampling="epoch")
    big = pretrain(small_cfg(tmp_path / "big", batch_size=8, **common), progress=False, log=quiet)
    acc = pretrain(small_cfg(tmp_path / "acc", batch_size=2, global_batch_tokens=8 * 32, **common), progress=False,
                   log=quiet)
    assert big.tokens == acc.tokens == 3 * 8 * 32
    a, b = final_weights(tmp_path / "big"), final_weights(tmp_path / "acc")
    start = initial_weights(tmp_path / "big")
    assert any(not torch.allclose(a[n], start[n]) for n in a)
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-5, rtol=1e-4), name


def test_bf16_autocast_trains_with_float32_weights(tmp_path):
    fp32 = pretrain(small_cfg(tmp_path / "fp32", max_steps=4, eval_interval=4), progress=False, log=quiet)
    bf16 = pretrain(small_cfg(tmp_path / "bf16", max_steps=4, eval_interval=4, precision="bf16"), progress=False,
                    log=quiet)
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["precision"] == "bf16-autocast"
    weights = final_weights(tmp_path / "bf16")
    assert all(t.dtype == torch.float32 for t in weights.values())  # autocast keeps float32 master weights
    assert all(torch.isfinite(t).all() for t in weights.values())
    # Same data, same init: bf16's rounding moves the losses a little, not a lot.
    for a, b in zip(fp32.history, bf16.history):
        assert b["val_loss"] == pytest.approx(a["val_loss"], abs=0.05)
    assert bf16.mfu is not None and 0 < bf16.mfu


def test_torch_compile_traces_the_llama_model(tmp_path, monkeypatch):
    """torch.compile (dynamo's graph capture; aot_eager keeps the test free of a C++ build) runs the rotary,
    grouped-query model without falling back, and computes what eager mode does."""
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda module, **kw: real_compile(module, backend="aot_eager"))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="torch.compile failed")
        compiled = pretrain(small_cfg(tmp_path / "c", max_steps=3, eval_interval=3, compile=True), progress=False,
                            log=quiet)
    assert pretrain(small_cfg(tmp_path / "e", max_steps=3, eval_interval=3), progress=False, log=quiet).step == 3
    assert compiled.step == 3
    a, b = final_weights(tmp_path / "c"), final_weights(tmp_path / "e")
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-5, rtol=1e-4), name


def test_ddp_two_processes_equal_one_process(tmp_path):
    """torchrun with 2 gloo processes x batch 4 == one process x batch 8 (fp32, no dropout)."""

    def flags(out: Path, batch: int) -> list[str]:
        f = small_flags(out, 4, eval_interval=4)
        f[f.index("--batch-size") + 1] = str(batch)
        return f

    subprocess.run([sys.executable, "-m", "gptlab", "pretrain", *flags(tmp_path / "single", 8)],
                   check=True, env=env(), cwd=REPO, capture_output=True, timeout=300)
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "gptlab", "pretrain", *flags(tmp_path / "ddp", 4)],
        env=env(), cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    a, b = final_weights(tmp_path / "single"), final_weights(tmp_path / "ddp")
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-5, rtol=1e-4), name
    start = initial_weights(tmp_path / "single")
    assert any(not torch.allclose(a[n], start[n]) for n in a), "the runs did not train"
    assert [r[2] for r in losses(tmp_path / "single")] == pytest.approx(
        [r[2] for r in losses(tmp_path / "ddp")], rel=1e-5)


# --------------------------------------------------------------------------- configuration


LLAMA_TABLE = """
preset = "gpt-nano"
data = "the-verdict"
tokenizer = "char"
batch_size = 4
block_size = 32
eval_batches = 2
sample_tokens = 8
precision = "fp32"
max_steps = 2
eval_interval = 2

[model]
emb_dim = 32
n_heads = 4
n_kv_heads = 1
n_layers = 2
ff_dim = 64
context_length = 32
norm = "rmsnorm"
positions = "rope"
mlp = "gated"
activation = "silu"
fused_qkv = false
qkv_bias = false
proj_bias = false
mlp_bias = false
drop_rate = 0.0
rope_theta = 500000

[model.rope_scaling]
rope_type = "linear"
factor = 2.0
"""


def test_toml_model_table_selects_the_llama_design_and_resumes(tmp_path):
    cfg_file = tmp_path / "llama.toml"
    cfg_file.write_text(LLAMA_TABLE)
    cfg, _ = resolve_run_config({"out": str(tmp_path / "run")}, str(cfg_file))
    assert cfg.model["rope_theta"] == 500000.0 and isinstance(cfg.model["rope_theta"], float)
    pretrain(cfg, progress=False, log=quiet)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["model"]
    assert saved["rope_scaling"] == {"rope_type": "linear", "factor": 2.0}
    assert saved["n_kv_heads"] == 1 and saved["positions"] == "rope"
    # Resuming reads the saved config back (the rope_scaling dict included) and must find it unchanged.
    cfg, run_dir = resolve_run_config({"max_steps": 4}, None, str(tmp_path / "run"))
    assert pretrain(cfg, resume=run_dir, progress=False, log=quiet).step == 4
    # Built from a GPT-2 preset by the table alone, it exports as a Llama (scaled RoPE, one kv head) too.
    transformers = pytest.importorskip("transformers")
    assert main(["export", str(run_dir), "--out", str(tmp_path / "hf")]) == 0
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").float().eval()
    assert type(theirs).__name__ == "LlamaForCausalLM"
    assert theirs.config.num_key_value_heads == 1
    # transformers 5 gathers theta and scaling into rope_parameters; 4.x kept rope_theta and rope_scaling.
    rope = getattr(theirs.config, "rope_parameters", None) or {
        "rope_theta": theirs.config.rope_theta, **(theirs.config.rope_scaling or {})}
    assert rope["rope_theta"] == 500000.0 and rope["factor"] == 2.0
    ours, _ = load_run(run_dir, "latest")
    ids = torch.arange(30)[None] % ours.cfg.vocab_size
    with torch.no_grad():
        assert torch.allclose(theirs(ids).logits, ours.eval()(ids), atol=1e-4)


@pytest.mark.parametrize("line, pattern", [
    ('qk_norm = "false"', r"llama.toml: model field 'qk_norm' expects true or false"),
    ("n_kv_heads = 1.5", r"llama.toml: model field 'n_kv_heads' expects an integer or none"),
    ("n_kv_head = 1", r"llama.toml: unknown GPTConfig field 'n_kv_head'"),
    ('rope_scaling = "llama3"', r"llama.toml: model field 'rope_scaling' expects a table"),
])
def test_mistyped_model_table_names_file_and_field(tmp_path, line, pattern):
    cfg_file = tmp_path / "llama.toml"
    cfg_file.write_text(f'preset = "llama-nano"\n[model]\n{line}\n')
    with pytest.raises(GptlabError, match=pattern):
        resolve_run_config({}, str(cfg_file))


def test_model_set_types_each_field():
    assert parse_model_value("n_kv_heads", "1") == 1
    assert parse_model_value("n_kv_heads", "none") is None and parse_model_value("head_size", "null") is None
    assert parse_model_value("qk_norm", "true") is True and parse_model_value("proj_bias", "False") is False
    assert parse_model_value("norm", "rmsnorm") == "rmsnorm" and parse_model_value("norm", '"rmsnorm"') == "rmsnorm"
    assert parse_model_value("rope_theta", "500000") == 500000.0
    assert parse_model_value("drop_rate", "0.0") == 0.0
    assert parse_model_value("rope_scaling", '{"rope_type": "linear", "factor": 4}') == {"rope_type": "linear",
                                                                                        "factor": 4}
    assert parse_model_value("rope_scaling", "none") is None
    with pytest.raises(GptlabError, match=r"--model-set n_kv_heads=two: n_kv_heads expects an integer or none"):
        parse_model_value("n_kv_heads", "two")
    with pytest.raises(GptlabError, match=r"--model-set qk_norm=maybe: qk_norm expects true or false"):
        parse_model_value("qk_norm", "maybe")
    with pytest.raises(GptlabError, match=r"--model-set n_layers=none: n_layers expects an integer$"):
        parse_model_value("n_layers", "none")
    with pytest.raises(GptlabError, match="unknown GPTConfig field 'kv_heads'"):
        parse_model_value("kv_heads", "2")
    assert model_overrides({"n_kv_heads": None, "rope_theta": 10}) == {"n_kv_heads": None, "rope_theta": 10.0}
    with pytest.raises(GptlabError, match=r"TrainConfig.model: model field 'qk_norm' expects true or false"):
        TrainConfig(model={"qk_norm": "false"}).validate()  # a config built in code is checked as well


def test_model_set_flags_reach_the_model(tmp_path, capsys):
    run = tmp_path / "mqa"
    flags = small_flags(run, 2, eval_interval=2) + ["--model-set", "n_kv_heads=1", "--model-set", "qk_norm=true",
                                                    "--model-set", "head_size=none", "--model-set", "mlp_bias=False"]
    assert main(["pretrain", *flags]) == 0
    model = json.loads((run / "config.json").read_text())["model"]
    assert (model["n_kv_heads"], model["qk_norm"], model["head_size"], model["mlp_bias"]) == (1, True, None, False)
    assert final_weights(run)["blocks.0.att.k_proj.weight"].shape == (8, 32)  # one key head of 8
    # Resuming with the same overrides is allowed (they compare equal to the saved ones).
    assert main(["pretrain", "--resume", str(run), "--max-steps", "3", "--no-progress",
                 "--model-set", "n_kv_heads=1", "--model-set", "qk_norm=true",
                 "--model-set", "head_size=none", "--model-set", "mlp_bias=False", *[
                     a for k, v in TINY.items() if k != "n_kv_heads" for a in ("--model-set", f"{k}={v}")]]) == 0
    capsys.readouterr()
    assert main(["pretrain", *small_flags(tmp_path / "bad", 2), "--model-set", "qk_norm=maybe"]) == 2
    assert "--model-set qk_norm=maybe" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_vocab_size_override_must_match_the_tokenizer(tmp_path):
    """The tokenizer sets the vocabulary; a model table's vocab_size is checked against it (it used to
    reach GPTConfig twice and fail with a TypeError)."""
    with pytest.raises(GptlabError, match=r"vocab_size=10: the tokenizer has 63 tokens"):
        pretrain(small_cfg(tmp_path / "v", max_steps=1, model={**TINY, "vocab_size": 10}), progress=False, log=quiet)
    assert not (tmp_path / "v").exists()
    same = pretrain(small_cfg(tmp_path / "p", max_steps=1, eval_interval=1, model={**TINY, "vocab_size": 63}),
                    progress=False, log=quiet)
    assert same.step == 1


def test_help_lists_the_llama_presets(capsys):
    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in ("llama-nano", "llama-micro", "llama-mini", "gpt-micro"):
        assert name in text


# --------------------------------------------------------------------------- FLOPs and weight decay


def _linear_weights(model: GPT) -> int:
    """Elements of every nn.Linear weight, a tied head counted again: what the forward multiplies by."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


@pytest.mark.parametrize("name, changes", [
    ("gpt-nano", {}),
    ("llama-nano", {}),
    ("llama-micro", {}),
    ("llama-nano", {"n_kv_heads": 1}),
    ("llama-nano", {"head_size": 48, "qk_norm": True}),  # q wider than the residual stream, Qwen3-like
    ("llama-nano", {"mlp": "standard", "ff_dim": 200}),
])
def test_flop_count_matches_the_models_matrices(name, changes):
    cfg = PRESETS[name].replace(vocab_size=97, **changes)
    with torch.device("meta"):
        model = GPT(cfg)
    assert matmul_params(cfg) == _linear_weights(model)
    assert flops_per_token(cfg, 64) == 6 * _linear_weights(model) + 12 * cfg.n_layers * cfg.q_dim * 64


def test_flop_count_of_gpt2_is_unchanged():
    """GPT-2's count is the textbook 6 * (V d + 12 L d^2) + 12 L d T (nanoGPT's estimate_mfu)."""
    cfg = PRESETS["gpt2"]
    d, L, V, T = cfg.emb_dim, cfg.n_layers, cfg.vocab_size, 1024
    assert flops_per_token(cfg, T) == 6 * (V * d + 12 * L * d * d) + 12 * L * d * T


def test_grouped_query_attention_counts_fewer_flops():
    mha = PRESETS["llama-micro"].replace(n_kv_heads=None)
    gqa = PRESETS["llama-micro"]
    saved = 2 * mha.n_layers * mha.emb_dim * (mha.kv_dim - gqa.kv_dim)  # the narrower k and v projections
    assert flops_per_token(mha, 256) - flops_per_token(gqa, 256) == 6 * saved


def test_rmsnorm_gains_get_no_weight_decay():
    model = GPT(PRESETS["llama-nano"].replace(vocab_size=97, qk_norm=True))
    decay, no_decay = param_groups(model, 0.1)
    no_decay_ids = {id(p) for p in no_decay["params"]}
    norms = [m for m in model.modules() if isinstance(m, RMSNorm)]
    assert len(norms) == 2 * 2 + 2 * 2 + 1  # two per block, q and k norms per block, the final one
    assert all(id(m.weight) in no_decay_ids for m in norms)
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.1
    decayed = {id(p) for p in decay["params"]}
    assert id(model.tok_emb.weight) in decayed and id(model.blocks[0].att.q_proj.weight) in decayed
    # Every parameter is in exactly one group, the tied head once.
    assert len(decayed) + len(no_decay_ids) == len({id(p) for p in model.parameters()})


# --------------------------------------------------------------------------- export


def test_export_of_a_llama_run_loads_in_transformers_with_the_same_logits(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    run = tmp_path / "run"
    assert main(["pretrain", *small_flags(run, 4, eval_interval=4)]) == 0
    out = tmp_path / "hf"
    assert main(["export", str(run), "--out", str(out)]) == 0
    hf_config = json.loads((out / "config.json").read_text())
    assert hf_config["architectures"] == ["LlamaForCausalLM"] and hf_config["num_key_value_heads"] == 2

    theirs = transformers.AutoModelForCausalLM.from_pretrained(out).float().eval()
    assert type(theirs).__name__ == "LlamaForCausalLM"
    ours, tokenizer = load_run(run, "best")
    ours = ours.float().eval()
    ids = torch.tensor([tokenizer.encode("I had always thought Jack")[:24]])
    with torch.no_grad():
        expected = ours(ids)
        got = theirs(ids).logits
    assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()

    capsys.readouterr()
    assert main(["generate", "--model", str(out), "--prompt", "I had", "--max-new-tokens", "8", "--json"]) == 0
    printed = capsys.readouterr().out
    assert printed.strip()

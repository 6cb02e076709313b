"""Fine-tuning the Llama/Qwen family: LoRA target names of both layouts, adapters, classify and instruct runs.

The models are tiny and random (GPT-2's vocabulary, two narrow layers), so each test takes seconds.
"""

from __future__ import annotations

import json
import random

import pytest
import torch
from torch import nn

from gptlab.app import main
from gptlab.errors import GptlabError
from gptlab.finetune.lora import (
    LoRALinear,
    apply_lora,
    load_adapter,
    lora_layers,
    lora_state_dict,
    merge_lora,
    save_adapter,
    unmerge_lora,
)
from gptlab.model import GPT, GPTConfig
from gptlab.model.config import modern

GPT2_TINY = GPTConfig(vocab_size=97, context_length=32, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0)
# Grouped-query attention (2 key/value heads for 4 query heads), separate q/k/v, a gated MLP, tied head.
LLAMA_TINY = modern(vocab_size=97, context_length=32, emb_dim=32, n_heads=4, n_kv_heads=2, n_layers=2,
                    ff_dim=48, tie_weights=True)
QWEN3_TINY = LLAMA_TINY.replace(qk_norm=True, head_size=16)


def build(cfg: GPTConfig, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(cfg).eval()


def kinds(model: nn.Module) -> set[str]:
    """The wrapped layers, block numbers left out: {'att.q_proj', 'ff.up', 'out_head', ...}."""
    return {name.split(".", 2)[2] if name.startswith("blocks.") else name for name, _ in lora_layers(model)}


def randomize_b(model: nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, m in lora_layers(model):
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.05)


GPT2_ATTN = {"att.qkv", "att.out_proj"}
GPT2_FF = {"ff.fc", "ff.proj"}
LLAMA_QKV = {"att.q_proj", "att.k_proj", "att.v_proj"}
LLAMA_ATTN = LLAMA_QKV | {"att.out_proj"}
LLAMA_FF = {"ff.gate", "ff.up", "ff.down"}


@pytest.mark.parametrize(
    ("targets", "gpt2", "llama"),
    [
        ("all", GPT2_ATTN | GPT2_FF | {"out_head"}, LLAMA_ATTN | LLAMA_FF | {"out_head"}),
        ("attn", GPT2_ATTN, LLAMA_ATTN),
        ("qkv", {"att.qkv"}, LLAMA_QKV),
        ("ff", GPT2_FF, LLAMA_FF),
        ("attn,ff", GPT2_ATTN | GPT2_FF, LLAMA_ATTN | LLAMA_FF),
        ("head", {"out_head"}, {"out_head"}),
        ("o", {"att.out_proj"}, {"att.out_proj"}),
        ("q,v", None, {"att.q_proj", "att.v_proj"}),
        ("k", None, {"att.k_proj"}),
        ("gate,up,down", None, LLAMA_FF),
    ],
)
def test_aliases_name_the_layers_of_each_layout(targets, gpt2, llama):
    for cfg, want in ((GPT2_TINY, gpt2), (LLAMA_TINY, llama)):
        model = build(cfg)
        if want is None:  # a name only the Llama layout has
            with pytest.raises(GptlabError, match="match no linear layer"):
                apply_lora(model, rank=2, alpha=2, targets=targets)
            continue
        apply_lora(model, rank=2, alpha=2, targets=targets)
        assert kinds(model) == want, (cfg.norm, targets)
        # Every block is adapted, not the first one only.
        assert len(lora_layers(model)) == sum(k != "out_head" for k in want) * cfg.n_layers + ("out_head" in want)


def test_llama_count_is_rank_times_in_plus_out_per_layer():
    model = build(LLAMA_TINY)
    n = apply_lora(model, rank=4, alpha=8, targets="all")
    e, h, kv, f, vocab = 32, 32, 16, 48, 97  # width, query width, key/value width (2 heads of 8), ff, vocab
    per_block = (e + h) + (e + kv) + (e + kv) + (h + e) + (e + f) + (e + f) + (f + e)
    assert n == 4 * (2 * per_block + (e + vocab))
    assert all(m.splits == 1 for _, m in lora_layers(model))  # separate projections: one adapter each


def test_targets_that_match_nothing_are_one_line_errors_and_change_nothing():
    model = build(GPT2_TINY)
    with pytest.raises(GptlabError) as info:
        apply_lora(model, rank=2, alpha=2, targets="q,attn")
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("--lora-targets: q (blocks.*.att.q_proj) match no linear layer")
    assert "its linear layers: blocks.*.att.qkv, blocks.*.att.out_proj, blocks.*.ff.fc, blocks.*.ff.proj, out_head" in msg
    assert not lora_layers(model) and all(p.requires_grad for p in model.parameters())

    llama = build(LLAMA_TINY)
    with pytest.raises(GptlabError, match=r"blocks\.\*\.ff\.fc; nothing\.\* match no linear layer .*blocks\.\*\.ff\.gate"):
        apply_lora(llama, rank=2, alpha=2, targets=["blocks.*.ff.fc", "nothing.*", "ff"])
    assert not lora_layers(llama)


@pytest.mark.parametrize(("cfg", "targets"), [(LLAMA_TINY, "attn,ff"), (QWEN3_TINY, "attn,ff"),
                                             (LLAMA_TINY.replace(tie_weights=False), "all")],
                         ids=["llama", "qwen3", "llama-untied-head"])
def test_zero_b_exact_then_merge_and_unmerge(cfg, targets):
    model = build(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    idx = torch.randint(0, 97, (2, 16))
    ref = model(idx)
    apply_lora(model, rank=4, alpha=16, targets=targets)
    assert torch.equal(model(idx), ref)  # B = 0: exactly the base model
    randomize_b(model)
    unmerged = model(idx)
    assert not torch.allclose(unmerged, ref)
    merge_lora(model)
    torch.testing.assert_close(model(idx), unmerged, atol=1e-5, rtol=0)
    unmerge_lora(model)
    torch.testing.assert_close(model(idx), unmerged, atol=1e-5, rtol=0)
    for k, v in before.items():
        torch.testing.assert_close(model.state_dict()[k], v, atol=1e-6, rtol=0)


def test_merging_an_adapter_on_a_tied_head_is_refused():
    # The llama-* presets tie the head to the token embedding: folding the head's update in would
    # change the embedding as well, so the model would no longer compute what the adapters did.
    model = build(LLAMA_TINY)
    apply_lora(model, rank=2, alpha=4, targets="all")
    randomize_b(model)
    emb = model.tok_emb.weight.clone()
    with pytest.raises(GptlabError, match="out_head, its weight is tied to tok_emb.weight"):
        merge_lora(model)
    assert not any(m.merged for _, m in lora_layers(model)) and torch.equal(model.tok_emb.weight, emb)


def test_llama_adapter_round_trip_and_wrong_base(tmp_path):
    model = build(QWEN3_TINY)
    apply_lora(model, rank=4, alpha=8, targets="attn,ff")
    randomize_b(model)
    idx = torch.randint(0, 97, (1, 12))
    want = model(idx)
    save_adapter(model, tmp_path / "adapter")
    meta = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    # Only the patterns that found layers are kept: the GPT-2 names of the aliases would match nothing.
    assert meta["targets"] == ["blocks.*.att.q_proj", "blocks.*.att.k_proj", "blocks.*.att.v_proj",
                               "blocks.*.att.out_proj", "blocks.*.ff.gate", "blocks.*.ff.up", "blocks.*.ff.down"]
    fresh = build(QWEN3_TINY)
    load_adapter(fresh, tmp_path / "adapter")
    assert torch.equal(fresh(idx), want)
    for k, v in lora_state_dict(model).items():
        assert torch.equal(lora_state_dict(fresh)[k], v)
    with pytest.raises(GptlabError, match="different base model"):
        load_adapter(build(QWEN3_TINY, seed=1), tmp_path / "adapter")
    with pytest.raises(GptlabError, match="different base model"):
        load_adapter(build(LLAMA_TINY), tmp_path / "adapter")


def test_fused_qkv_with_grouped_query_attention_gets_one_adapter():
    # Fused q/k/v of unequal widths (32 + 16 + 16): equal thirds would not be query, key and value.
    cfg = LLAMA_TINY.replace(fused_qkv=True)
    model = build(cfg)
    idx = torch.randint(0, 97, (1, 8))
    apply_lora(model, rank=2, alpha=4, targets="qkv")
    layer = model.blocks[0].att.qkv
    assert isinstance(layer, LoRALinear) and layer.splits == 1 and layer.out_features == 64
    randomize_b(model)
    out = model(idx)
    merge_lora(model)
    torch.testing.assert_close(model(idx), out, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------- classification


def toy_reviews(n: int = 120, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = ["yes", "no"][i % 2]
        word = rng.choice(["great", "lovely", "superb"] if label == "yes" else ["awful", "broken", "terrible"])
        rows.append((f"{rng.choice(['this is', 'it was', 'so'])} {word}", label))
    return rows


@pytest.fixture(scope="module")
def llama_base(tmp_path_factory, tiny_llama_folder):
    return tiny_llama_folder(tmp_path_factory.mktemp("llama") / "base")


@pytest.fixture(scope="module")
def reviews(tmp_path_factory):
    path = tmp_path_factory.mktemp("reviews") / "reviews.csv"
    path.write_text("text,label\n" + "".join(f"{t},{lab}\n" for t, lab in toy_reviews()))
    return path


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_classify_train_and_predict_on_llama(capsys, tmp_path, llama_base, reviews):
    out = tmp_path / "clf"
    code, _, err = run(capsys, "classify", "train", "--data", reviews, "--model", llama_base, "--out", out,
                       "--trainable", "all", "--epochs", "3", "--lr", "5e-3", "--threads", "1", "--no-progress",
                       "--json")
    assert code == 0, err
    assert json.loads((out / "results.json").read_text())["test"]["accuracy"] >= 0.9
    code, text, err = run(capsys, "classify", "predict", "--model", out, "so superb", "it was broken", "--json")
    assert code == 0, err
    assert [json.loads(line)["label"] for line in text.splitlines()] == ["yes", "no"]


def test_classify_lora_and_last_block_on_llama(tmp_path, llama_base):
    from gptlab.finetune.classify.config import ClassifyConfig
    from gptlab.finetune.classify.data import LabeledTexts, balanced_split
    from gptlab.finetune.classify.predict import classify_texts
    from gptlab.finetune.classify.store import load_classifier
    from gptlab.finetune.classify.train import train_classifier

    texts, labels = zip(*toy_reviews())
    splits = balanced_split(LabeledTexts(list(texts), list(labels), "toy"), seed=1, balance=False)
    out = tmp_path / "lora"
    cfg = ClassifyConfig(model=llama_base, trainable="lora", lora_rank=4, lora_alpha=8, epochs=3, batch_size=8,
                         lr=5e-3, threads=1)
    r = train_classifier(cfg, splits, out, progress=False, log=lambda m: None)
    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert "blocks.*.att.q_proj" in adapter["targets"] and "blocks.*.ff.gate" in adapter["targets"]
    model, tok, names, meta = load_classifier(out)
    preds = [p["label"] for p in classify_texts(model, tok, names, meta, splits.test.texts)]
    assert sum(p == y for p, y in zip(preds, splits.test.labels)) / len(preds) == r["test"]["accuracy"]

    # The book's default scope: the last block and the final (RMS) norm train, the rest stays put.
    r = train_classifier(ClassifyConfig(model=llama_base, trainable="last", epochs=1, lr=1e-3, threads=1), splits,
                         None, progress=False, log=lambda m: None)
    start, tuned = GPT.from_pretrained(llama_base), r["model"].gpt
    assert torch.equal(tuned.blocks[0].att.q_proj.weight, start.blocks[0].att.q_proj.weight)
    assert torch.equal(tuned.tok_emb.weight, start.tok_emb.weight)
    assert not torch.equal(tuned.blocks[1].ff.gate.weight, start.blocks[1].ff.gate.weight)
    assert not torch.equal(tuned.final_norm.weight, start.final_norm.weight)


# ---------------------------------------------------------------------------- instruction tuning


@pytest.fixture(scope="module")
def instructions(tmp_path_factory):
    words = ["apple", "river", "stone", "cloud", "tiger"]
    entries = [{"instruction": "Repeat the word.", "input": words[i % 5], "output": f"{words[i % 5]}."}
               for i in range(40)]
    path = tmp_path_factory.mktemp("instruct") / "words.json"
    path.write_text(json.dumps(entries))
    return path


def test_instruct_train_then_generate_on_llama(capsys, tmp_path, tiny_llama_folder, instructions):
    from gptlab.model.load import load_model

    base = tiny_llama_folder(tmp_path / "base", context_length=96)
    run_dir = tmp_path / "run"
    code, out, err = run(capsys, "instruct", "train", "--data", instructions, "--model", base, "--batch-size", "4",
                         "--lr", "3e-3", "--max-steps", "4", "--eval-interval", "2", "--sample-tokens", "4",
                         "--precision", "fp32", "--out", run_dir, "--no-progress", "--json")
    assert code == 0, err
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [h["val_loss"] for h in history if "val_loss" in h]
    assert losses[-1] < losses[0]
    (tuned, _), (start, _) = load_model(run_dir), load_model(base)
    assert tuned.cfg.positions == "rope" and tuned.pos_emb is None
    assert not torch.equal(tuned.blocks[0].att.k_proj.weight, start.blocks[0].att.k_proj.weight)
    code, out, err = run(capsys, "generate", "--model", run_dir, "--prompt", "Repeat the word.",
                         "--max-new-tokens", "3")
    assert code == 0, err


def test_instruct_lora_on_llama_exports_merged_weights_and_adapter(tmp_path, tiny_llama_folder, instructions):
    from safetensors.torch import load_file

    from gptlab.finetune.instruct.train import InstructConfig, finetune, instruct_train_config
    from gptlab.model.load import load_model

    base = tiny_llama_folder(tmp_path / "base", context_length=96, qk_norm=True)
    icfg = InstructConfig(data=str(instructions), model=base, lora_rank=2, lora_alpha=4.0)  # attn,ff
    tcfg = instruct_train_config({"batch_size": 4, "lr": 3e-3, "eval_interval": 3, "max_steps": 3,
                                  "sample_tokens": 4, "precision": "fp32", "device": "cpu",
                                  "out": str(tmp_path / "lora")})
    result = finetune(icfg, tcfg, progress=False, log=lambda m: None)
    weights = load_file(str(result.run_dir / "checkpoints" / "best" / "model.safetensors"))
    assert not any("lora_" in k for k in weights)
    (tuned, _), (start, _) = load_model(result.run_dir), load_model(base)
    assert torch.equal(tuned.tok_emb.weight, start.tok_emb.weight)  # tied head: not a target
    for name in ("att.q_proj", "att.v_proj", "att.out_proj", "ff.gate", "ff.up", "ff.down"):
        a = tuned.blocks[1].get_submodule(name).weight
        assert not torch.equal(a, start.blocks[1].get_submodule(name).weight), name
    adapter = json.loads((result.run_dir / "adapter" / "adapter_config.json").read_text())
    assert adapter["rank"] == 2 and "blocks.*.ff.down" in adapter["targets"]
    # The adapter applied to the base gives the merged run's model.
    again, _ = load_model(base)
    load_adapter(again, result.run_dir / "adapter")
    merge_lora(again)
    idx = torch.randint(0, 50257, (1, 10))
    torch.testing.assert_close(again(idx), tuned(idx), atol=1e-5, rtol=0)

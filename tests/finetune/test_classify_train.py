"""Fine-tuning end to end on a tiny model: learning, the saved folder, reload, LoRA adapters."""

from __future__ import annotations

import json
import random

import pytest
import torch

from gptlab.errors import GptlabError
from gptlab.finetune.classify.config import ClassifyConfig
from gptlab.finetune.classify.data import LabeledTexts, balanced_split
from gptlab.finetune.classify.predict import classify_texts
from gptlab.finetune.classify.store import load_classifier
from gptlab.finetune.classify.train import train_classifier
from gptlab.model import GPT, GPTConfig

# GPT-2's vocabulary, 16 wide, untied, no query/key/value bias (saved by the tiny_gpt_folder fixture).
TINY_BASE = dict(emb_dim=16, qkv_bias=False, tie_weights=False)
TINY = GPTConfig(vocab_size=50257, context_length=64, emb_dim=16, n_heads=2, n_layers=2, drop_rate=0.0)


def toy_data(n: int = 240, seed: int = 0) -> LabeledTexts:
    """Three classes told apart by a topic word somewhere in the sentence."""
    rng = random.Random(seed)
    topics = {"sport": ["football", "tennis", "goal"], "food": ["pizza", "bread", "soup"], "tech": ["laptop", "phone", "code"]}
    filler = ["the", "a", "today", "I", "really", "like", "this", "my", "friend", "said", "about", "new"]
    texts, labels = [], []
    for i in range(n):
        label = list(topics)[i % 3]
        words = rng.sample(filler, 2)
        words.insert(rng.randrange(3), rng.choice(topics[label]))
        texts.append(" ".join(words))
        labels.append(label)
    return LabeledTexts(texts, labels, "toy")


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_gpt_folder):
    return tiny_gpt_folder(tmp_path_factory.mktemp("base") / "tiny", **TINY_BASE)


def fast_cfg(base, **kw):
    return ClassifyConfig(**{"model": base, "trainable": "all", "epochs": 4, "batch_size": 8, "lr": 5e-3, "threads": 1, **kw})


def test_learns_saves_and_reloads(base, tmp_path):
    splits = balanced_split(toy_data(), seed=1, balance=False)
    out = tmp_path / "clf"
    r = train_classifier(fast_cfg(base), splits, out, {"data": "toy"}, progress=False, log=lambda m: None)
    assert r["test"]["accuracy"] >= 0.9 and r["val"]["accuracy"] >= 0.9
    assert len(r["history"]) == 4 and 1 <= r["best_epoch"] <= 4
    for f in ("classifier.json", "labels.json", "tokenizer.json", "model.safetensors", "metrics.jsonl",
              "loss.png", "accuracy.png", "results.json"):
        assert (out / f).is_file(), f
    assert json.loads((out / "labels.json").read_text()) == {"labels": ["food", "sport", "tech"]}
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 4
    meta = json.loads((out / "classifier.json").read_text())
    assert meta["best"]["epoch"] == r["best_epoch"]
    # The folder holds the best epoch's weights: reloading gives the same test predictions.
    model, tok, labels, meta = load_classifier(out)
    preds = classify_texts(model, tok, labels, meta, splits.test.texts)
    again = r["model"]
    with torch.no_grad():
        ref = classify_texts(again, tok, labels, meta, splits.test.texts)
    assert [p["label"] for p in preds] == [p["label"] for p in ref]
    acc = sum(p["label"] == y for p, y in zip(preds, splits.test.labels)) / len(preds)
    assert acc == r["test"]["accuracy"]
    assert abs(sum(preds[0]["probabilities"].values()) - 1) < 1e-4


def test_last_block_scope_leaves_the_rest_untouched(base, tmp_path):
    splits = balanced_split(toy_data(60), seed=2, balance=False)
    r = train_classifier(
        ClassifyConfig(model=base, trainable="last", epochs=1, lr=1e-3, threads=1), splits, None,
        progress=False, log=lambda m: None,
    )
    start = GPT.from_pretrained(base)
    tuned = r["model"].gpt
    assert torch.equal(tuned.blocks[0].att.qkv.weight, start.blocks[0].att.qkv.weight)
    assert torch.equal(tuned.tok_emb.weight, start.tok_emb.weight)
    assert not torch.equal(tuned.blocks[1].att.qkv.weight, start.blocks[1].att.qkv.weight)


def test_lora_adapter_folder_and_wrong_base(base, tmp_path, tiny_gpt_folder):
    splits = balanced_split(toy_data(), seed=3, balance=False)
    out = tmp_path / "lora"
    cfg = fast_cfg(base, lora_rank=4, lora_alpha=8)
    cfg.trainable = "lora"
    r = train_classifier(cfg, splits, out, progress=False, log=lambda m: None)
    assert (out / "adapter" / "adapter.safetensors").is_file() and not (out / "model.safetensors").exists()
    assert (out / "head.safetensors").is_file()
    assert (out / "adapter" / "adapter.safetensors").stat().st_size < 200_000  # adapters only, not the base
    model, tok, labels, meta = load_classifier(out)
    preds = [p["label"] for p in classify_texts(model, tok, labels, meta, splits.test.texts)]
    assert sum(p == y for p, y in zip(preds, splits.test.labels)) / len(preds) == r["test"]["accuracy"]
    other = tiny_gpt_folder(tmp_path / "other", seed=1, **TINY_BASE)
    with pytest.raises(GptlabError, match="different base model"):
        load_classifier(out, base=other)


def test_unknown_label_in_validation_is_refused(base):
    train = toy_data(30)
    val = LabeledTexts(["a pizza"], ["drinks"], "val.csv", [2])
    from gptlab.finetune.classify.data import Splits

    with pytest.raises(GptlabError, match="unknown label 'drinks'"):
        train_classifier(fast_cfg(base), Splits(train, val, train), None, progress=False, log=lambda m: None)


def test_language_model_adaptation_learns_the_texts(base):
    from gptlab.finetune.classify.adapt import adapt_language_model
    from gptlab.tokenizer import get_tokenizer

    torch.manual_seed(0)
    gpt = GPT.from_pretrained(base)
    texts = toy_data(40).texts
    losses = adapt_language_model(gpt, get_tokenizer("gpt2"), texts, epochs=3, lr=1e-2, batch_size=8,
                                  max_length=32, bf16=False, seed=0)
    assert len(losses) == 3 and losses[-1] < losses[0] - 1.0
    cfg = fast_cfg(base, lm_epochs=1)
    cfg.trainable = "lora"
    with pytest.raises(GptlabError, match="lm-epochs"):
        cfg.validate()


def test_ensemble_averages_probabilities():
    from gptlab.finetune.classify.model import EnsembleClassifier, GPTClassifier

    torch.manual_seed(0)
    members = [GPTClassifier(GPT(TINY), 3, seed=s).eval() for s in (1, 2, 3)]
    ids = torch.randint(0, 50257, (4, 9))
    with torch.no_grad():
        probs = torch.stack([m(ids).softmax(-1) for m in members]).mean(0)
        out = EnsembleClassifier(members)(ids)
        single = EnsembleClassifier(members[:1])(ids)
    assert torch.allclose(out.exp(), probs, atol=1e-6)
    assert torch.allclose(single, members[0](ids).log_softmax(-1), atol=1e-6)
    with pytest.raises(GptlabError, match="same classes"):
        EnsembleClassifier([members[0], GPTClassifier(GPT(TINY), 2)])


def test_ensemble_trains_saves_and_reloads(base, tmp_path):
    from gptlab.finetune.classify.model import EnsembleClassifier

    splits = balanced_split(toy_data(120), seed=4, balance=False)
    quiet = dict(progress=False, log=lambda m: None)
    single = train_classifier(fast_cfg(base, epochs=2), splits, None, **quiet)
    out = tmp_path / "ens"
    r = train_classifier(fast_cfg(base, epochs=2, ensemble=3), splits, out, **quiet)
    # Member 1 is the single run (same seed, same base); the others use seed + 1, seed + 2.
    assert [m["seed"] for m in r["members"]] == [123, 124, 125]
    assert r["members"][0] == single["members"][0]
    heads = [m.gpt.out_head.weight for m in r["model"].members]
    assert not torch.equal(heads[0], heads[1]) and not torch.equal(heads[1], heads[2])
    assert isinstance(r["model"], EnsembleClassifier) and len(r["history"]) == 6
    assert [h["member"] for h in r["history"]] == [1, 1, 2, 2, 3, 3]
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 6
    for k in (2, 3):
        assert (out / "ensemble" / str(k) / "model.safetensors").is_file()
    meta = json.loads((out / "classifier.json").read_text())
    assert meta["ensemble"] == 3 and len(meta["members"]) == 3
    # Reloaded, the folder predicts what the trained ensemble predicts, probabilities included.
    model, tok, labels, meta = load_classifier(out)
    assert isinstance(model, EnsembleClassifier) and len(model.members) == 3
    got = classify_texts(model, tok, labels, meta, splits.test.texts)
    with torch.no_grad():
        ref = classify_texts(r["model"], tok, labels, meta, splits.test.texts)
    assert got == ref
    acc = sum(p["label"] == y for p, y in zip(got, splits.test.labels)) / len(got)
    assert acc == r["test"]["accuracy"]
    # A folder whose classifier.json counts fewer members (an interrupted run) loads those only.
    meta_file = out / "classifier.json"
    meta_file.write_text(json.dumps({**json.loads(meta_file.read_text()), "ensemble": 2}))
    assert len(load_classifier(out)[0].members) == 2
    meta_file.write_text(json.dumps({**json.loads(meta_file.read_text()), "ensemble": 0}))
    with pytest.raises(GptlabError, match="'ensemble' must be a positive integer"):
        load_classifier(out)


def test_lora_ensemble_folder(base, tmp_path):
    splits = balanced_split(toy_data(90), seed=5, balance=False)
    out = tmp_path / "lora-ens"
    cfg = fast_cfg(base, epochs=1, ensemble=2, lora_rank=2)
    cfg.trainable = "lora"
    r = train_classifier(cfg, splits, out, progress=False, log=lambda m: None)
    assert (out / "ensemble" / "2" / "adapter" / "adapter.safetensors").is_file()
    assert (out / "ensemble" / "2" / "head.safetensors").is_file()
    model, tok, labels, meta = load_classifier(out)
    got = [p["label"] for p in classify_texts(model, tok, labels, meta, splits.test.texts)]
    assert sum(p == y for p, y in zip(got, splits.test.labels)) / len(got) == r["test"]["accuracy"]


def test_ensemble_must_be_positive(base):
    with pytest.raises(GptlabError, match="--ensemble must be at least 1"):
        fast_cfg(base, ensemble=0).validate()


def test_out_dir_is_never_replaced_by_surprise(base, tmp_path):
    splits = balanced_split(toy_data(30), seed=6, balance=False)
    quiet = dict(progress=False, log=lambda m: None)
    out = tmp_path / "clf"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(GptlabError, match=r"folder exists and is not empty"):
        train_classifier(fast_cfg(base, epochs=1), splits, out, **quiet)
    with pytest.raises(GptlabError, match=r"not a classifier folder"):
        train_classifier(fast_cfg(base, epochs=1), splits, out, overwrite=True, **quiet)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    clf = tmp_path / "clf2"
    train_classifier(fast_cfg(base, epochs=1), splits, clf, **quiet)
    train_classifier(fast_cfg(base, epochs=1, seed=5), splits, clf, overwrite=True, **quiet)
    assert json.loads((clf / "classifier.json").read_text())["train_config"]["seed"] == 5


def test_interrupted_runs_keep_finished_members_only(base, tmp_path, monkeypatch):
    from gptlab.finetune.classify import train as train_mod

    splits = balanced_split(toy_data(30), seed=7, balance=False)
    quiet = dict(progress=False, log=lambda m: None)
    real_fit = train_mod.fit_member

    def fit_until(stop_member: int):
        def fit(model, cfg, seed, data, bf16, member, *args):
            if member == stop_member:
                raise KeyboardInterrupt
            return real_fit(model, cfg, seed, data, bf16, member, *args)
        return fit

    # Interrupted before any weights were saved: no folder is left behind.
    monkeypatch.setattr(train_mod, "fit_member", fit_until(0))
    with pytest.raises(KeyboardInterrupt):
        train_classifier(fast_cfg(base, epochs=1, ensemble=2), splits, tmp_path / "a" / "clf", **quiet)
    assert not (tmp_path / "a" / "clf").exists()
    # Interrupted during member 2: member 1 stays, and the folder loads as a classifier of one.
    monkeypatch.setattr(train_mod, "fit_member", fit_until(1))
    with pytest.raises(KeyboardInterrupt):
        train_classifier(fast_cfg(base, epochs=1, ensemble=2), splits, tmp_path / "b", **quiet)
    model, *_ = load_classifier(tmp_path / "b")
    assert not hasattr(model, "members")


def test_training_split_with_a_single_class(base):
    from gptlab.finetune.classify.data import Splits

    train = LabeledTexts(["a pizza", "some bread"], ["food", "food"], "mine.csv")
    test = LabeledTexts(["a goal"], ["sport"], "mine.csv")
    with pytest.raises(GptlabError, match=r"mine.csv: the training split got a single class \('food'\) "
                                          r"\(2 train / 1 val / 1 test examples\)"):
        train_classifier(fast_cfg(base), Splits(train, test, test), None, progress=False, log=lambda m: None)


@pytest.mark.parametrize("field,value,message", [
    ("lora_rank", 0, "--lora-rank must be at least 1"),
    ("lora_alpha", -1.0, "--lora-alpha must be a positive number"),
    ("lr", float("nan"), "--lr must be a positive number"),
    ("lm_lr", float("inf"), "--lm-lr must be a positive number"),
    ("warmup_frac", -0.1, "--warmup must be"),
    ("drop_rate", 1.0, "--dropout must be at least 0 and below 1"),
    ("threads", 0, "--threads must be at least 1"),
    ("grad_clip", -1.0, "grad_clip must be 0 or more"),
])
def test_config_refuses_nonsense(base, field, value, message):
    with pytest.raises(GptlabError, match=message):
        fast_cfg(base, **{field: value}).validate()


def test_a_classifier_json_that_is_not_an_object(tmp_path):
    (tmp_path / "classifier.json").write_text("[]")
    with pytest.raises(GptlabError, match="not a classifier folder"):
        load_classifier(tmp_path)

"""A model folder brings its own tokenizer: Hugging Face folders of modern models, and gptlab's exports."""

from __future__ import annotations

import json

import pytest
import torch

from gptlab.app import main
from gptlab.errors import GptlabError
from gptlab.tokenizer.gguf_vocab import read_gguf_vocab

tokenizers = pytest.importorskip("tokenizers")


@pytest.fixture(scope="module")
def qwen_folder(tmp_path_factory, shared_data):
    """A tiny random Qwen3-style model with Qwen's real tokenizer files (tokenizer.json + config)."""
    from gptlab.model import GPT
    from gptlab.model.config import modern

    folder = tmp_path_factory.mktemp("qwen")
    payload, config = read_gguf_vocab(shared_data / "llama-vocab" / "ggml-vocab-qwen2.gguf")
    torch.manual_seed(0)
    GPT(modern(vocab_size=151936, context_length=64, emb_dim=16, n_heads=2, n_kv_heads=1, n_layers=1, ff_dim=32,
               qk_norm=True, tie_weights=True)).save_pretrained(folder)
    (folder / "tokenizer.json").write_text(json.dumps(payload), encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "chat_template": config["chat_template"]}),
        encoding="utf-8")
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [151645, 151643]}), encoding="utf-8")
    return folder


def test_load_model_reads_the_folders_tokenizer(qwen_folder):
    from gptlab.model import load_model

    _, tok = load_model(qwen_folder)
    ref = tokenizers.Tokenizer.from_file(str(qwen_folder / "tokenizer.json"))
    text = "Hello, world! 12345 héllo\n\n  def f(x): return x"
    assert tok.encode(text) == ref.encode(text, add_special_tokens=False).ids
    assert tok.eos_token == "<|im_end|>" and "<|im_start|>" in tok.chat_template
    assert tok.stop_ids == (151645, 151643)  # EOS first, then the end of text, from generation_config.json


def test_cli_generate_and_tokenize_with_the_folder(qwen_folder, capsys):
    assert main(["generate", "--model", str(qwen_folder), "--prompt", "Hello", "--max-new-tokens", "3",
                 "--temperature", "0"]) == 0
    capsys.readouterr()
    assert main(["tokenize", "--tokenizer", str(qwen_folder), "Hello world"]) == 0
    ref = tokenizers.Tokenizer.from_file(str(qwen_folder / "tokenizer.json"))
    assert capsys.readouterr().out.split() == [str(i) for i in ref.encode("Hello world").ids]


def test_modern_folder_without_a_tokenizer_is_refused(tmp_path):
    from gptlab.model import GPT, load_model
    from gptlab.model.config import modern

    GPT(modern(vocab_size=1000, context_length=32, emb_dim=16, n_heads=2, n_kv_heads=1, n_layers=1,
               ff_dim=32)).save_pretrained(tmp_path)
    with pytest.raises(GptlabError, match="has no tokenizer.json") as err:
        load_model(tmp_path)
    assert "\n" not in str(err.value)


def test_instruct_train_on_chat_data_uses_the_folders_template(qwen_folder, tmp_path, capsys):
    """No --chat-template: the model folder's tokenizer brings Qwen's; the run keeps it for generation."""
    chats = [{"messages": [{"role": "user", "content": f"Say {w}."}, {"role": "assistant", "content": w}]}
             for w in ["yes", "no", "maybe", "ok", "fine", "sure", "never", "always", "soon", "later"] * 2]
    data = tmp_path / "chats.jsonl"
    data.write_text("\n".join(json.dumps(c) for c in chats), encoding="utf-8")
    run = tmp_path / "run"
    assert main(["instruct", "train", "--model", str(qwen_folder), "--data", str(data), "--out", str(run),
                 "--max-steps", "2", "--batch-size", "2", "--eval-batches", "1", "--no-progress"]) == 0
    template = (run / "chat_template.jinja").read_text(encoding="utf-8")
    assert "<|im_start|>" in template
    from gptlab.model import load_model

    _, tok = load_model(run)
    assert tok.chat_template == template and tok.token_id("<|im_end|>") == 151645
    two = tmp_path / "two.jsonl"
    two.write_text("\n".join(json.dumps(c) for c in chats[:2]), encoding="utf-8")
    answers = tmp_path / "answers.json"
    assert main(["instruct", "generate", "--model", str(run), "--data", str(two), "--out", str(answers),
                 "--max-new-tokens", "2"]) == 0
    written = json.loads(answers.read_text(encoding="utf-8"))
    assert [e["messages"] for e in written] == [c["messages"] for c in chats[:2]]
    assert all(isinstance(e["model_response"], str) for e in written)

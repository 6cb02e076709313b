"""``instruct generate`` with a model's chat template: chat entries, instruction entries, end-of-turn, precedence."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gptlab.data.prompts import ALPACA, PromptStyle, save_style
from gptlab.errors import GptlabError
from gptlab.finetune.instruct.data import reference_answer
from gptlab.finetune.instruct.generate import entry_messages, generate_responses, prompt_format_for
from gptlab.data.chat_format import TemplateChat
from gptlab.tokenizer.chat_template import render_chat

IM_START, IM_END = 50257, 50258
QWEN = Path(os.environ.get("GPTLAB_DATA_DIR", "/work/shared/data")) / "llama-vocab/templates/Qwen-Qwen2.5-7B-Instruct.jinja"

CHATS = [
    {"messages": [{"role": "user", "content": "Name a color."}, {"role": "assistant", "content": "Blue."}]},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "2 + 2?"},
                  {"role": "assistant", "content": "4"}], "id": 7},
    {"messages": [{"role": "user", "content": "No answer given here."}]},
]
INSTRUCTIONS = [
    {"instruction": "Translate to French.", "input": "Good morning.", "output": "Bonjour."},
    {"instruction": "Name a color.", "input": "", "output": "Blue."},
]


class ForceAfter:
    """Wraps a model: after ``after`` new tokens (counted from each prefill), every row's next token is ``token``."""

    def __init__(self, model, token: int, after: int) -> None:
        self.model, self.token, self.after = model, token, after
        self.prompts: list[list[int]] = []
        self.calls = 0

    def __getattr__(self, name):
        return getattr(self.model, name)

    def to(self, *args, **kwargs):  # generate_responses keeps what .to()/.eval() return: keep the wrapper
        self.model.to(*args, **kwargs)
        return self

    def eval(self):
        self.model.eval()
        return self

    def __call__(self, idx, **kwargs):
        logits = self.model(idx, **kwargs)
        if idx.size(1) > 1:
            mask = kwargs.get("attention_mask")
            rows = idx.tolist() if mask is None else [
                [t for t, m in zip(r, mr) if m] for r, mr in zip(idx.tolist(), mask.tolist())]
            self.prompts.extend(rows)
            self.calls = 0
        self.calls += 1
        if self.calls > self.after:
            logits = logits.clone()
            logits[:, -1, self.token] = logits.abs().max() * 10 + 100
        return logits


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory, tiny_llama_folder):
    """(folder, model, tokenizer): a tiny Llama-design model whose tokenizer has Qwen 2.5's template."""
    from gptlab.model.load import load_model
    from gptlab.tokenizer import BPETokenizer, gpt2_tokenizer
    from gptlab.tokenizer.hf_writer import save_pretrained_tokenizer

    if not QWEN.is_file():
        pytest.skip(f"{QWEN} is not there (set GPTLAB_DATA_DIR)")
    g = gpt2_tokenizer()
    tok = BPETokenizer(g.mergeable_ranks, {**g.special_tokens, "<|im_start|>": IM_START, "<|im_end|>": IM_END},
                       name="chatml")
    tok.chat_template = QWEN.read_text(encoding="utf-8")
    tok.eos_token = "<|im_end|>"
    folder = tmp_path_factory.mktemp("chat-gen-model")
    tiny_llama_folder(folder, seed=5, vocab_size=50259, context_length=160)
    save_pretrained_tokenizer(tok, folder)
    model, tok = load_model(folder)
    return str(folder), model, tok


def _ids(tok, messages) -> list[int]:
    text = render_chat(tok.chat_template, messages, add_generation_prompt=True,
                       special_tokens={"bos_token": tok.bos_token, "eos_token": tok.eos_token,
                                       "pad_token": tok.pad_token})
    return tok.encode(text, allowed_special="all")


def _patch(monkeypatch, model, tok, after: int = 3) -> ForceAfter:
    import gptlab.model.load as load_mod

    forced = ForceAfter(model, IM_END, after)
    monkeypatch.setattr(load_mod, "load_model", lambda spec, dtype=None, **quantize: (forced, tok))
    return forced


def test_prompt_and_reference_of_entries():
    assert entry_messages(CHATS[1]) == CHATS[1]["messages"][:4]  # up to the last assistant message
    assert reference_answer(CHATS[1]) == "4" and reference_answer(CHATS[2]) is None
    assert entry_messages(CHATS[2]) == CHATS[2]["messages"]
    assert entry_messages(INSTRUCTIONS[0]) == [{"role": "user", "content": "Translate to French.\n\nGood morning."}]
    assert entry_messages(INSTRUCTIONS[1]) == [{"role": "user", "content": "Name a color."}]
    assert reference_answer(INSTRUCTIONS[0]) == "Bonjour."


def test_chat_entries_use_the_template_and_stop_at_im_end(tmp_path, monkeypatch, chat_model):
    folder, model, tok = chat_model
    forced = _patch(monkeypatch, model, tok)
    out = tmp_path / "answers.json"
    summary = generate_responses(folder, CHATS, out, batch_size=2, max_new_tokens=12, progress=False,
                                 log=lambda m: None)
    assert summary["generated"] == 3
    got = json.loads(out.read_text())
    for entry, result in zip(CHATS, got):
        ids = _ids(tok, entry_messages(entry))
        assert ids in forced.prompts  # exactly the template's prompt, special markers as their ids
        # Three tokens, then the forced <|im_end|> ends the answer (12 were allowed) and is not in it.
        assert result["model_response"] == tok.decode(model.generate(ids, 3)).strip()
        assert {k: result[k] for k in entry} == entry  # the entry (and its reference) travels unchanged


def test_instruction_entries_under_a_template_are_one_user_message(tmp_path, monkeypatch, chat_model):
    folder, model, tok = chat_model
    forced = _patch(monkeypatch, model, tok, after=2)
    generate_responses(folder, INSTRUCTIONS, tmp_path / "a.json", batch_size=1, max_new_tokens=6, progress=False,
                       log=lambda m: None)
    got = json.loads((tmp_path / "a.json").read_text())
    for entry, result in zip(INSTRUCTIONS, got):
        ids = _ids(tok, entry_messages(entry))
        assert ids in forced.prompts
        assert result["model_response"] == tok.decode(model.generate(ids, 2)).strip()


def test_style_and_prompt_style_win_over_the_template(tmp_path, monkeypatch, chat_model):
    folder, model, tok = chat_model
    assert isinstance(prompt_format_for(folder, tok), TemplateChat)
    assert prompt_format_for(folder, tok, "alpaca") == ALPACA
    run = tmp_path / "run"
    run.mkdir()
    style = PromptStyle("mine", "Q: {instruction}\nA:", "Q: {instruction}\nA:", ("Q:",))
    save_style(style, run)
    assert prompt_format_for(str(run), tok) == style
    forced = _patch(monkeypatch, model, tok)
    generate_responses(str(run), INSTRUCTIONS[1:], tmp_path / "s.json", max_new_tokens=4, progress=False,
                       log=lambda m: None)
    assert forced.prompts == [tok.encode_ordinary("Q: Name a color.\nA:")]
    # A GPT-2 tokenizer has no template: Alpaca, as before.
    from gptlab.tokenizer import gpt2_tokenizer

    assert prompt_format_for(folder, gpt2_tokenizer()) == ALPACA


def test_special_token_text_in_the_data_is_refused_before_generating(tmp_path, monkeypatch, chat_model):
    folder, model, tok = chat_model
    forced = _patch(monkeypatch, model, tok)
    bad = CHATS[:1] + [{"messages": [{"role": "user", "content": "x<|im_end|>"},
                                     {"role": "assistant", "content": "y"}]}]
    with pytest.raises(GptlabError, match=r"^entry 1: messages\[0\]\.content contains '<\|im_end\|>'"):
        generate_responses(folder, bad, tmp_path / "b.json", progress=False, log=lambda m: None)
    assert forced.prompts == [] and not (tmp_path / "b.json").exists()


def test_a_different_chat_data_set_is_not_continued(tmp_path, monkeypatch, chat_model):
    folder, model, tok = chat_model
    _patch(monkeypatch, model, tok)
    out = tmp_path / "r.json"
    generate_responses(folder, CHATS[:1], out, max_new_tokens=4, progress=False, log=lambda m: None)
    other = [{"messages": [{"role": "user", "content": "Other."}, {"role": "assistant", "content": "x"}]}]
    with pytest.raises(GptlabError, match="different entries"):
        generate_responses(folder, other, out, max_new_tokens=4, progress=False, log=lambda m: None)


def test_eval_scores_chat_answers_against_the_last_assistant_message(tmp_path, capsys):
    from gptlab.app import main
    from gptlab.finetune.instruct.judge import judge_prompt

    answers = tmp_path / "r.json"
    answers.write_text(json.dumps([{**CHATS[0], "model_response": "Blue."}, {**CHATS[1], "model_response": "5"}]))
    assert main(["instruct", "eval", "--responses", str(answers), "--json"]) == 0
    scored = json.loads((tmp_path / "r-scored.json").read_text())
    assert [e["scores"]["exact_match"] for e in scored["entries"]] == [1.0, 0.0]
    prompt = judge_prompt(scored["entries"][1])
    # the conversation before the last assistant message is the input; that message is the correct output
    assert "`system: Be brief.\nuser: Hi\nassistant: Hello!\nuser: 2 + 2?`" in prompt
    assert "correct output `4`" in prompt and "model response `5`" in prompt

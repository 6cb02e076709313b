"""Chat messages to prompts: the model's saved prompt style when it has one, else the plain format."""

from __future__ import annotations

import sys

import pytest

from gptlab.errors import GptlabError
from gptlab.serve.chat_format import PlainChat, chat_format_for

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Why?"}]


def test_plain_format():
    assert PlainChat().format_chat(MESSAGES) == "Be brief.\n\nUser: Hi\nAssistant: Hello!\nUser: Why?\nAssistant:"
    with pytest.raises(GptlabError, match="last message must be from the user"):
        PlainChat().format_chat(MESSAGES[:3])
    with pytest.raises(GptlabError, match="role"):
        PlainChat().format_chat([{"role": "bot", "content": "x"}])


def test_a_saved_style_is_used(tmp_path):
    prompts = pytest.importorskip("gptlab.finetune.prompts")
    assert isinstance(chat_format_for(tmp_path), PlainChat)  # no prompt_style.json: plain
    prompts.save_style(prompts.get_style("alpaca"), tmp_path)
    fmt = chat_format_for(tmp_path)
    assert fmt.name == "alpaca" and "### Instruction:" in fmt.stop
    text = fmt.format_chat([{"role": "user", "content": "Name a colour."}])
    assert text == prompts.get_style("alpaca").format("Name a colour.")
    assert chat_format_for(tmp_path, "phi3").format_chat([{"role": "user", "content": "x"}]).endswith("<|assistant|>\n")
    assert isinstance(chat_format_for(tmp_path, "plain"), PlainChat)


def test_works_without_the_prompts_module(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "gptlab.finetune.prompts", None)  # import now raises ImportError
    assert isinstance(chat_format_for(tmp_path), PlainChat)
    with pytest.raises(GptlabError, match="need gptlab.finetune.prompts"):
        chat_format_for(tmp_path, "alpaca")

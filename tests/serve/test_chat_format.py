"""Chat messages to prompts: the model's saved prompt style when it has one, else the plain format."""

from __future__ import annotations

import pytest

from gptlab.data.prompts import ALPACA, PromptStyle, save_style
from gptlab.errors import GptlabError
from gptlab.data.chat_format import PlainChat, chat_format_for

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Why?"}]

# The book's Alpaca prompt for an instruction without input, written out: not computed by the code under test.
ALPACA_COLOUR = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
    "\n\n### Instruction:\nName a colour.\n\n### Response:\n"
)


def test_plain_format():
    assert PlainChat().format_chat(MESSAGES) == "Be brief.\n\nUser: Hi\nAssistant: Hello!\nUser: Why?\nAssistant:"
    with pytest.raises(GptlabError, match="last message must be from the user"):
        PlainChat().format_chat(MESSAGES[:3])
    with pytest.raises(GptlabError, match="role"):
        PlainChat().format_chat([{"role": "bot", "content": "x"}])


def test_a_saved_style_is_used(tmp_path):
    assert isinstance(chat_format_for(tmp_path), PlainChat)  # no prompt_style.json: plain
    save_style(ALPACA, tmp_path)
    fmt = chat_format_for(tmp_path)
    assert fmt == ALPACA and "### Instruction:" in fmt.stop
    assert fmt.format_chat([{"role": "user", "content": "Name a colour."}]) == ALPACA_COLOUR
    assert chat_format_for(tmp_path, "phi3").format_chat([{"role": "user", "content": "x"}]) == "<|user|>\nx\n<|assistant|>\n"
    assert isinstance(chat_format_for(tmp_path, "plain"), PlainChat)


def test_a_saved_custom_style_formats_the_whole_chat(tmp_path):
    save_style(PromptStyle("qa", "Q: {instruction}\n{input}\nA:", "Q: {instruction}\nA:", ("Q:",), "\n"), tmp_path)
    fmt = chat_format_for(tmp_path)
    assert fmt.name == "qa" and fmt.stop == ("Q:",)
    assert fmt.format_chat(MESSAGES) == "Be brief.\n\nQ: Hi\nA:Hello!\nQ: Why?\nA:"


def test_a_model_that_is_not_a_folder_gets_the_plain_format(tmp_path):
    assert isinstance(chat_format_for(None), PlainChat)
    assert isinstance(chat_format_for(tmp_path / "missing"), PlainChat)


def test_a_bad_style_is_one_error_naming_the_flag(tmp_path):
    with pytest.raises(GptlabError, match="--style 'no-such-style'"):
        chat_format_for(tmp_path, "no-such-style")

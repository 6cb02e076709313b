"""Prompt styles: the book's Alpaca text character for character, Phi-3, user templates, saving and loading."""

from __future__ import annotations

import json

import pytest

from gptlab.data.prompts import ALPACA, PHI3, PromptStyle, get_style, load_style, save_style
from gptlab.errors import GptlabError


def book_format_input(entry: dict) -> str:
    # The book's chapter 7 format_input, typed in from the book.
    instruction_text = (
        f"Below is an instruction that describes a task. "
        f"Write a response that appropriately completes the request."
        f"\n\n### Instruction:\n{entry['instruction']}"
    )
    input_text = f"\n\n### Input:\n{entry['input']}" if entry["input"] else ""
    return instruction_text + input_text


BOOK_ENTRIES = [
    {"instruction": "Identify the correct spelling of the following word.", "input": "Ocassion",
     "output": "The correct spelling is 'Occasion.'"},
    {"instruction": "What is an antonym of 'complicated'?", "input": "",
     "output": "An antonym of 'complicated' is 'simple'."},
]


@pytest.mark.parametrize("entry", BOOK_ENTRIES)
def test_alpaca_is_the_books_text(entry):
    # The book trains on format_input(entry) + "\n\n### Response:\n" + output.
    assert ALPACA.format(entry["instruction"], entry["input"]) == book_format_input(entry) + "\n\n### Response:\n"


def test_alpaca_example_literal():
    assert ALPACA.format("Name a color.") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nName a color.\n\n### Response:\n"
    )


def test_phi3_as_the_books_exercise():
    assert PHI3.format("Identify the correct spelling of the following word.", "Ocassion") == (
        "<|user|>\nIdentify the correct spelling of the following word.\nOcassion\n<|assistant|>\n"
    )
    assert PHI3.format("Name a color.") == "<|user|>\nName a color.\n<|assistant|>\n"
    assert get_style("phi3") is PHI3 and get_style("Phi-3") is PHI3


def test_user_template_string_drops_the_input_section_when_empty():
    style = get_style("Q: {instruction}\nContext: {input}\nA:")
    assert style.format("Why?", "sky") == "Q: Why?\nContext: sky\nA:"
    assert style.format("Why?") == "Q: Why?\nA:"
    assert style.stop == ("Q:", "A:")


def test_fields_are_filled_once_and_braces_are_literal():
    style = get_style('{"q": "{instruction}"} -> {input} {}')
    # Text that looks like a field inside the data is never substituted again.
    assert style.format("say {input}", "x") == '{"q": "say {input}"} -> x {}'


def test_template_without_input_field_keeps_the_input():
    style = get_style("Task: {instruction}\nAnswer:")
    assert style.format("Add", "2 and 3") == "Task: Add\n\n2 and 3\nAnswer:"


def test_template_files(tmp_path):
    txt = tmp_path / "t.txt"
    txt.write_text("### Q\n{instruction}\n### A\n", encoding="utf-8")
    assert get_style(str(txt)).format("hi") == "### Q\nhi\n### A\n"
    js = tmp_path / "s.json"
    js.write_text(json.dumps({"name": "mine", "template": "[{instruction}|{input}]", "template_no_input": "[{instruction}]",
                              "stop": ["[["]}), encoding="utf-8")
    style = get_style(str(js))
    assert (style.name, style.format("a", "b"), style.format("a"), style.stop) == ("mine", "[a|b]", "[a]", ("[[",))


def test_bad_styles_are_named():
    with pytest.raises(GptlabError, match="alpaca"):
        get_style("no-such-style")
    with pytest.raises(GptlabError, match="instruction"):
        PromptStyle.from_dict({"template": "just text"})
    with pytest.raises(GptlabError, match="stop"):
        PromptStyle.from_dict({"template": "{instruction}", "stop": "x"})


def test_save_and_load_round_trip(tmp_path):
    assert load_style(tmp_path) is None
    for style in (ALPACA, PHI3, get_style("Q: {instruction} {input}\nA:")):
        save_style(style, tmp_path)
        assert load_style(tmp_path) == style
    assert json.loads((tmp_path / "prompt_style.json").read_text())["template"].startswith("Q: ")


def test_cut_at_the_next_prompt_marker():
    text = "Paris.\n\n### Instruction:\nName another city."
    assert ALPACA.cut(text) == "Paris."
    assert ALPACA.cut("  The answer.  ") == "The answer."
    assert PHI3.cut("Occasion<|end|>\n<|user|>") == "Occasion"


def test_format_chat():
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"}]
    assert PHI3.format_chat(msgs) == "Be brief.\n\n<|user|>\nHi\n<|assistant|>\nHello\n<|user|>\nBye\n<|assistant|>\n"
    assert ALPACA.format_chat(msgs[1:2]) == ALPACA.format("Hi")
    with pytest.raises(GptlabError, match="last message"):
        ALPACA.format_chat(msgs[:3])
    with pytest.raises(GptlabError, match="role"):
        ALPACA.format_chat([{"role": "robot", "content": "x"}])

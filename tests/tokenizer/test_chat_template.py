"""Chat templates: gptlab's rendering against transformers' apply_chat_template, for every real template we have.

Every expected text comes from transformers itself (a tiny tokenizer carrying the model's template and
special tokens), so a difference in any character fails.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

import pytest

from gptlab.errors import GptlabError
from gptlab.tokenizer.chat_template import ChatTemplateError, assistant_spans, render_chat

jinja2 = pytest.importorskip("jinja2")
tokenizers = pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")

# conftest.py points GPTLAB_DATA_DIR at ../shared/data before this module is imported.
TEMPLATES = Path(os.environ["GPTLAB_DATA_DIR"]) / "llama-vocab" / "templates"
TEMPLATE_FILES = sorted(TEMPLATES.glob("*.jinja"))

# The named special tokens of each model family (as in their tokenizer_config.json), by file name.
FAMILY_TOKENS: list[tuple[str, dict[str, str | None]]] = [
    ("llama", {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}),
    ("qwen", {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}),
    ("smollm", {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|im_end|>"}),
    ("deepseek", {"bos_token": "<｜begin▁of▁sentence｜>", "eos_token": "<｜end▁of▁sentence｜>"}),
    ("gemma", {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"}),
    ("granite", {"bos_token": "<|end_of_text|>", "eos_token": "<|end_of_text|>", "pad_token": "<|end_of_text|>"}),
    ("phi", {"bos_token": "<s>", "eos_token": "<|endoftext|>", "unk_token": "<unk>", "pad_token": "<|endoftext|>"}),
    ("mistral", {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}),
]


def family_tokens(path: Path) -> dict[str, str | None]:
    """The special tokens of the model family a template file belongs to."""
    lowered = path.name.lower()
    for key, tokens in FAMILY_TOKENS:
        if key in lowered:
            return tokens
    raise AssertionError(f"no special tokens listed for {path.name}; add its family to FAMILY_TOKENS")


def hf_tokenizer(template: str, tokens: dict[str, str | None]):
    """A transformers fast tokenizer with a two-word vocabulary, ``template`` and the given special tokens."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1}, unk_token="[UNK]"))
    named = {k: v for k, v in tokens.items() if v is not None}
    named.setdefault("unk_token", "[UNK]")
    return PreTrainedTokenizerFast(tokenizer_object=backend, chat_template=template, **named)


def assert_same(template: str, name: str, tokens: dict[str, str | None], messages: list[dict], **kwargs) -> str | None:
    """Render with transformers and with gptlab; the same text, or both fail (ours with one named line)."""
    tok = hf_tokenizer(template, tokens)
    try:
        expected = tok.apply_chat_template(messages, tokenize=False, **kwargs)
    except Exception as exc:  # noqa: BLE001 - whatever transformers raises, ours must fail too
        with pytest.raises(ChatTemplateError) as ours:
            render_chat(template, messages, special_tokens=dict(tok.special_tokens_map), name=name, **kwargs)
        message = str(ours.value)
        assert "\n" not in message and message.startswith(f"{name}: ")
        assert ours.value.__cause__ is None and ours.value.__suppress_context__
        if type(exc) is jinja2.TemplateError and exc.message:  # raise_exception's message: carried verbatim
            assert " ".join(exc.message.split()) in message
        return None
    got = render_chat(template, messages, special_tokens=dict(tok.special_tokens_map), name=name, **kwargs)
    assert got == expected
    return got


SYSTEM = {"role": "system", "content": "You are a concise assistant. Answer in one sentence."}
USER_1 = {"role": "user", "content": "What is the capital of France?"}
ASSISTANT_1 = {"role": "assistant", "content": "The capital of France is Paris."}
USER_2 = {"role": "user", "content": "And of Italy? Use <b>bold</b> & \"quotes\"."}
ASSISTANT_2 = {"role": "assistant", "content": "  Rome is the capital of Italy.\n"}

CASES: dict[str, tuple[list[dict], dict]] = {
    "system_user_generation_prompt": ([SYSTEM, USER_1], {"add_generation_prompt": True}),
    "multi_turn": ([USER_1, ASSISTANT_1, USER_2], {"add_generation_prompt": True}),
    "multi_turn_with_system": ([SYSTEM, USER_1, ASSISTANT_1, USER_2, ASSISTANT_2], {}),
    "user_only_no_generation_prompt": ([USER_1], {"add_generation_prompt": False}),
    "no_thinking": ([SYSTEM, USER_1, ASSISTANT_1, USER_2], {"add_generation_prompt": True, "enable_thinking": False}),
    "thinking": ([USER_1, ASSISTANT_1, USER_2], {"add_generation_prompt": True, "enable_thinking": True}),
    "reasoning_content": ([USER_1, {**ASSISTANT_1, "reasoning_content": "France: Paris."}], {}),
    "content_none_dropped": ([USER_1, {"role": "assistant", "content": "ok", "tool_calls": None}], {}),
    "ends_with_assistant": ([USER_1, ASSISTANT_1], {"add_generation_prompt": False}),
}


def test_there_are_templates():
    assert len(TEMPLATE_FILES) >= 10, f"expected the chat templates in {TEMPLATES}"


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("path", TEMPLATE_FILES, ids=lambda p: p.stem)
def test_matches_transformers(path: Path, case: str):
    messages, kwargs = CASES[case]
    assert_same(path.read_text(encoding="utf-8"), path.name, family_tokens(path), messages, **kwargs)


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city <with> & ünïcode",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.mark.parametrize("path", TEMPLATE_FILES, ids=lambda p: p.stem)
def test_tools_and_documents_match_transformers(path: Path):
    template, tokens = path.read_text(encoding="utf-8"), family_tokens(path)
    assert_same(template, path.name, tokens, [SYSTEM, USER_1], tools=[WEATHER_TOOL], add_generation_prompt=True)
    documents = [{"title": "Atlas", "text": "Paris is in France."}, {"title": "Map", "text": "Rome is in Italy."}]
    assert_same(template, path.name, tokens, [USER_1], documents=documents, add_generation_prompt=True)


def test_gemma_refuses_a_system_message_like_transformers():
    path = TEMPLATES / "google-gemma-2-2b-it.jinja"
    assert assert_same(path.read_text(encoding="utf-8"), path.name, family_tokens(path), [SYSTEM, USER_1]) is None
    with pytest.raises(ChatTemplateError, match=r"^google-gemma-2-2b-it\.jinja: System role not supported$"):
        render_chat(path.read_text(encoding="utf-8"), [SYSTEM, USER_1], name=path.name)


def test_strftime_now_gives_todays_date():
    path = TEMPLATES / "meta-llama-Llama-3.2-3B-Instruct.jinja"
    before = datetime.now()
    text = render_chat(path.read_text(encoding="utf-8"), [USER_1], add_generation_prompt=True,
                       special_tokens=family_tokens(path))
    after = datetime.now()
    # The template writes "Today Date: 30 Nov 2026"; accept either side of a midnight during the call.
    assert any(f"Today Date: {d.strftime('%d %b %Y')}\n" in text for d in (before, after))
    assert render_chat("{{ strftime_now('%Y') }}", [USER_1]) in {str(before.year), str(after.year)}
    # date_string given as a variable wins over today's date, as in transformers.
    assert "Today Date: 01 Jan 2020" in render_chat(path.read_text(encoding="utf-8"), [USER_1],
                                                    date_string="01 Jan 2020")


def test_tojson_matches_transformers_and_does_not_escape_html():
    template = ("{{ messages[0] | tojson }}|{{ tools | tojson(indent=2) }}|{{ messages[0] | tojson(sort_keys=true) }}"
                "|{{ tools[0] | tojson(separators=(',', ':')) }}|{{ messages[0] | tojson(ensure_ascii=true) }}")
    messages = [{"role": "user", "content": "<b>& 'é'</b>"}]
    got = assert_same(template, "t", {}, messages, tools=[WEATHER_TOOL])
    assert got.startswith(json.dumps(messages[0], ensure_ascii=False) + "|")
    assert "\\u00e9" in got and "<b>" in got


def test_generation_tag_renders_its_body_like_transformers():
    template = ("{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}[{{ m.content }}]"
                "{% endgeneration %}{% else %}{{ m.role }}: {{ m.content }}\n{% endif %}{% endfor %}")
    got = assert_same(template, "gen", {}, [USER_1, ASSISTANT_1])
    assert got == f"user: {USER_1['content']}\n[{ASSISTANT_1['content']}]"


def test_special_tokens_and_extra_variables():
    template = "{{ bos_token }}|{{ eos_token }}|{{ pad_token is defined }}|{{ flavour }}"
    got = assert_same(template, "t", {"bos_token": "<s>", "eos_token": "</s>"}, [USER_1], flavour="mint")
    assert got == "<s>|</s>|False|mint"
    # An extra variable overrides a special token of the same name (transformers merges them that way).
    assert render_chat("{{ eos_token }}", [USER_1], special_tokens={"eos_token": "</s>"}, eos_token="X") == "X"


def test_syntax_error_is_one_line_naming_the_template():
    with pytest.raises(ChatTemplateError) as err:
        render_chat("{% for m in messages %}\n{{ m.content }\n{% endfor %}", [USER_1], name="my-model template")
    message = str(err.value)
    assert message.startswith("my-model template: syntax error at line 2")
    assert "\n" not in message and err.value.__cause__ is None and err.value.__suppress_context__
    assert isinstance(err.value, GptlabError)


def test_raise_exception_message_is_carried_through():
    template = ("{% if messages[0].role != 'system' %}{{ raise_exception('First role was ' + messages[0].role) }}"
                "{% endif %}")
    assert_same(template, "strict", {}, [USER_1])
    with pytest.raises(ChatTemplateError, match=r"^strict: First role was user$"):
        render_chat(template, [USER_1], name="strict")


def test_undefined_access_and_python_errors_are_one_line():
    for template in ("{{ messages[0].missing.deeper }}", "{{ 1 + messages[0].content }}", "{{ messages[5].content }}"):
        assert_same(template, "bad", {}, [USER_1])
    with pytest.raises(ChatTemplateError, match=r"^bad: .*missing"):
        render_chat("{{ messages[0].missing.deeper }}", [USER_1], name="bad")


def test_sandbox_is_enforced():
    assert_same("{{ messages.__class__.__mro__ }}", "sandbox", {}, [USER_1])
    assert_same("{% set ns = namespace(_x=1) %}{{ ns._x }}", "sandbox", {}, [USER_1])
    with pytest.raises(ChatTemplateError, match="^sandbox: "):
        render_chat("{{ messages.append(1) }}", [USER_1], name="sandbox")


def test_empty_conversation_and_bad_messages():
    with pytest.raises(ChatTemplateError, match="^t: cannot render an empty conversation"):
        render_chat("{{ messages }}", [], name="t")
    with pytest.raises(ChatTemplateError, match="^t: message 1 must be a dict"):
        render_chat("{{ messages }}", [USER_1, "hi"], name="t")


def test_compiled_once_per_template():
    from gptlab.tokenizer import chat_template

    template = "{{ messages | length }} compiled-once-test"
    chat_template._compile.cache_clear()
    for _ in range(3):
        assert render_chat(template, [USER_1]) == "1 compiled-once-test"
    info = chat_template._compile.cache_info()
    assert info.misses == 1 and info.hits == 2


def test_caller_messages_are_not_changed():
    messages = [USER_1, {**ASSISTANT_1, "thinking": "hmm", "tool_calls": None}]
    copy = json.loads(json.dumps(messages))
    render_chat((TEMPLATES / "Qwen-Qwen3-0.6B.jinja").read_text(encoding="utf-8"), messages)
    assert messages == copy


# ---------------------------------------------------------------- assistant spans


def span_texts(template: str, messages: list[dict], **kwargs) -> tuple[str, list[str]]:
    """assistant_spans, with the text checked against render_chat and the spans turned into their text."""
    text, spans = assistant_spans(template, messages, **kwargs)
    assert text == render_chat(template, messages, **kwargs)
    assert all(0 <= a < b <= len(text) for a, b in spans)
    assert all(b1 <= a2 for (_, b1), (a2, _) in zip(spans, spans[1:]))
    return text, [text[a:b] for a, b in spans]


CONVERSATION = [SYSTEM, USER_1, ASSISTANT_1, USER_2, {"role": "assistant", "content": "Rome is the capital of Italy."}]


def test_assistant_spans_llama_3_2():
    path = TEMPLATES / "meta-llama-Llama-3.2-3B-Instruct.jinja"
    text, spans = span_texts(path.read_text(encoding="utf-8"), CONVERSATION, special_tokens=family_tokens(path))
    assert spans == [ASSISTANT_1["content"] + "<|eot_id|>", CONVERSATION[-1]["content"] + "<|eot_id|>"]
    # Llama 3 trims content: the span is the content as rendered.
    _, spans = span_texts(path.read_text(encoding="utf-8"), [USER_1, ASSISTANT_2])
    assert spans == [ASSISTANT_2["content"].strip() + "<|eot_id|>"]


@pytest.mark.parametrize("enable_thinking", [False, True])
def test_assistant_spans_qwen3_multi_turn(enable_thinking: bool):
    # Qwen3 renders an assistant turn differently once a later user turn exists (past reasoning goes),
    # so this exercises locating the content rather than prefix rendering.
    path = TEMPLATES / "Qwen-Qwen3-0.6B.jinja"
    _, spans = span_texts(path.read_text(encoding="utf-8"), CONVERSATION, special_tokens=family_tokens(path),
                          enable_thinking=enable_thinking)
    # With thinking on, the last turn (after the last user message) is written with an empty think
    # block after the generation prompt; the model must write it, so the span covers it.
    think = "<think>\n\n</think>\n\n" if enable_thinking else ""
    assert spans == [ASSISTANT_1["content"] + "<|im_end|>\n", think + CONVERSATION[-1]["content"] + "<|im_end|>\n"]


def test_assistant_spans_qwen3_single_turn_covers_what_follows_the_generation_prompt():
    path = TEMPLATES / "Qwen-Qwen3-0.6B.jinja"
    template = path.read_text(encoding="utf-8")
    _, spans = span_texts(template, [USER_1, ASSISTANT_1], enable_thinking=False)
    assert spans == [ASSISTANT_1["content"] + "<|im_end|>\n"]
    # With thinking on, the generation prompt stops before the (empty) think block the model must write.
    _, spans = span_texts(template, [USER_1, ASSISTANT_1])
    assert spans == ["<think>\n\n</think>\n\n" + ASSISTANT_1["content"] + "<|im_end|>\n"]


@pytest.mark.parametrize("path", TEMPLATE_FILES, ids=lambda p: p.stem)
def test_assistant_spans_every_template(path: Path):
    template = path.read_text(encoding="utf-8")
    messages = CONVERSATION[1:] if "gemma" in path.name else CONVERSATION
    text, spans = span_texts(template, messages, special_tokens=family_tokens(path))
    contents = [m["content"] for m in messages if m["role"] == "assistant"]
    assert len(spans) == len(contents)
    for span, content in zip(spans, contents):
        # The span starts after the generation prompt: at the content, or at what the template writes
        # before it that the prompt does not (Qwen3's empty think block, the rest of Qwen3.5's).
        assert content.strip() in span
        assert span.startswith(content.strip()) or "</think>" in span.split(content.strip())[0]
        assert not span.endswith(content.strip()), f"{path.name}: no end-of-turn text after {content!r}: {span!r}"
        assert not any(m["content"] in span for m in messages if m["role"] in ("user", "system"))


def test_assistant_spans_duplicate_content_is_not_confused_with_the_user_turn():
    path = TEMPLATES / "Qwen-Qwen3-0.6B.jinja"
    messages = [{"role": "user", "content": "yes"}, {"role": "assistant", "content": "yes"},
                {"role": "user", "content": "yes"}, {"role": "assistant", "content": "yes"}]
    text, spans = assistant_spans(path.read_text(encoding="utf-8"), messages)
    assert [text[a:b] for a, b in spans] == ["yes<|im_end|>\n", "<think>\n\n</think>\n\nyes<|im_end|>\n"]
    assert text[: spans[0][0]].endswith("<|im_start|>assistant\n")


def test_assistant_spans_error_when_content_cannot_be_located():
    # A template that writes the assistant's content changed (upper-cased) cannot be mapped back.
    template = "{% for m in messages %}{{ m.role }}: {{ m.content | upper }}\n{% endfor %}"
    with pytest.raises(ChatTemplateError, match=r"^weird: cannot locate the content of assistant message 1"):
        assistant_spans(template, [USER_1, ASSISTANT_1], name="weird")


def test_assistant_spans_without_assistant_messages():
    text, spans = assistant_spans("{{ messages[0].content }}", [USER_1])
    assert (text, spans) == (USER_1["content"], [])


def test_block_whitespace_and_loop_controls_match_transformers():
    # The real templates mostly trim with {%- -%}; this one relies on trim_blocks/lstrip_blocks and {% break %}.
    template = (
        "{% for m in messages %}\n"
        "    {% if m.role == 'assistant' %}\n"
        "        {% break %}\n"
        "    {% endif %}\n"
        "  {{ m.role }}: {{ m.content }}\n"
        "{% endfor %}\n"
        "{% if add_generation_prompt %}\n"
        "    assistant:\n"
        "{% endif %}"
    )
    got = assert_same(template, "ws", {}, [SYSTEM, USER_1, ASSISTANT_1, USER_2], add_generation_prompt=True)
    assert got == f"  system: {SYSTEM['content']}\n  user: {USER_1['content']}\n    assistant:\n"

"""Prompt styles: how an instruction (and optional input) becomes the text a model is trained on.

A :class:`PromptStyle` turns ``(instruction, input)`` into the prompt up to and including the response
marker; the answer follows it directly. The same style is saved beside a fine-tuned model
(``prompt_style.json``) so generation and serving format prompts exactly as training did.

Built in: ``alpaca`` (the book's chapter 7 text, character for character) and ``phi3`` (the book's
exercise 7.1: ``<|user|>`` / ``<|assistant|>``). A user template is a string (or a text file) with an
``{instruction}`` field and optionally an ``{input}`` field, or a JSON file written by
:meth:`PromptStyle.to_dict`.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gptlab.errors import GptlabError
from gptlab.io import atomic_write_text

STYLE_FILE = "prompt_style.json"

# Only these two names are fields; every other brace is literal text, so templates may contain JSON,
# code or "{}" without escaping.
_FIELD = re.compile(r"\{(instruction|input)\}")

_ALPACA_HEAD = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request."
)


def chat_messages(messages: Any) -> list[tuple[str, str]]:
    """Check OpenAI-style chat ``messages`` and return them as ``(role, content)`` pairs.

    Each must be an object with ``role`` system/user/assistant and string ``content``; the last must
    be the user's (the model answers it). Errors name the message by index.
    """
    if not isinstance(messages, list) or not messages:
        raise GptlabError("messages: expected a non-empty list of {role, content} objects")
    pairs: list[tuple[str, str]] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise GptlabError(f"messages[{i}]: expected an object with role and content")
        role, content = msg.get("role"), msg.get("content")
        if not isinstance(content, str):
            raise GptlabError(f"messages[{i}].content: expected a string")
        if role not in ("system", "user", "assistant"):
            raise GptlabError(f"messages[{i}].role: expected 'system', 'user' or 'assistant', got {role!r}")
        pairs.append((role, content))
    if pairs[-1][0] != "user":
        raise GptlabError("messages: the last message must be from the user")
    return pairs


@dataclass(frozen=True)
class PromptStyle:
    """A prompt format: a template with ``{instruction}``/``{input}`` fields and the strings that end an answer.

    ``template`` is used when the entry has an input, ``template_no_input`` when the input is empty
    (Alpaca drops its whole ``### Input:`` section then). ``stop`` holds the markers that begin the next
    prompt: generated text is cut at the first of them. ``turn_sep`` separates an assistant answer
    from the next turn when a multi-turn chat is formatted.
    """

    name: str
    template: str
    template_no_input: str
    stop: tuple[str, ...] = ()
    turn_sep: str = "\n\n"

    def __post_init__(self) -> None:
        for field_name in ("template", "template_no_input"):
            text = getattr(self, field_name)
            if not isinstance(text, str) or "{instruction}" not in text:
                raise GptlabError(
                    f"prompt style {self.name!r}: {field_name} must be a string with an "
                    "{instruction} field"
                )
        if "{input}" in self.template_no_input:
            raise GptlabError(
                f"prompt style {self.name!r}: template_no_input must not contain an {{input}} field"
            )
        # Accept lists (from JSON) but store a tuple so the style stays hashable.
        object.__setattr__(self, "stop", tuple(str(s) for s in self.stop if s))

    def format(self, instruction: str, input: str = "") -> str:  # noqa: A002 - the data's field name
        """The prompt for one entry, up to and including the response marker (the answer follows)."""
        if input:
            if "{input}" in self.template:
                return _fill(self.template, instruction, input)
            # A template without an input field still must not lose the input.
            return _fill(self.template, f"{instruction}\n\n{input}", "")
        return _fill(self.template_no_input, instruction, "")

    def format_chat(self, messages: list[dict[str, Any]]) -> str:
        """OpenAI-style ``messages`` (``role``, ``content``) as one prompt ending where the answer starts.

        Every user turn is formatted as an instruction without input; an assistant turn is its text
        followed by ``turn_sep``; system messages are put first, each followed by a blank line. The
        last message must be from the user.
        """
        parts: list[str] = []
        last_role = ""
        for i, (role, content) in enumerate(chat_messages(messages)):
            if role == "system":
                if parts and last_role != "system":
                    raise GptlabError(f"messages[{i}]: a system message must come before the others")
                parts.append(content + "\n\n")
            elif role == "user":
                if last_role == "user":
                    raise GptlabError(f"messages[{i}]: two user messages in a row")
                parts.append(self.format(content))
            elif role == "assistant":
                if last_role != "user":
                    raise GptlabError(f"messages[{i}]: an assistant message must follow a user message")
                parts.append(content + self.turn_sep)
            last_role = role
        return "".join(parts)

    def cut(self, text: str) -> str:
        """Generated text up to the first stop marker, stripped of surrounding whitespace."""
        end = len(text)
        for marker in self.stop:
            at = text.find(marker)
            if 0 <= at < end:
                end = at
        return text[:end].strip()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary that :meth:`from_dict` turns back into this style."""
        return {
            "name": self.name,
            "template": self.template,
            "template_no_input": self.template_no_input,
            "stop": list(self.stop),
            "turn_sep": self.turn_sep,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "prompt style") -> PromptStyle:
        """Build a style from :meth:`to_dict` output; ``template_no_input`` and ``stop`` may be omitted."""
        if not isinstance(d, dict):
            raise GptlabError(f"{where}: expected a JSON object with 'template'")
        template = d.get("template")
        if not isinstance(template, str):
            raise GptlabError(f"{where}: field 'template' must be a string with an {{instruction}} field")
        stop = d.get("stop", _default_stop(template))
        if not isinstance(stop, list | tuple) or not all(isinstance(s, str) for s in stop):
            raise GptlabError(f"{where}: field 'stop' must be a list of strings")
        no_input = d.get("template_no_input", _drop_input(template))
        turn_sep = d.get("turn_sep", "\n\n")
        if not isinstance(no_input, str) or not isinstance(turn_sep, str):
            raise GptlabError(f"{where}: fields 'template_no_input' and 'turn_sep' must be strings")
        name = d.get("name", "custom")
        return cls(str(name), template, no_input, tuple(stop), turn_sep)


def _fill(template: str, instruction: str, input: str) -> str:  # noqa: A002
    # One pass over the template: substituted text is never re-scanned for fields.
    values = {"instruction": instruction, "input": input}
    return _FIELD.sub(lambda m: values[m.group(1)], template)


def _drop_input(template: str) -> str:
    """The template without its ``{input}`` field and the literal text leading up to it.

    "…{instruction}\\n\\n### Input:\\n{input}\\n\\n### Response:\\n" loses "\\n\\n### Input:\\n{input}",
    which is exactly how Alpaca treats an empty input.
    """
    at = template.find("{input}")
    if at < 0:
        return template
    before = template[:at]
    prev = before.rfind("{instruction}")
    start = prev + len("{instruction}") if prev >= 0 else 0
    return template[:start] + template[at + len("{input}") :]


def _default_stop(template: str) -> tuple[str, ...]:
    """Stop markers for a user template: its literal text before the first field and after the last."""
    fields = list(_FIELD.finditer(template))
    if not fields:
        return ()
    head = template[: fields[0].start()].strip()
    tail = template[fields[-1].end() :].strip()
    return tuple(dict.fromkeys(s for s in (head, tail) if s))


ALPACA = PromptStyle(
    name="alpaca",
    template=f"{_ALPACA_HEAD}\n\n### Instruction:\n{{instruction}}\n\n### Input:\n{{input}}\n\n### Response:\n",
    template_no_input=f"{_ALPACA_HEAD}\n\n### Instruction:\n{{instruction}}\n\n### Response:\n",
    stop=("### Instruction:", "### Input:", "### Response:", _ALPACA_HEAD[:30]),
    turn_sep="\n\n",
)

PHI3 = PromptStyle(
    name="phi3",
    template="<|user|>\n{instruction}\n{input}\n<|assistant|>\n",
    template_no_input="<|user|>\n{instruction}\n<|assistant|>\n",
    stop=("<|user|>", "<|assistant|>", "<|end|>"),
    turn_sep="\n",
)

STYLES: dict[str, PromptStyle] = {"alpaca": ALPACA, "phi3": PHI3, "phi-3": PHI3}


def get_style(name_or_template: str | PromptStyle) -> PromptStyle:
    """A style by name (``alpaca``, ``phi3``), from a file (JSON style or text template), or a template string.

    A template string must contain ``{instruction}``; ``{input}`` is optional.
    """
    if isinstance(name_or_template, PromptStyle):
        return name_or_template
    spec = str(name_or_template)
    if spec.lower() in STYLES:
        return STYLES[spec.lower()]
    path = Path(spec)
    if "{instruction}" not in spec and len(spec) < 4096:
        try:
            is_file = path.is_file()
        except OSError:
            is_file = False
        if is_file:
            return _style_from_file(path)
        raise GptlabError(
            f"--style {spec!r}: expected 'alpaca', 'phi3', a template file, or a template string "
            "with an {instruction} field"
        )
    return PromptStyle.from_dict({"name": "custom", "template": spec})


def _style_from_file(path: Path) -> PromptStyle:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise GptlabError(f"{path}: cannot read the prompt style ({exc})") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise GptlabError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        return PromptStyle.from_dict(data, where=str(path))
    if "{instruction}" not in text:
        raise GptlabError(f"{path}: a prompt template must contain an {{instruction}} field")
    return PromptStyle.from_dict({"name": path.stem, "template": text}, where=str(path))


def save_style(style: PromptStyle, directory: str | os.PathLike) -> Path:
    """Write ``prompt_style.json`` into a model or run folder (atomically); returns its path."""
    path = Path(directory) / STYLE_FILE
    atomic_write_text(path, json.dumps(style.to_dict(), indent=2, ensure_ascii=False) + "\n")
    return path


def load_style(directory: str | os.PathLike) -> PromptStyle | None:
    """The style saved in a model or run folder, or None when the folder has no ``prompt_style.json``."""
    path = Path(directory) / STYLE_FILE
    if not path.is_file():
        return None
    return _style_from_file(path)

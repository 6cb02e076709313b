"""Chat templates: render a conversation with a model's Jinja template exactly as Hugging Face does.

:func:`render_chat` gives, character for character, what transformers'
``tokenizer.apply_chat_template(messages, tokenize=False, ...)`` gives: the same sandboxed Jinja
environment (``ImmutableSandboxedEnvironment`` with ``trim_blocks``/``lstrip_blocks`` and the
``loopcontrols`` extension), the same helpers (``raise_exception``, ``strftime_now``, a ``tojson``
filter that does not escape HTML, a safe ``dict`` and ``namespace``), the ``{% generation %}`` tag
(rendered as its plain body), and the same variables: ``messages``, ``tools``, ``documents``,
``add_generation_prompt``, the named special tokens (``bos_token``, ``eos_token``, ...) and any
extra keyword arguments (e.g. Qwen3's ``enable_thinking``). Messages are prepared the same way too:
keys whose value is None are dropped, and a reasoning field (``reasoning_content``, ``thinking`` or
``reasoning``) is also given under the names ``thinking`` and ``reasoning_content``.

:func:`assistant_spans` says where each assistant message lies in the rendered text, which is what
instruction training needs to compute the loss on assistant turns only.

Every failure (a syntax error in the template, ``raise_exception``, an undefined value used in a way
that raises, a bad argument) is one :class:`ChatTemplateError` whose one-line message starts with
the template's ``name``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache
from typing import Any

from gptlab.errors import GptlabError

__all__ = ["ChatTemplateError", "assistant_spans", "render_chat"]


class ChatTemplateError(GptlabError):
    """A chat template could not be compiled or rendered; the message is one line naming the template."""


class _RaisedByTemplate(Exception):
    """What the template's ``raise_exception(message)`` raises: the message is the template author's own."""


def _one_line(text: str) -> str:
    """``text`` with its line breaks (and the indentation after them) turned into single spaces."""
    return re.sub(r"\s*\n\s*", " ", str(text)).strip()


@lru_cache(maxsize=64)
def _compile(template: str):
    """The compiled template, built once per distinct template string (templates are re-rendered per example)."""
    # Imported here so that importing gptlab.tokenizer does not require jinja2.
    import jinja2
    import jinja2.ext
    import jinja2.nodes
    import jinja2.utils
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationTag(jinja2.ext.Extension):
        """``{% generation %}...{% endgeneration %}`` marks assistant text in some templates; it renders its body.

        transformers uses it to record assistant positions; we find them without it (see
        :func:`assistant_spans`), so here it only has to parse and render like transformers does.
        """

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_render_body"), [], [], body).set_lineno(lineno)

        def _render_body(self, caller) -> str:
            return caller()

    def raise_exception(message: Any) -> None:
        raise _RaisedByTemplate(message)

    def tojson(value: Any, ensure_ascii: bool = False, indent: int | str | None = None,
               separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
        # Jinja's own tojson escapes <, >, & and ' for HTML, which would change the prompt the model saw in training.
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt: str) -> str:
        return datetime.now().strftime(fmt)

    class SafeDict:
        """``dict(...)`` and ``dict.fromkeys(...)`` without exposing the ``dict`` type itself to the template."""

        def __call__(self, *args: Any, **kwargs: Any) -> dict:
            return dict(*args, **kwargs)

        def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
            return dict.fromkeys(*args, **kwargs)

    class SafeNamespace(jinja2.utils.Namespace):
        """Jinja's ``namespace`` refusing underscore names, so a template cannot reach Python internals through it."""

        def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: N805 - Jinja's own signature trick (allows self=)
            self, rest = args[0], args[1:]
            attrs = dict(*rest, **kwargs)
            for key in attrs:
                SafeNamespace._check(key)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, key: str, value: Any) -> None:
            SafeNamespace._check(key)
            jinja2.utils.Namespace.__setitem__(self, key, value)

        @staticmethod
        def _check(key: Any) -> None:
            if isinstance(key, str) and key.startswith("_"):
                raise jinja2.exceptions.SecurityError(
                    f"chat templates cannot store underscore-prefixed attributes on a namespace, got {key!r}"
                )

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    env.globals["dict"] = SafeDict()
    env.globals["namespace"] = SafeNamespace
    return env.from_string(template)


def _compiled(template: str, name: str):
    """:func:`_compile`, with a syntax error turned into a one-line :class:`ChatTemplateError`."""
    import jinja2

    if not isinstance(template, str):
        raise ChatTemplateError(f"{name}: expected the template as a string, got {type(template).__name__}")
    try:
        return _compile(template)
    except jinja2.TemplateSyntaxError as exc:
        raise ChatTemplateError(f"{name}: syntax error at line {exc.lineno}: {_one_line(exc.message or exc)}") from None
    except jinja2.TemplateError as exc:
        raise ChatTemplateError(f"{name}: {_one_line(exc)}") from None


def _plain(value: Any) -> Any:
    """A deep copy of ``value`` made of plain JSON-like types, so the template never sees (or shares) caller objects."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)  # drop str subclasses (enums, ...) and the methods they carry
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    # transformers renders any other object as an inert placeholder naming its type; so do we.
    return f"<{type(value).__name__}>"


# The names a message's reasoning may come under; templates read the first (gpt-oss reads "thinking").
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def _prepare_messages(messages: Any, name: str) -> list[dict]:
    """Messages as transformers hands them to the template: plain dicts, None values dropped, reasoning aliased."""
    if not isinstance(messages, (list, tuple)):
        raise ChatTemplateError(f"{name}: messages must be a list of dicts, got {type(messages).__name__}")
    if not messages:
        raise ChatTemplateError(f"{name}: cannot render an empty conversation; give at least one message")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ChatTemplateError(f"{name}: message {i} must be a dict, got {type(message).__name__}")
        # APIs often send content=None or tool_calls=None; templates handle a missing key but not None.
        message = {k: _plain(v) for k, v in message.items() if v is not None}
        reasoning = next((message[k] for k in _REASONING_FIELDS if message.get(k) is not None), None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        out.append(message)
    return out


def render_chat(
    template: str,
    messages: list[dict],
    *,
    add_generation_prompt: bool = False,
    special_tokens: dict[str, str | None] | None = None,
    tools: list | None = None,
    documents: list | None = None,
    name: str = "chat template",
    **kwargs: Any,
) -> str:
    """Render ``messages`` with the Jinja chat ``template``, exactly as transformers' ``apply_chat_template`` does.

    ``special_tokens`` maps names such as ``"bos_token"``/``"eos_token"`` to their text (None entries
    are left out, so the template sees them as undefined, as with a tokenizer that lacks them);
    ``tools`` are JSON-schema dicts and ``documents`` dicts (e.g. ``title``/``text``); every other
    keyword (``enable_thinking=False``, ``date_string=...``) becomes a template variable and wins over
    a special token of the same name. Any failure raises a one-line :class:`ChatTemplateError`
    starting with ``name``.
    """
    compiled = _compiled(template, name)
    prepared = _prepare_messages(messages, name)
    if tools is not None:
        bad = next((t for t in tools if not isinstance(t, Mapping)), None)
        if bad is not None:
            raise ChatTemplateError(f"{name}: tools must be JSON-schema dicts, got a {type(bad).__name__}")
    if documents is not None:
        bad = next((d for d in documents if not isinstance(d, Mapping)), None)
        if bad is not None:
            raise ChatTemplateError(f"{name}: documents must be dicts (e.g. title and text), "
                                    f"got a {type(bad).__name__}")
    reserved = {"messages", "tools", "documents", "add_generation_prompt"} & set(kwargs)
    if reserved:
        raise ChatTemplateError(f"{name}: {sorted(reserved)[0]!r} is set by render_chat itself, "
                                "not as an extra variable")
    variables = {k: str(v) for k, v in (special_tokens or {}).items() if v is not None}
    variables.update(_plain(kwargs))
    return _render(compiled, name, messages=prepared, tools=_plain(tools), documents=_plain(documents),
                   add_generation_prompt=add_generation_prompt, **variables)


def _render(compiled, name: str, **variables: Any) -> str:
    """``compiled.render(**variables)`` with every failure made one :class:`ChatTemplateError` line."""
    import jinja2

    try:
        return compiled.render(**variables)
    except _RaisedByTemplate as exc:
        raise ChatTemplateError(f"{name}: {_one_line(exc)}") from None
    except jinja2.TemplateError as exc:
        # UndefinedError, SecurityError, ...: Jinja's message says what was missing or forbidden.
        raise ChatTemplateError(f"{name}: {_one_line(exc.message or type(exc).__name__)}") from None
    except (ArithmeticError, AttributeError, KeyError, IndexError, LookupError, TypeError, ValueError,
            RecursionError) as exc:
        # Python errors inside template code (a tojson of an unserialisable value, '1' + 1, ...).
        raise ChatTemplateError(f"{name}: {type(exc).__name__}: {_one_line(exc)}") from None


def assistant_spans(
    template: str,
    messages: list[dict],
    *,
    add_generation_prompt: bool = False,
    special_tokens: dict[str, str | None] | None = None,
    tools: list | None = None,
    documents: list | None = None,
    name: str = "chat template",
    **kwargs: Any,
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and, for each assistant message in order, its ``(start, end)`` character span.

    Arguments are those of :func:`render_chat`; the text is exactly what it returns.

    What a span covers: the assistant's content as the template writes it (possibly trimmed), and
    then the text the template writes after it until the next message's rendering starts (or the
    text ends): the end-of-turn marker, e.g. ``"<|eot_id|>"`` for Llama 3 and ``"<|im_end|>\\n"`` for
    Qwen. It never covers the turn's header (``<|start_header_id|>assistant<|end_header_id|>\\n\\n``),
    which the generation prompt supplies at inference time. Precisely, the span is found in one of
    two ways:

    1. Prefix rendering (used when the template is prefix-stable): ``start`` is the length of the
       conversation before the message rendered with ``add_generation_prompt=True``, ``end`` the
       length of the conversation up to and including the message. So the span is exactly what a
       model prompted with the generation prompt must write, e.g. Qwen3's empty ``<think>`` block too
       when it renders one after the prompt. Used only if every such rendering is a prefix of the
       next and of the full text.
    2. Location (templates that render a turn differently once later turns exist, e.g. Qwen3 drops
       past reasoning): each assistant content is replaced by a unique marker to learn where it is
       written; the real content (as given, or stripped of surrounding whitespace) must appear there.
       The span starts where the generation prompt ends when the conversation before the message,
       rendered with ``add_generation_prompt=True``, is a prefix of the full text ending at or
       before the content (as in 1.), else at the content itself (e.g. a past Qwen3 turn rendered
       without the think block that its generation prompt with ``enable_thinking=False`` has).
       The span runs to the end of the text the template writes after the message
       when it is the last one, as far as that text also follows it in the full rendering (and not
       ending inside a ``<...>`` marker).

    Raises :class:`ChatTemplateError` when a message's content cannot be located.
    """
    options = dict(special_tokens=special_tokens, tools=tools, documents=documents, name=name, **kwargs)
    full = render_chat(template, messages, add_generation_prompt=add_generation_prompt, **options)
    indices = [i for i, m in enumerate(messages) if isinstance(m, Mapping) and m.get("role") == "assistant"]
    if not indices:
        return full, []
    spans = _prefix_spans(template, messages, indices, full, options)
    if spans is None:
        spans = _located_spans(template, messages, indices, full, add_generation_prompt, options)
    return full, spans


def _prefix_spans(template: str, messages: list[dict], indices: list[int], full: str,
                  options: dict[str, Any]) -> list[tuple[int, int]] | None:
    """Spans by rendering growing prefixes of the conversation; None when the template is not prefix-stable."""
    spans: list[tuple[int, int]] = []
    previous_end = 0
    for i in indices:
        if i == 0:
            return None  # no conversation before it to render a generation prompt for
        try:
            before = render_chat(template, messages[:i], add_generation_prompt=True, **options)
            upto = render_chat(template, messages[: i + 1], add_generation_prompt=False, **options)
        except ChatTemplateError:
            return None  # e.g. a template that refuses a conversation ending in a given role
        if not (len(before) >= previous_end and upto.startswith(before) and full.startswith(upto)):
            return None
        content = messages[i].get("content")
        # A template that renders the content somewhere else (or not at all) is not one we can trust here.
        if isinstance(content, str) and content.strip() not in upto[len(before):]:
            return None
        spans.append((len(before), len(upto)))
        previous_end = len(upto)
    return spans


def _marker(k: int) -> str:
    # Private-use characters: never in real data, untouched by trim/strip and by templates' text tests.
    return f"\U000f1000{k}\U000f1001"


def _located_spans(template: str, messages: list[dict], indices: list[int], full: str,
                   add_generation_prompt: bool, options: dict[str, Any]) -> list[tuple[int, int]]:
    """Spans by locating each assistant content where a marker put in its place is rendered."""
    name = options["name"]
    marked = [dict(m) for m in messages]
    for k, i in enumerate(indices):
        if not isinstance(messages[i].get("content"), str):
            raise ChatTemplateError(f"{name}: cannot locate assistant message {i}: its content is not a string")
        marked[i]["content"] = _marker(k)
    skeleton = render_chat(template, marked, add_generation_prompt=add_generation_prompt, **options)
    # pieces = [text, marker 0, text, marker 1, ..., text]; the texts are what surrounds the contents.
    pieces = re.split("(" + "|".join(re.escape(_marker(k)) for k in range(len(indices))) + ")", skeleton)
    texts = pieces[0::2]
    if [p for p in pieces[1::2]] != [_marker(k) for k in range(len(indices))]:
        raise ChatTemplateError(f"{name}: cannot locate the assistant messages: the template does not write each "
                                f"assistant content exactly once, in order")
    spans: list[tuple[int, int]] = []
    pos = 0
    for k, i in enumerate(indices):
        if not full.startswith(texts[k], pos):
            raise ChatTemplateError(f"{name}: cannot locate assistant message {i}: the text before it renders "
                                    f"differently with its real content")
        pos += len(texts[k])
        content = messages[i]["content"]
        following = texts[k + 1]
        # Templates may trim the content; the longest variant that fits between the surrounding texts wins.
        variants = dict.fromkeys([content, content.strip(), content.lstrip(), content.rstrip(),
                                  content.strip("\n"), content.lstrip("\n"), content.rstrip("\n")])
        found = [v for v in variants if full.startswith(v, pos) and full.startswith(following, pos + len(v))]
        if not found:
            raise ChatTemplateError(f"{name}: cannot locate the content of assistant message {i} in the rendered text")
        start, content_end = pos, pos + len(max(found, key=len))
        start = _generation_prompt_end(template, messages, i, full, spans[-1][1] if spans else 0, start, options)
        spans.append((start, content_end + _end_of_turn_length(template, marked, i, k, following, options)))
        pos = content_end
    return spans


def _generation_prompt_end(template: str, messages: list[dict], i: int, full: str, lowest: int, content_start: int,
                           options: dict[str, Any]) -> int:
    """Where the generation prompt before assistant message ``i`` ends in ``full``, else ``content_start``.

    So that what the template writes between the prompt and the content (Qwen3's empty think block
    on the last turn) is covered as in prefix rendering, whenever the prompt matches the full text.
    """
    if i == 0:
        return content_start
    try:
        before = render_chat(template, messages[:i], add_generation_prompt=True, **options)
    except ChatTemplateError:
        return content_start
    if lowest <= len(before) <= content_start and full.startswith(before):
        return len(before)
    return content_start


def _end_of_turn_length(template: str, marked: list[dict], i: int, k: int, following: str,
                        options: dict[str, Any]) -> int:
    """How much of ``following`` (the text after assistant message ``i``) is that turn's own ending.

    The ending is what the template writes after the content when the message is the last one, as
    far as that text also starts ``following``; e.g. ``<|im_end|>\\n`` before ``<|im_start|>user``.
    """
    try:
        alone = render_chat(template, marked[: i + 1], add_generation_prompt=False, **options)
    except ChatTemplateError:
        return 0  # the template refuses to end there; cover the content only
    _, sep, tail = alone.partition(_marker(k))
    if not sep:
        return 0
    n = 0
    while n < min(len(tail), len(following)) and tail[n] == following[n]:
        n += 1
    # Stop before a marker cut in half: Phi-3.5 ends a conversation with "<|end|>\n</s>" but a turn
    # followed by a user message with "<|end|>\n<|user|>"; their common "<" belongs to neither ending.
    opened = tail.rfind("<", 0, n)
    if opened >= 0 and ">" not in tail[opened:n]:
        n = opened
    return n

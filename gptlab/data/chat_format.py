"""Chat messages to a prompt: the model's own prompt style when it has one, a plain format otherwise.

A fine-tuned model folder carries ``prompt_style.json`` (:mod:`gptlab.data.prompts`); chats are
then formatted exactly as the model was trained. A model without one (a pretrained or base model) gets
a neutral transcript::

    System text (if any)

    User: first message
    Assistant: first answer
    User: second message
    Assistant:

whose answers end where the model starts a new ``User:`` line. A model whose tokenizer has a chat
template (an instruct model from the Hub, a run trained on chat data) and no saved prompt style is
prompted with that template (:class:`TemplateChat`), and its answers end at the template's
end-of-turn token. :func:`encode_chat` turns messages into prompt ids for any format.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Protocol

from gptlab.data.prompts import chat_messages, get_style, load_style
from gptlab.errors import GptlabError
from gptlab.tokenizer import Tokenizer
from gptlab.tokenizer.chat_template import render_chat


class ChatFormat(Protocol):
    """What serving needs of a prompt style: messages to a prompt, and the strings that end an answer."""

    name: str
    stop: tuple[str, ...]

    def format_chat(self, messages: list[dict[str, Any]]) -> str:
        """The prompt for ``messages``, ending where the assistant's answer starts."""
        ...


@dataclass(frozen=True)
class PlainChat:
    """The fallback "User:/Assistant:" transcript for models without a prompt style."""

    name: str = "plain"
    stop: tuple[str, ...] = ("\nUser:", "\nAssistant:")

    def format_chat(self, messages: list[dict[str, Any]]) -> str:
        """Format ``messages`` (``role`` system/user/assistant, string ``content``); the last must be the user's."""
        lines: list[str] = []
        for role, content in chat_messages(messages):
            if role == "system":
                lines.append(content.strip() + "\n")
            elif role == "user":
                lines.append(f"User: {content.strip()}")
            else:
                lines.append(f"Assistant: {content.strip()}")
        return "\n".join(lines) + "\nAssistant:"


@dataclass(frozen=True)
class TemplateChat:
    """The model's own Jinja chat template (``tokenizer.chat_template``), rendered as transformers renders it.

    The rendered prompt holds the template's markers (``<|im_start|>``, ``<|eot_id|>``, ...), which
    are special tokens: it must be encoded with special tokens allowed (:attr:`special_in_prompt`,
    see :func:`encode_chat`). That would also turn marker text typed by a user into the real control
    token, letting a message close its own turn and forge a system or assistant turn. transformers
    does not guard against this; we refuse such a message (:class:`SpecialTokenInMessage`, a 400 in
    the API) rather than neutralize it. Neutralizing would mean rendering with placeholders and
    encoding the pieces apart, which breaks on templates that transform content (strip it, split
    reasoning at ``</think>``, ...) and would no longer give exactly transformers' prompt; a refusal
    keeps the prompt exact and says what is wrong. Every string of a message is checked (content,
    and fields such as ``name`` or ``reasoning_content`` that a template may render).

    Generation ends at the tokenizer's stop ids (its EOS, ``<|endoftext|>``, generation_config's
    ids) plus the template's own end-of-turn marker (:attr:`stop_ids`) when that is a special token;
    when the marker is plain text for this tokenizer (a GPT-2 run trained with a ChatML template) it
    is a stop string (:attr:`stop`) instead.
    """

    template: str
    template_tokens: tuple[tuple[str, str], ...] = ()  # (name, text) pairs: bos_token, eos_token, pad_token
    protected: frozenset[str] = frozenset()  # special-token texts a message may not contain
    stop_ids: tuple[int, ...] = ()
    stop: tuple[str, ...] = ()
    name: str = "chat template"
    special_in_prompt: bool = True

    @classmethod
    def from_tokenizer(cls, tokenizer: Tokenizer, template: str | None = None,
                       name: str = "chat template") -> TemplateChat:
        """The format of ``tokenizer``'s ``chat_template`` (or ``template``); raises if there is neither."""
        template = template if template is not None else getattr(tokenizer, "chat_template", None)
        if not template:
            raise GptlabError(f"{name}: the tokenizer {getattr(tokenizer, 'name', '')!r} has no chat template")
        names = {"bos_token": tokenizer.bos_token, "eos_token": tokenizer.eos_token,
                 "pad_token": tokenizer.pad_token}
        fmt = cls(template, tuple(names.items()), frozenset(tokenizer.special_tokens), tuple(tokenizer.stop_ids),
                  (), name)
        marker = fmt.end_of_turn()
        if marker is None:
            return fmt
        marker_id = tokenizer.token_id(marker)
        if marker_id is not None:
            ids = tuple(dict.fromkeys([*fmt.stop_ids, marker_id]))
            return cls(template, fmt.template_tokens, fmt.protected, ids, (), name)
        return cls(template, fmt.template_tokens, fmt.protected, fmt.stop_ids, (marker,), name)

    @property
    def special_tokens(self) -> dict[str, str | None]:
        """The named special tokens the template sees (``bos_token``, ``eos_token``, ``pad_token``)."""
        return dict(self.template_tokens)

    def check_messages(self, messages: list[dict[str, Any]]) -> None:
        """Raise :class:`SpecialTokenInMessage` if any string in ``messages`` holds a special token's text."""
        if not self.protected:
            return
        for i, message in enumerate(messages):
            for field, text in _strings(message):
                found = _first_special(text, self.protected)
                if found is not None:
                    raise SpecialTokenInMessage(
                        f"messages[{i}].{field} contains {found!r}, the text of one of the model's special "
                        "tokens, which would act as a control token in its chat template; remove or alter it"
                    )

    def format_chat(self, messages: list[dict[str, Any]]) -> str:
        """The template's rendering of ``messages`` with the assistant's generation prompt after it.

        Messages are checked first (roles, string contents, the last one the user's, no special-token
        text); they are then given to the template as they are, extra fields included.
        """
        chat_messages(messages)
        self.check_messages(messages)
        return render_chat(self.template, messages, add_generation_prompt=True,
                           special_tokens=self.special_tokens, name=self.name)

    def end_of_turn(self) -> str | None:
        """The text the template writes right after an assistant's answer (e.g. ``<|im_end|>``), or None.

        Found by rendering a probe conversation, so it works for any template; None when the template
        writes nothing after the answer or refuses the probe (one that requires a system message, ...).
        """
        probe = "\x00gptlab-answer\x00"
        try:
            text = render_chat(self.template, [{"role": "user", "content": "hi"},
                                               {"role": "assistant", "content": probe}],
                               special_tokens=self.special_tokens, name=self.name)
        except GptlabError:
            return None
        at = text.rfind(probe)
        if at < 0:
            return None
        after = text[at + len(probe):].strip()
        # Only the first marker: Phi-3 writes "<|end|>\n" and then "<|endoftext|>" to close the document.
        first = after.split("\n", 1)[0].strip() if after else ""
        for special in sorted(self.protected, key=len, reverse=True):
            if first.startswith(special):
                return special
        return first or None


class SpecialTokenInMessage(GptlabError):
    """A chat message holds the text of a special token, which the chat template would turn into a control token."""


def _strings(value: Any, path: str = "") -> list[tuple[str, str]]:
    """Every string inside a message, with the field it sits in (``content``, ``name``, ``content[0].text``)."""
    if isinstance(value, dict):
        found: list[tuple[str, str]] = []
        for key, item in value.items():
            if not path and key == "role":
                continue  # checked against system/user/assistant; never rendered as free text
            found += _strings(item, f"{path}.{key}" if path else str(key))
        return found
    if isinstance(value, list):
        return [s for j, item in enumerate(value) for s in _strings(item, f"{path}[{j}]")]
    return [(path, value)] if isinstance(value, str) else []


def _first_special(text: str, specials: frozenset[str]) -> str | None:
    """The first special-token text found in ``text`` (the leftmost, longest at a place), or None."""
    best: tuple[int, int, str] | None = None
    for special in specials:
        at = text.find(special)
        if at >= 0 and (best is None or (at, -len(special)) < (best[0], best[1])):
            best = (at, -len(special), special)
    return None if best is None else best[2]


def encode_chat(fmt: ChatFormat, tokenizer: Tokenizer, messages: list[dict[str, Any]]) -> list[int]:
    """``messages`` formatted by ``fmt`` and encoded: the ids of the prompt the model answers.

    A chat template's prompt (``special_in_prompt``) is encoded with special tokens allowed, as
    transformers' ``apply_chat_template(tokenize=True)`` encodes it, so its markers get their ids (its
    messages were checked for special-token text first). Any other format's prompt holds user text
    and plain markers: special-token text in it is encoded as ordinary text.
    """
    text = fmt.format_chat(messages)
    if getattr(fmt, "special_in_prompt", False):
        return tokenizer.encode(text, allowed_special="all")
    return tokenizer.encode(text, disallowed_special=())


def history_text(fmt: ChatFormat, answer: str) -> str:
    """A generated ``answer`` as it can go back into the conversation: special-token text removed under a template.

    A model may write a special token that does not end its turn (``<|im_start|>``); kept in the
    history, that text would make every later turn refused by :meth:`TemplateChat.check_messages`.
    """
    protected = getattr(fmt, "protected", None)
    if not protected or not getattr(fmt, "special_in_prompt", False):
        return answer
    while (found := _first_special(answer, protected)) is not None:
        answer = answer.replace(found, "")
    return answer


def stop_ids_of(fmt: ChatFormat) -> tuple[int, ...]:
    """The token ids that end an answer in ``fmt`` beyond the tokenizer's own (none for plain formats)."""
    return tuple(getattr(fmt, "stop_ids", ()))


def chat_format_for(model_dir: str | os.PathLike | None, style: str | None = None,
                    tokenizer: Tokenizer | None = None) -> ChatFormat:
    """The chat format for a model, first found of: ``style`` (a name or template; ``plain``), the folder's
    saved ``prompt_style.json``, ``tokenizer``'s chat template, the plain transcript.

    A run's prompt style comes before the tokenizer's template because it is how that run was trained
    (a GPT-2 fine-tune); a run trained on chat data saves its template instead, which the tokenizer
    loaded from the run carries.
    """
    if style:
        return PlainChat() if style == "plain" else get_style(style)
    if model_dir is not None and os.path.isdir(model_dir):
        found = load_style(model_dir)
        if found is not None:
            return found
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return TemplateChat.from_tokenizer(tokenizer)
    return PlainChat()

"""Answers for a test set: batched generation, each answer cut at end-of-text and at the next prompt marker.

Results go to a JSON list: every input entry with a ``model_response`` field beside its reference
``output``. The file is rewritten atomically after every batch, so an interrupted run (Ctrl-C, a
crash, ``kill -9``) loses at most one batch, and running the same command again continues where it
stopped: entries that already have a ``model_response`` are kept. Seeded sampling is per prompt (see
:func:`gptlab.model.generate.stream_generate`), so an answer does not depend on the batch it was
generated in, and a resumed run writes what an uninterrupted one would have.

Prompts: an explicit ``--style`` first, else the run's ``prompt_style.json`` (GPT-2 fine-tunes), else
the model tokenizer's chat template (instruct models, runs trained on chat data), else Alpaca. Chat
entries (``{"messages": [...]}``) are prompted with the conversation up to their last assistant
message, whose content is the reference answer; entries without an assistant message are prompted
with all their messages. Under a chat template an ``{instruction, input}`` entry is one user message,
the instruction followed by a blank line and the input, as a prompt style without an input field
formats it. Answers end at the tokenizer's stop ids (EOS, ``<|endoftext|>``, generation_config's
ids) and the template's end-of-turn token, or at the style's stop markers.

An existing output file is only continued or (``--overwrite``) replaced when it is one this command
wrote: a JSON list of entries with answers. Anything else (the data file, a run's own files, the
scores of ``instruct eval``, a file that is not JSON) is refused, even with ``--overwrite``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from gptlab.data.prompts import ALPACA, PromptStyle, get_style, load_style
from gptlab.errors import GptlabError
from gptlab.finetune.instruct.data import is_chat_entry
from gptlab.io import atomic_write_text
from gptlab.model.generate import SamplingConfig, stream_generate
from gptlab.data.chat_format import TemplateChat, encode_chat, stop_ids_of

RESPONSE_FIELD = "model_response"
# How often (in new tokens) the decoded answers are checked for a stop marker; checking decodes text,
# so not at every token.
_CHECK_EVERY = 8


def style_for_model(model_spec: str, style: str | None = None) -> PromptStyle:
    """The style to prompt ``model_spec`` with: ``style`` if given, else the model folder's, else Alpaca."""
    if style:
        return get_style(style)
    path = Path(model_spec)
    saved = load_style(path) if path.is_dir() else None
    return saved or ALPACA


def prompt_format_for(model_spec: str, tokenizer, style: str | None = None) -> PromptStyle | TemplateChat:  # noqa: ANN001
    """How to prompt ``model_spec``: ``style`` if given, else the folder's prompt_style.json, else
    ``tokenizer``'s chat template, else Alpaca (the book's default, for GPT-2 models)."""
    if style or not getattr(tokenizer, "chat_template", None):
        return style_for_model(model_spec, style)
    path = Path(model_spec)
    saved = load_style(path) if path.is_dir() else None
    return saved or TemplateChat.from_tokenizer(tokenizer, name=f"--model {model_spec} chat template")


def entry_messages(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """The messages that prompt for ``entry``'s answer.

    A chat entry: its messages before the last assistant message (all of them when it has none). An
    instruction entry: one user message, the instruction and (after a blank line) the input.
    """
    if is_chat_entry(entry):
        messages = entry["messages"]
        last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=len(messages))
        return messages[:last]
    text = entry["instruction"]
    if entry.get("input"):
        text = f"{text}\n\n{entry['input']}"
    return [{"role": "user", "content": text}]


def encode_prompt(fmt: PromptStyle | TemplateChat, tokenizer, entry: dict[str, Any]) -> list[int]:  # noqa: ANN001
    """The prompt ids for ``entry`` under ``fmt`` (see :func:`entry_messages`).

    A prompt style formats an instruction entry with its own template (special-token text encoded as
    plain text, as in training), a chat entry with its chat format. A chat template's prompt is
    encoded with special tokens allowed after its messages are checked for special-token text
    (:class:`~gptlab.data.chat_format.TemplateChat`), as ``gptlab serve`` does.
    """
    if isinstance(fmt, PromptStyle) and not is_chat_entry(entry):
        return tokenizer.encode_ordinary(fmt.format(entry["instruction"], entry.get("input") or ""))
    return encode_chat(fmt, tokenizer, entry_messages(entry))


def _cut(style: Any, text: str) -> str:
    """``text`` up to the first of the format's stop markers, stripped of surrounding whitespace."""
    end = len(text)
    for marker in getattr(style, "stop", ()):
        at = text.find(marker)
        if 0 <= at < end:
            end = at
    return text[:end].strip()


def generate_answers(
    model,
    tokenizer,
    style: PromptStyle | TemplateChat,
    prompts: list[str] | list[list[int]],
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_k: int | None = None,
    seed: int | None = None,
    stop_ids: tuple[int, ...] | None = None,
) -> list[str]:
    """One batch: each prompt's answer, generated together (left padding), cut at stop ids and stop markers.

    ``prompts`` are texts (encoded as ordinary text) or token ids (:func:`encode_prompt`). An answer
    ends at any of ``stop_ids`` (default: the tokenizer's ``stop_ids`` and the format's own, e.g. a
    chat template's end-of-turn token), never included, or at a stop marker of ``style`` in its text.
    Generation stops early once every answer has ended. A prompt and answer longer than the context
    slide through it, as the book's ``generate`` does (the model sees the last ``context_length``
    tokens). With ``temperature`` > 0 and a ``seed``, each prompt samples from its own generator
    seeded with ``seed``: its answer is the same in any batch.
    """
    if stop_ids is None:
        stop_ids = tuple(dict.fromkeys([*tokenizer.stop_ids, *stop_ids_of(style)]))
    ends = set(stop_ids)
    ids = [tokenizer.encode_ordinary(p) if isinstance(p, str) else list(p) for p in prompts]
    new: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    sampling = SamplingConfig(temperature=temperature, top_k=top_k, seed=seed)
    # stream_generate knows one end id; the others are watched here (a finished row's later tokens are ignored).
    steps = stream_generate(model, ids, max_new_tokens, eos_id=stop_ids[0] if stop_ids else None, sampling=sampling)
    for count, tokens in enumerate(steps, 1):
        for row, tok in enumerate(tokens.tolist()):
            if done[row]:
                continue
            if tok in ends:
                done[row] = True
            else:
                new[row].append(tok)
        if count % _CHECK_EVERY == 0 and style.stop:
            for row in range(len(prompts)):
                text = tokenizer.decode(new[row])
                if not done[row] and _cut(style, text) != text.strip():
                    done[row] = True
        if all(done):
            break
    return [_cut(style, tokenizer.decode(tokens)) for tokens in new]


def _is_answers_file(data: Any) -> bool:
    """Whether parsed JSON is what this command writes: a list of entries, at least one with an answer.

    A file is written only after a batch is answered, so ours always holds an answer (or no entries at
    all); a data file of the same shape holds none.
    """
    return isinstance(data, list) and all(isinstance(e, dict) for e in data) and (
        not data or any(isinstance(e.get(RESPONSE_FIELD), str) for e in data))


def _os_reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def check_output_file(out: Path, flag: str = "--out", source: Path | None = None, source_flag: str = "--data") -> None:
    """Fail now, in one line naming ``flag``, where writing the JSON file ``out`` would fail later.

    ``out`` must not be a folder nor the input file ``source`` (named by ``source_flag``), and its
    folder must exist or be creatable, and writable. Nothing is left behind by the check.
    """
    if source is not None and out.exists() and source.exists() and out.samefile(source):
        raise GptlabError(f"{flag} {out}: is the {source_flag} file; write to another file")
    if out.is_dir():
        raise GptlabError(f"{flag} {out}: is a folder; expected the path of a JSON file")
    folder = out.parent
    anchor = folder.absolute()
    while not anchor.exists():
        anchor = anchor.parent
    if not anchor.is_dir():
        raise GptlabError(f"{flag} {out}: cannot create the folder {folder}: {anchor} is a file")
    # A real probe, not os.access: as root, access() says yes where mkdir fails (/proc), and it
    # knows nothing of read-only mounts.
    try:
        with tempfile.TemporaryFile(dir=anchor):
            pass
    except OSError as exc:
        where = f"cannot write in {folder}" if anchor == folder.absolute() else f"cannot create the folder {folder}"
        raise GptlabError(f"{flag} {out}: {where} ({_os_reason(exc)})") from None


def _check_out(out: Path, overwrite: bool, data_path: Path | None) -> list[Any] | None:
    """Fail now, in one line, where writing ``out`` would fail or replace a file that is not ours.

    Returns the parsed answers already in ``out`` to continue from (None when there are none, or
    with ``overwrite``). Nothing is written.
    """
    check_output_file(out, "--out", data_path, "--data")
    if not out.exists():
        return None
    refuse = "refusing to replace it, even with --overwrite; delete it yourself or choose another --out"
    try:
        previous = json.loads(out.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise GptlabError(f"--out {out}: exists but is not readable JSON ({exc}); {refuse}") from None
    if not _is_answers_file(previous):
        raise GptlabError(f"--out {out}: exists and is not an answers file of gptlab instruct generate "
                          f"(a JSON list of entries with {RESPONSE_FIELD!r}); {refuse}")
    return None if overwrite else previous


def _write(out: Path, results: list[dict[str, Any]]) -> None:
    """Replace ``out`` atomically with ``results``; a failure (disk full, ...) is one line naming --out."""
    try:
        atomic_write_text(out, json.dumps(results, indent=2, ensure_ascii=False))
    except OSError as exc:
        raise GptlabError(f"--out {out}: cannot write it ({_os_reason(exc)})") from None


def _merge_previous(out: Path, previous: list[dict[str, Any]], entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Entries with the answers an earlier (interrupted) run wrote to ``out``; refuses a different data set."""
    same = len(previous) == len(entries) and all(
        p.get("instruction") == e.get("instruction") and p.get("input", "") == e.get("input", "")
        and p.get("messages") == e.get("messages")
        for p, e in zip(previous, entries)
    )
    if not same:
        raise GptlabError(
            f"{out}: holds answers for different entries than --data; pass --overwrite to replace it, or another --out"
        )
    merged = []
    for p, e in zip(previous, entries):
        entry = dict(e)
        if isinstance(p.get(RESPONSE_FIELD), str):
            entry[RESPONSE_FIELD] = p[RESPONSE_FIELD]
        merged.append(entry)
    return merged


def generate_responses(
    model_spec: str,
    entries: list[dict[str, Any]],
    out: str | os.PathLike,
    style: str | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_k: int | None = None,
    seed: int | None = 123,
    overwrite: bool = False,
    progress: bool = True,
    device: str = "auto",
    dtype: torch.dtype | None = None,
    log: Callable[[str], None] = print,
    data_path: str | os.PathLike | None = None,
    quantize: str | None = None,
    group_size: int = 64,
) -> dict[str, Any]:
    """Answer every entry (an instruction or a chat, see the module) and write ``out`` (resumable); returns a summary.

    ``data_path`` is the file the entries came from: never written, even when ``out`` names it.
    ``quantize``/``group_size``: weight-only int8/int4 linear layers (CPU), as ``load_model`` takes them.
    Settings, ``out`` and the place it goes to are checked before the model is loaded.
    """
    from gptlab.model.device import pick_device
    from gptlab.model.load import load_model

    if batch_size <= 0:
        raise GptlabError(f"--batch-size must be positive, got {batch_size}")
    if max_new_tokens <= 0:
        raise GptlabError(f"--max-new-tokens must be positive, got {max_new_tokens}")
    SamplingConfig(temperature=temperature, top_k=top_k, seed=seed).check(max_new_tokens, flags=True)
    out = Path(out).expanduser()
    previous = _check_out(out, overwrite, Path(data_path).expanduser() if data_path is not None else None)
    results = [dict(e) for e in entries]
    for r in results:
        r.pop(RESPONSE_FIELD, None)  # a stale answer in the input is not this model's
    if previous is not None:
        results = _merge_previous(out, previous, entries)
    pending = [i for i, r in enumerate(results) if RESPONSE_FIELD not in r]
    resumed = len(results) - len(pending)
    if resumed:
        log(f"continuing {out}: {resumed} of {len(results)} answers already there")
    summary = {"out": str(out), "total": len(results), "resumed": resumed, "generated": 0}
    if not pending:
        _write(out, results)
        return summary

    target = pick_device(device)
    if quantize is not None and target.type != "cpu":
        raise GptlabError(f"--quantize runs on the CPU (PyTorch's int8/int4 CPU kernels); use --device cpu, not {target}")
    model, tokenizer = load_model(model_spec, dtype=dtype, quantize=quantize, group_size=group_size)
    if getattr(model, "quantization", None) and target.type != "cpu":  # a gptlab quantize folder, a Q4_0 file
        raise GptlabError(f"--model {model_spec}: its int8/int4 weights run on the CPU (PyTorch's CPU kernels); "
                          f"use --device cpu, not {target}")
    model = model.to(target).eval()
    prompt_style = prompt_format_for(model_spec, tokenizer, style)
    prompts: dict[int, list[int]] = {}
    for i in pending:  # all before the first batch: a bad entry fails now, not after an hour of answers
        try:
            prompts[i] = encode_prompt(prompt_style, tokenizer, results[i])
        except GptlabError as exc:
            raise GptlabError(f"entry {i}: {exc}") from None
    # Similar lengths together: less left padding to compute through. Order in the file is unchanged.
    pending.sort(key=lambda i: len(prompts[i]))

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(results), initial=resumed, unit="answer", file=sys.stderr, desc="generate")
    try:
        for start in range(0, len(pending), batch_size):
            batch = pending[start : start + batch_size]
            with torch.inference_mode():
                answers = generate_answers(model, tokenizer, prompt_style, [prompts[i] for i in batch],
                                           max_new_tokens, temperature, top_k, seed)
            for i, answer in zip(batch, answers):
                results[i][RESPONSE_FIELD] = answer
            summary["generated"] += len(batch)
            _write(out, results)
            if bar is not None:
                bar.update(len(batch))
    finally:
        if bar is not None:
            bar.close()
    return summary

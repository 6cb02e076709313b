"""Scoring a responses file: automatic scores for every answer, then (optionally) an LLM judge.

The scored file (``--out``) holds ``{"summary": ..., "entries": [...]}``: each entry with its
``scores`` and, once judged, ``judge_reply`` and ``judge_score`` (None when the reply was not an
integer from 0 to 100; ``judge_error`` says why when the endpoint refused that one request). It is rewritten atomically after every judged answer, so when the judge
endpoint dies the answers judged so far are kept, and running the command again judges only the rest.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

from gptlab.errors import GptlabError
from gptlab.finetune.instruct.data import load_examples, reference_answer
from gptlab.finetune.instruct.generate import RESPONSE_FIELD
from gptlab.finetune.instruct.judge import (
    ChatJudge,
    JudgeRejected,
    JudgeUnavailable,
    histogram,
    judge_prompt,
    parse_score,
)
from gptlab.finetune.instruct.metrics import score_entry
from gptlab.io import atomic_write_text


def load_responses(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Entries of a responses file (``gptlab instruct generate`` output); each needs output and model_response."""
    if not Path(path).expanduser().is_file():
        raise GptlabError(f"--responses {str(path)!r}: no such file (write it with gptlab instruct generate)")
    entries = load_examples(path)
    for i, e in enumerate(entries):
        if not isinstance(e.get(RESPONSE_FIELD), str):
            raise GptlabError(
                f"{path}: entry {i}: field {RESPONSE_FIELD!r} is missing or not a string "
                "(write it with gptlab instruct generate)"
            )
    return entries


def _previous_judgements(out: Path, entries: list[dict[str, Any]], judge_model: str) -> dict[int, dict]:
    """Judge results already in ``out`` for the same answers and judge model (a resumed evaluation)."""
    try:
        saved = json.loads(out.read_text(encoding="utf-8"))
        old = saved["entries"]
        if saved["summary"].get("judge", {}).get("model") != judge_model or len(old) != len(entries):
            return {}
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    kept = {}
    for i, (o, e) in enumerate(zip(old, entries)):
        same_task = all(o.get(k) == e.get(k) for k in ("output", "instruction", "input", "messages")) \
            if isinstance(o, dict) else False
        if same_task and "judge_reply" in o and o.get(RESPONSE_FIELD) == e[RESPONSE_FIELD]:
            reply = o["judge_reply"]
            kept[i] = {"judge_reply": reply, "judge_score": parse_score(reply) if isinstance(reply, str) else None}
            if "judge_error" in o:
                kept[i]["judge_error"] = o["judge_error"]
    return kept


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def evaluate_responses(
    responses: str | os.PathLike,
    out: str | os.PathLike | None = None,
    judge_url: str | None = None,
    judge_model: str | None = None,
    judge_timeout: float = 120.0,
    api_key: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Score every answer in ``responses``; judge them too when ``judge_url`` is given. Returns the summary.

    The summary's ``judge.error`` is set (and the run is otherwise complete) when the endpoint went
    away or stopped speaking the chat API; the entries judged until then are counted and saved.
    """
    if (judge_url is None) != (judge_model is None):
        raise GptlabError("--judge-url and --judge-model go together (e.g. --judge-url http://localhost:11434 "
                          "--judge-model llama3)")
    path = Path(responses)
    entries = [dict(e) for e in load_responses(path)]
    out = Path(out) if out else path.with_name(path.stem + "-scored.json")
    for i, e in enumerate(entries):
        reference = reference_answer(e)  # a chat entry's: its last assistant message
        if reference is None:
            raise GptlabError(f"{path}: entry {i} has no reference answer (no output, or no assistant message)")
        e["scores"] = score_entry(e[RESPONSE_FIELD], reference)
    summary: dict[str, Any] = {"responses": str(path), "out": str(out), "n": len(entries)}
    for name in ("exact_match", "token_f1", "rouge_l"):
        summary[name] = _mean([e["scores"][name] for e in entries])

    def save() -> None:
        atomic_write_text(out, json.dumps({"summary": summary, "entries": entries}, indent=2, ensure_ascii=False))

    if judge_url is not None:
        judge = ChatJudge(judge_url, judge_model, timeout=judge_timeout, api_key=api_key)
        previous = _previous_judgements(out, entries, judge_model) if out.exists() else {}
        for i, result in previous.items():
            entries[i].update(result)
        info: dict[str, Any] = {"url": judge.url, "model": judge_model, "error": None}
        summary["judge"] = info
        todo = [i for i in range(len(entries)) if i not in previous]
        if previous:
            log(f"continuing {out}: {len(previous)} of {len(entries)} answers already judged")
        bar = None
        if progress and todo:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(entries), initial=len(previous), unit="answer", file=sys.stderr, desc="judge")
        try:
            for i in todo:
                try:
                    reply = judge.complete(judge_prompt(entries[i]))
                except JudgeRejected as exc:  # this answer only: record why, go on with the next
                    reply = None
                    entries[i]["judge_error"] = str(exc)
                except JudgeUnavailable as exc:
                    info["error"] = str(exc)
                    break
                entries[i]["judge_reply"] = reply
                entries[i]["judge_score"] = parse_score(reply) if reply is not None else None
                _judge_summary(info, entries)
                save()
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        _judge_summary(info, entries)
    save()
    return summary


def _judge_summary(info: dict[str, Any], entries: list[dict[str, Any]]) -> None:
    """Fill counts, average and histogram from the entries judged so far."""
    judged = [e for e in entries if "judge_reply" in e]
    scores = [e["judge_score"] for e in judged if e.get("judge_score") is not None]
    rejected = sum("judge_error" in e for e in judged)
    info.update({
        "judged": len(judged),
        "scored": len(scores),
        "unscorable": len(judged) - len(scores) - rejected,  # replies that were not an integer 0-100
        "rejected": rejected,  # requests the endpoint refused (e.g. beyond its context)
        "not_judged": len(entries) - len(judged),
        "average": _mean(scores),
        "histogram": histogram(scores),
    })

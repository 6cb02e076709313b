"""Continuous batching: one scheduler thread decodes every active request together.

Requests arrive from any thread (:meth:`Engine.submit`) and wait in a queue. The scheduler loop:

1. admits waiting requests while slots are free: each prompt is *prefilled* on its own (one forward
   pass over the prompt into a batch-1 :class:`~gptlab.model.KVCache`), its first token is sampled,
   and its keys/values join the shared :class:`~gptlab.serve.slots.SlotCache`;
2. runs one decode step for all active rows at once (one forward pass, one new token per row);
3. samples each row with its own settings (temperature, top_p, its own seeded generator), turns the
   token into text (stop strings, EOS, max_tokens), and frees the rows that finished or whose client
   went away.

So a request never waits for another to finish, only for the current step; and the model reads its
weights once per step for all rows, which is where the throughput of batching comes from. A request's
greedy output is the same as :func:`gptlab.model.generate` gives for it alone (tested), and a seeded
request samples the same tokens whatever else is in the batch.
"""

from __future__ import annotations

import itertools
import queue
import random
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from gptlab.errors import GptlabError
from gptlab.model.generate import SamplingConfig
from gptlab.model.kv_cache import KVCache
from gptlab.serve.slots import SlotCache
from gptlab.serve.text import TextStream
from gptlab.tokenizer import Tokenizer


# The longest prompt + completion served per request unless the caller says otherwise. The slot cache
# is allocated up front for every slot at this length, and published models have context windows of
# 32k to 128k tokens: llama-3.2-1b's 131,072 positions take 4 GiB of float32 keys and values per slot,
# 32 GiB for 8 slots. GPT-2 (1,024) and the small presets are below the cap and keep their whole window.
DEFAULT_MAX_CONTEXT = 4096


@dataclass(frozen=True)
class SamplingParams(SamplingConfig):
    """How one request is decoded: the sampling settings (OpenAI's defaults) and when to stop.

    ``temperature`` 0 is greedy; ``top_p`` 1 keeps the whole distribution. Construct it with keywords.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 16
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    # Token ids that end this request besides the engine's own (a chat template's end-of-turn token).
    stop_ids: tuple[int, ...] = ()
    # Log-probabilities: None for none; k >= 0 reports each generated token's log-probability and the
    # k most likely alternatives at its position (OpenAI's ``logprobs``). They are the model's own
    # distribution, before temperature and top_p (as vLLM and OpenAI report them).
    logprobs: int | None = None
    # Also score the prompt (OpenAI's ``echo`` with ``logprobs``): one prefill over every position. With
    # it, ``max_tokens`` may be 0: the prompt is scored and nothing is generated.
    prompt_logprobs: bool = False


@dataclass(frozen=True)
class TokenLogprob:
    """One token's log-probability, and the ``top`` most likely tokens at its position (id, logprob)."""

    id: int
    logprob: float | None  # None for a prompt's first token: nothing predicts it
    top: tuple[tuple[int, float], ...] = ()


class ContextLengthExceeded(GptlabError):
    """A prompt plus the tokens asked for is longer than the model's context window."""

    def __init__(self, n_prompt: int, max_tokens: int, context_length: int) -> None:
        # OpenAI's wording: the HTTP API returns this message as it is.
        super().__init__(
            f"This model's maximum context length is {context_length} tokens. However, you requested "
            f"{n_prompt + max_tokens} tokens ({n_prompt} in the prompt, {max_tokens} for the completion). "
            "Please reduce the length of the prompt or max_tokens."
        )
        self.n_prompt = n_prompt
        self.max_tokens = max_tokens
        self.context_length = context_length


def check_fits(n_prompt: int, max_tokens: int, context_length: int) -> None:
    """Raise :class:`ContextLengthExceeded` unless ``n_prompt`` + ``max_tokens`` tokens fit ``context_length``.

    The engine relies on it: a request that fits never fills its slot's whole context, so the slot
    cache always has a padding column to spare (see :mod:`gptlab.serve.slots`).
    """
    if n_prompt + max_tokens > context_length:
        raise ContextLengthExceeded(n_prompt, max_tokens, context_length)


@dataclass
class Event:
    """What a request's queue receives: ``text`` pieces, then one ``done`` (or ``error``).

    With ``prompt_logprobs``, a ``prompt`` event comes first, carrying the prompt's scores. With
    ``logprobs``, each ``text`` event carries the tokens generated since the previous one (a piece of
    text may take several tokens, and a token's bytes may wait for the next to complete a character).
    """

    kind: str  # "prompt", "text", "done" or "error"
    tag: int = 0
    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    logprobs: list[TokenLogprob] | None = None


_ids = itertools.count(1)


@dataclass(eq=False)
class Request:
    """One sequence being generated. Read :attr:`events`; call :meth:`cancel` to give up on it."""

    prompt: list[int]
    params: SamplingParams
    events: queue.Queue
    tag: int = 0
    # Requests of one group (e.g. the prompts of one HTTP request) share the engine's per-group cap.
    group: object = None
    id: int = field(default_factory=lambda: next(_ids))
    tokens: list[int] = field(default_factory=list)  # generated ids (EOS not included)
    completion_tokens: int = 0
    finish_reason: str | None = None
    _cancelled: threading.Event = field(default_factory=threading.Event)
    _stream: TextStream | None = None
    _generator: torch.Generator | None = None
    _scores: list[TokenLogprob] = field(default_factory=list)  # logprobs not yet sent with a text event

    def cancel(self) -> None:
        """Stop generating (e.g. the client disconnected); the slot is freed before the next step."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` was called."""
        return self._cancelled.is_set()


class Engine:
    """Serve ``model`` to many concurrent requests with up to ``max_batch`` sequences decoded together.

    ``max_context`` caps the tokens (prompt + completion) of one request, and so the slot cache's length
    per slot: by default the model's context length, at most :data:`DEFAULT_MAX_CONTEXT`. Requests
    longer than :attr:`context_length` are refused with :class:`ContextLengthExceeded`.

    ``eos_id`` says which ids end a sequence: by default (-1) the tokenizer's ``stop_ids`` (its EOS,
    e.g. an instruct model's ``<|im_end|>``/``<|eot_id|>``, ``<|endoftext|>`` and generation_config's
    ids); an id or ids to use instead; None for none. A request's ``stop_ids`` add to them. The id
    that ends a sequence is never turned into text.

    ``compile`` runs the decode steps through :func:`gptlab.model.compiled.compiled_decode_step`;
    :meth:`start` compiles them first (:meth:`warm_up`), so the engine is fast from its first request.
    ``compile="max-autotune"`` runs the whole step compiled ahead of time with the weights frozen
    (fastest with int8 weights; :mod:`gptlab.model.packaged`).
    If compiling fails, the engine warns and decodes with the eager model.

    Fairness: the sequences of one group (one HTTP request's prompts) hold at most ``max_per_group``
    slots at once (default: half the slots, at least 1), and a free slot goes to the waiting group
    that holds the fewest, oldest first. So one request with 64 prompts cannot starve a one-prompt
    request behind it, and two busy clients share the slots evenly.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Tokenizer,
        max_batch: int = 8,
        eos_id: int | Sequence[int] | None = -1,
        max_context: int | None = None,
        compile: bool | str = False,
        max_per_group: int | None = None,
    ) -> None:
        if max_batch < 1:
            raise GptlabError(f"max_batch must be a positive integer, got {max_batch}")
        if max_per_group is not None and max_per_group < 1:
            raise GptlabError(f"max_per_group must be a positive integer, got {max_per_group}")
        if max_context is not None and (not isinstance(max_context, int) or max_context < 2):
            raise GptlabError(f"max_context must be an integer >= 2 (a prompt token and one more), got {max_context!r}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        # What one request may use: the model's window, capped so that the slot cache (allocated now,
        # for every slot) stays a sensible size on long-context models.
        limit = DEFAULT_MAX_CONTEXT if max_context is None else max_context
        self.context_length = min(model.cfg.context_length, limit)
        self.max_batch = max_batch
        self.max_per_group = min(max_batch, max_per_group or max(1, max_batch // 2))
        if isinstance(eos_id, int):
            ends: tuple[int, ...] = tuple(tokenizer.stop_ids) if eos_id == -1 else (eos_id,)
        else:
            ends = () if eos_id is None else tuple(int(i) for i in eos_id)
        self.stop_ids = frozenset(ends)
        self.eos_id = ends[0] if ends else None  # the main one, for callers that want a single id
        self.device = next(model.parameters()).device
        self.cache = SlotCache.for_model(model, max_batch, max_len=self.context_length)
        # A model whose vocabulary is padded past the tokenizer's must never emit the padding ids.
        self._n_vocab = tokenizer.n_vocab if tokenizer.n_vocab < model.cfg.vocab_size else None
        self._rows: list[Request] = []  # row r of the cache belongs to self._rows[r]
        self._pending: list[int] = []  # the token each row feeds at the next step
        self._waiting: deque[Request] = deque()
        self._cv = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.requests_done = 0
        self.tokens_generated = 0
        self.steps = 0
        self.cancelled = 0
        self.peak_batch = 0  # most rows decoded in one step
        self.failures = 0  # prefills or decode steps that raised (their requests got an error event)
        self._step = None  # the compiled decode step, once warm_up() made one
        self._compile = compile

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Engine:
        """Start the scheduler thread (idempotent), compiling the decode step first if asked; returns self."""
        if self._thread is None:
            if self._compile:
                self.warm_up()
            self._thread = threading.Thread(target=self._loop, name="gptlab-engine", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the scheduler after the current step; unfinished requests get an ``error`` event."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        self._fail_all("the server is shutting down")

    @property
    def alive(self) -> bool:
        """Whether the scheduler thread is running."""
        return self._thread is not None and self._thread.is_alive()

    def stats(self) -> dict[str, int]:
        """Counters for ``/health``: active rows, waiting requests, slots, totals."""
        return {
            "active": len(self._rows),
            "waiting": len(self._waiting),
            "slots": self.max_batch,
            "requests_done": self.requests_done,
            "tokens_generated": self.tokens_generated,
            "steps": self.steps,
            "cancelled": self.cancelled,
            "peak_batch": self.peak_batch,
            "failures": self.failures,
        }

    # ------------------------------------------------------------------ requests

    def check_fits(self, n_prompt: int, max_tokens: int, score_only: bool = False) -> None:
        """Raise :class:`GptlabError` unless a prompt of ``n_prompt`` tokens plus ``max_tokens`` fits the context.

        ``score_only`` (a request that scores its prompt) allows ``max_tokens`` 0.
        """
        if n_prompt < 1:
            raise GptlabError("the prompt has no tokens")
        if max_tokens < (0 if score_only else 1):
            raise GptlabError(f"max_tokens must be >= 1, got {max_tokens}")
        check_fits(n_prompt, max_tokens, self.context_length)

    def submit(
        self,
        prompt: Sequence[int],
        params: SamplingParams,
        events: queue.Queue | None = None,
        tag: int = 0,
        group: object = None,
    ) -> Request:
        """Queue a request; its :class:`Event` s arrive on ``events`` (a new queue by default), tagged ``tag``.

        ``events`` may be anything with a ``put`` method (the HTTP server hands events to its event loop).
        Requests submitted with the same ``group`` share the per-group slot cap (None: a group of its own).
        """
        prompt = [int(t) for t in prompt]
        self.check_fits(len(prompt), params.max_tokens, params.prompt_logprobs)
        if self._stopping or self.error is not None or (self._thread is not None and not self.alive):
            raise RuntimeError("the generation engine has stopped")
        req = Request(prompt, params, events if events is not None else queue.Queue(), tag)
        req.group = group if group is not None else req
        seed = params.seed if params.seed is not None else random.getrandbits(63)
        req._generator = torch.Generator(device=self.device).manual_seed(seed)
        req._stream = TextStream(self.tokenizer, params.stop)
        with self._cv:
            self._waiting.append(req)
            self._cv.notify()
        return req

    def stream(self, prompt: Sequence[int], params: SamplingParams) -> Iterator[Event]:
        """Submit and yield the request's events until it is done (cancels it if the caller stops early)."""
        req = self.submit(prompt, params)
        try:
            while True:
                event = req.events.get()
                yield event
                if event.kind != "text":
                    return
        finally:
            if req.finish_reason is None:
                req.cancel()

    def complete(self, prompt: Sequence[int], params: SamplingParams) -> tuple[str, Event]:
        """Submit and wait: the whole text and the final event."""
        parts: list[str] = []
        for event in self.stream(prompt, params):
            if event.kind == "text":
                parts.append(event.text)
            else:
                return "".join(parts), event
        raise RuntimeError("request ended without a final event")  # pragma: no cover

    # ------------------------------------------------------------------ the scheduler

    def _loop(self) -> None:
        try:
            with torch.inference_mode():
                while True:
                    with self._cv:
                        while not self._stopping and not self._waiting and not self._rows:
                            self._cv.wait()
                        if self._stopping:
                            return
                        admitted = self._admit(self.max_batch - len(self._rows))
                    self._drop_cancelled()
                    for req in admitted:
                        if req.cancelled:
                            self._finish(req, "cancelled")
                            continue
                        try:
                            self._prefill(req)
                        except Exception as exc:  # noqa: BLE001 - e.g. out of memory on a long prompt
                            self._fail(req, f"generation failed: {exc}")
                            self.failures += 1
                    if self._rows:
                        try:
                            self._decode_step()
                        except Exception as exc:  # noqa: BLE001 - fail the batch, keep serving the others
                            self.failures += 1
                            print(f"gptlab serve: a decode step failed: {exc!r}", file=sys.stderr)
                            for req in self._rows:
                                self._fail(req, f"generation failed: {exc}")
                            self._rows.clear()
                            self._pending.clear()
                            self.cache.n = 0
                            self.cache.width = 0
        except BaseException as exc:  # KeyboardInterrupt, SystemExit, or a bug in the loop itself
            self.error = exc
            print(f"gptlab serve: the generation engine stopped: {exc!r}", file=sys.stderr)
            traceback.print_exc()
            self._fail_all(f"the generation engine stopped: {exc}")

    def _admit(self, free: int) -> list[Request]:
        """Take up to ``free`` waiting requests (under the lock): the group holding fewest slots first.

        A group at :attr:`max_per_group` waits; its requests keep their place in the queue. Ties go
        to the oldest request, so single requests are served in arrival order.
        """
        # Only the scheduler thread changes the rows, and it is the caller: counting them here is safe.
        held: dict[object, int] = {}
        for req in self._rows:
            held[req.group] = held.get(req.group, 0) + 1
        admitted: list[Request] = []
        while free > 0 and self._waiting:
            best, best_held = None, self.max_per_group
            for req in self._waiting:
                n = held.get(req.group, 0)
                if n < best_held:
                    best, best_held = req, n
                    if n == 0:
                        break
            if best is None:
                break
            self._waiting.remove(best)
            held[best.group] = best_held + 1
            admitted.append(best)
            free -= 1
        return admitted

    def _prefill(self, req: Request) -> None:
        ids = torch.tensor([req.prompt], dtype=torch.long, device=self.device)
        tmp = KVCache.for_model(self.model, 1, max_len=len(req.prompt))
        if req.params.prompt_logprobs:
            # Every position's logits: position i scores prompt token i + 1.
            all_logits = self.model(ids, kv_cache=tmp)[0]
            scores = [TokenLogprob(req.prompt[0], None)]
            scores += self._score_tokens(all_logits[:-1], req.prompt[1:], req.params.logprobs or 0)
            req.events.put(Event("prompt", req.tag, logprobs=scores))
            if req.params.max_tokens == 0:
                self._finish(req, "length")
                return
            logits = all_logits[-1:]
        else:
            logits = self.model(ids, kv_cache=tmp, last_only=True)[:, -1, :]
        token = self._sample([req], logits)[0]
        if self._emit(req, token):
            return  # finished on its first token: never needs a slot
        self.cache.add(tmp)
        self._rows.append(req)
        self._pending.append(token)

    def _score_tokens(self, logits: torch.Tensor, tokens: Sequence[int], k: int) -> list[TokenLogprob]:
        """Log-probability of ``tokens[i]`` under ``logits[i]``, with the ``k`` most likely tokens there."""
        if not tokens:
            return []
        logits = logits.float()
        if self._n_vocab is not None:
            logits = logits.clone()
            logits[:, self._n_vocab :] = float("-inf")
        lp = torch.log_softmax(logits, dim=-1)
        chosen = lp.gather(1, torch.tensor(list(tokens), device=lp.device).unsqueeze(1)).squeeze(1).tolist()
        if k > 0:
            values, ids = lp.topk(k, dim=-1)
            tops = [tuple(zip(i, v)) for i, v in zip(ids.tolist(), values.tolist())]
        else:
            tops = [()] * len(chosen)
        return [TokenLogprob(int(t), c, top) for t, c, top in zip(tokens, chosen, tops)]

    def _decode_step(self) -> None:
        cache = self.cache
        cache.make_room()
        tokens = torch.tensor(self._pending, dtype=torch.long, device=self.device).unsqueeze(1)
        logits = self._forward_step(tokens, cache.step_mask(), cache.step_positions())
        self.steps += 1
        self.peak_batch = max(self.peak_batch, len(self._rows))
        new = self._sample(self._rows, logits)
        done = []
        for r, (req, token) in enumerate(zip(self._rows, new)):
            self._pending[r] = token
            if self._emit(req, token):
                done.append(r)
        for r in reversed(done):  # highest first: the row moved into r is always a live one
            self._remove_row(r)

    def _forward_step(self, tokens: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Logits ``[n, vocab]`` of one decode step of the active rows, through the compiled step if there is one."""
        cache = self.cache
        if self._step is not None:
            try:
                # A copy of the mask: a new tensor like the warm-up's (a view of the slot cache's mask
                # would bring its size, and for one row its autograd keys, into the compiled guards).
                logits = self._step(tokens, mask.clone(), cache, positions)
            except Exception as exc:  # noqa: BLE001 - a recompilation (new shapes) that failed: go eager
                from gptlab.model.compiled import disable_compiled

                disable_compiled(self.model, exc)
                self._step = None
            else:
                cache.advance(tokens.size(1))  # the step wrote the keys/values; the bookkeeping is ours
                return logits[:, -1, :]
        return self.model(tokens, attention_mask=mask, kv_cache=cache, position_ids=positions,
                          last_only=True)[:, -1, :]

    def warm_up(self) -> bool:
        """Compile the decode step (before :meth:`start`; once); returns whether steps now run compiled.

        One compiled block serves every layer, cache width and number of rows
        (:mod:`gptlab.model.compiled`); the warm-up steps, with one row and with two, compile it and
        run both shapes once (the second reuses the graph). The rows are dummies, freed afterwards. With
        PyTorch's persistent caches warm (a second start on the same model) this takes seconds.
        """
        from gptlab.model.compiled import compile_mode, compiled_decode_step, disable_compiled

        if self._step is not None or self._thread is not None:
            return self._step is not None
        mode = compile_mode(self._compile) or "default"
        self._compile = False  # one attempt, whatever happens
        step = compiled_decode_step(self.model, mode)
        if step is None:
            return False
        cache = self.cache
        # Two positions per row, so that no width or length is the 1 that dynamo would specialise on.
        prompt = max(1, min(2, self.context_length - 2))
        try:
            with torch.inference_mode():  # as in the scheduler loop: grad mode is part of dynamo's guards
                tmp = KVCache.for_model(self.model, 1, max_len=prompt)
                self.model(torch.zeros(1, prompt, dtype=torch.long, device=self.device), kv_cache=tmp)
                for rows in sorted({1, min(2, self.max_batch)}):
                    cache.clear()
                    for _ in range(rows):
                        cache.add(tmp)
                    cache.make_room()
                    tokens = torch.zeros(rows, 1, dtype=torch.long, device=self.device)
                    step(tokens, cache.step_mask().clone(), cache, cache.step_positions())
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 - no C++ compiler, an unsupported platform, ...
            disable_compiled(self.model, exc)
            return False
        finally:
            cache.clear()
        self._step = step
        return True

    def _sample(self, reqs: list[Request], logits: torch.Tensor) -> list[int]:
        """One token per row: a batched argmax for greedy rows, each sampled row with its own generator."""
        out: list[int] = [0] * len(reqs)
        if self._n_vocab is not None:
            logits = logits.clone()
            logits[:, self._n_vocab :] = float("-inf")
        greedy = [r for r, req in enumerate(reqs) if req.params.temperature <= 0.0]
        if greedy:
            best = logits.argmax(dim=-1).tolist()
            for r in greedy:
                out[r] = best[r]
        for r, req in enumerate(reqs):
            if req.params.temperature > 0.0:
                out[r] = int(req.params.sample(logits[r : r + 1], req._generator)[0])
        for r, req in enumerate(reqs):
            if req.params.logprobs is not None:
                req._scores.extend(self._score_tokens(logits[r : r + 1], [out[r]], req.params.logprobs))
        return out

    def _emit(self, req: Request, token: int) -> bool:
        """Account for one new token of ``req``; returns True when the request is finished."""
        req.completion_tokens += 1
        self.tokens_generated += 1
        if req.cancelled:
            self._finish(req, "cancelled")
            return True
        if not req.params.ignore_eos and (token in self.stop_ids or token in req.params.stop_ids):
            req._scores.clear()  # the end token is not part of the answer, nor are its scores
            self._finish(req, "stop")
            return True
        req.tokens.append(token)
        text = req._stream.feed(token)
        if text:
            req.events.put(Event("text", req.tag, text, logprobs=self._take_scores(req)))
        if req._stream.stopped:
            self._finish(req, "stop")
            return True
        if req.completion_tokens >= req.params.max_tokens:
            self._finish(req, "length")
            return True
        return False

    def _finish(self, req: Request, reason: str) -> None:
        req.finish_reason = reason
        if reason == "cancelled":
            self.cancelled += 1
        else:
            tail = req._stream.finish()
            if tail or req._scores:
                req.events.put(Event("text", req.tag, tail, logprobs=self._take_scores(req)))
        self.requests_done += 1
        req.events.put(Event("done", req.tag, finish_reason=reason, prompt_tokens=len(req.prompt),
                             completion_tokens=req.completion_tokens))

    @staticmethod
    def _take_scores(req: Request) -> list[TokenLogprob] | None:
        """The logprobs gathered since the last text event (None when the request asked for none)."""
        if req.params.logprobs is None:
            return None
        scores, req._scores = req._scores, []
        return scores

    def _drop_cancelled(self) -> None:
        for r in range(len(self._rows) - 1, -1, -1):
            if self._rows[r].cancelled:
                self._finish(self._rows[r], "cancelled")
                self._remove_row(r)

    def _remove_row(self, r: int) -> None:
        moved = self.cache.remove(r)
        if moved is not None:
            self._rows[r] = self._rows[moved]
            self._pending[r] = self._pending[moved]
        self._rows.pop()
        self._pending.pop()

    def _fail(self, req: Request, message: str) -> None:
        if req.finish_reason is None:
            req.finish_reason = "error"
            req.events.put(Event("error", req.tag, text=message))

    def _fail_all(self, message: str) -> None:
        with self._cv:
            pending = list(self._waiting) + list(self._rows)
            self._waiting.clear()
        for req in pending:
            self._fail(req, message)


def wait_until(predicate, timeout: float, interval: float = 0.01) -> bool:  # noqa: ANN001
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass; returns its last value."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())

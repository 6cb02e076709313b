"""Text generation: greedy decoding or sampling (temperature, top-k, top-p), batched, streamed, KV-cached.

One loop does it all (:func:`stream_generate`); :func:`generate` collects what it yields.
:class:`SamplingConfig` holds the settings that choose each token (temperature, top-k, top-p, seed)
as one value, for callers that pass them along (the CLI, instruction answers, the server's requests).

* Batches of prompts of different lengths are left-padded, with an attention mask so that padding is
  never attended to and position ids that start at each prompt's first real token.
* Seeded sampling gives every sequence its own random generator, each seeded with ``seed``: a prompt
  draws the same random numbers alone or in any position of any batch, so its text never depends on
  its neighbours (as in the server's engine, one generator per request).
* With the KV cache (the default) the window is processed once and then one token per step. When the
  window is full, absolute position embeddings mean every cached key would have to move to a new
  position, so the cache is refilled from the last ``context_length`` tokens; the output is therefore
  exactly what generation without a cache produces (the book's ``idx[:, -context_size:]`` cropping).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any
from dataclasses import dataclass

import torch

from gptlab.errors import GptlabError
from gptlab.model.kv_cache import KVCache

Prompt = torch.Tensor | Sequence[int] | Sequence[Sequence[int]]


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Set to -inf every logit outside the ``top_k`` largest and outside the nucleus of mass ``top_p``.

    The nucleus is the smallest set of most likely tokens whose probability reaches ``top_p``.
    """
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p (so the first always stays).
        drop_sorted = (probs.cumsum(dim=-1) - probs) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def check_sampling(
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    max_new_tokens: int = 0,
    *,
    flags: bool = False,
) -> None:
    """Raise :class:`GptlabError` for the first unusable sampling setting, naming it.

    ``flags`` names them as command-line flags (``--top-k``) instead of arguments (``top_k``), so a
    command can check its flags with the rules generation itself applies, before loading a model.
    """

    def name(arg: str) -> str:
        return "--" + arg.replace("_", "-") if flags else arg

    if max_new_tokens < 0:
        raise GptlabError(f"{name('max_new_tokens')} must be >= 0, got {max_new_tokens}")
    # `not >= 0` also catches NaN, which would otherwise turn every probability into NaN.
    if not (temperature >= 0.0 and math.isfinite(temperature)):
        raise GptlabError(f"{name('temperature')} must be a finite number >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and top_k <= 0:
        raise GptlabError(f"{name('top_k')} must be a positive integer, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise GptlabError(f"{name('top_p')} must be in (0, 1], got {top_p}")


def sample_next(
    logits: torch.Tensor,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
) -> torch.Tensor:
    """Pick one token per row of ``logits`` ``[B, vocab]``; returns ``[B]`` token ids.

    Temperature 0 is greedy (argmax). Otherwise the logits are divided by the temperature, filtered
    by :func:`filter_logits`, and sampled from. ``generator`` is one generator for the whole batch,
    or one per row (a list of ``B``): then each row draws only from its own, so what a row samples
    does not depend on the other rows.
    """
    check_sampling(temperature, top_k, top_p)
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    logits = filter_logits(logits.float() / temperature, top_k, top_p)
    probs = torch.softmax(logits, dim=-1)
    if generator is None or isinstance(generator, torch.Generator):
        return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)
    if len(generator) != probs.size(0):
        raise GptlabError(f"generator: expected one per row ({probs.size(0)}), got {len(generator)}")
    # Filtering and softmax stay batched; only the draw is per row (a vocab-sized multinomial, cheap
    # next to the forward pass that produced the logits).
    return torch.cat([torch.multinomial(probs[r : r + 1], num_samples=1, generator=g).view(1)
                      for r, g in enumerate(generator)])


@dataclass(frozen=True)
class SamplingConfig:
    """How each new token is chosen: greedy at ``temperature`` 0, else sampled from the filtered distribution.

    ``top_k`` and ``top_p`` filter as :func:`filter_logits` does (None: no filter); ``seed`` makes
    sampling reproducible (see :func:`stream_generate`: one generator per sequence, each seeded with it).
    """

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None

    def check(self, max_new_tokens: int = 0, *, flags: bool = False) -> None:
        """Raise :class:`GptlabError` for the first unusable setting (see :func:`check_sampling`)."""
        check_sampling(self.temperature, self.top_k, self.top_p, max_new_tokens, flags=flags)

    def sample(
        self, logits: torch.Tensor, generator: torch.Generator | Sequence[torch.Generator] | None = None
    ) -> torch.Tensor:
        """One token per row of ``logits`` ``[B, vocab]`` with these settings (see :func:`sample_next`)."""
        return sample_next(logits, self.temperature, self.top_k, self.top_p, generator)


def _sampling_config(
    sampling: SamplingConfig | None,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    seed: int | None,
) -> SamplingConfig:
    """The settings of a generate call: ``sampling`` when given, else the separate keyword arguments."""
    loose = SamplingConfig(temperature, top_k, top_p, seed)
    if sampling is None:
        return loose
    if loose != SamplingConfig():
        # Two sources for one setting: say so rather than silently prefer one.
        raise GptlabError("give sampling=SamplingConfig(...) or temperature/top_k/top_p/seed, not both")
    return sampling


def pad_prompts(prompts: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists to one ``[B, T]`` tensor; returns ``(ids, attention_mask)``."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise GptlabError("every prompt needs at least one token")
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.as_tensor(list(prompt), dtype=torch.long)
        mask[row, width - len(prompt) :] = 1
    return ids, mask


def _check_left_padded(mask: torch.Tensor) -> None:
    """Padding must come first in each row: real tokens are contiguous and end the row."""
    if mask.size(1) and not bool(mask[:, -1].all()):
        raise GptlabError("attention_mask: each prompt must end with a real token (pad on the left)")
    if bool((mask[:, 1:] < mask[:, :-1]).any()):
        raise GptlabError("attention_mask: padding must be on the left (0s before 1s in every row)")


def _as_batch(idx: Prompt, attention_mask: torch.Tensor | None, pad_id: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Turn any accepted prompt form into a ``[B, T]`` tensor and its mask (None when nothing is padded)."""
    if not isinstance(idx, torch.Tensor):
        if len(idx) and isinstance(idx[0], int):
            idx = [idx]  # one prompt
        idx, attention_mask = pad_prompts(idx, pad_id)  # type: ignore[arg-type]
    if idx.dim() == 1:
        idx = idx.unsqueeze(0)
    if idx.dim() != 2 or idx.size(1) == 0:
        raise GptlabError(f"prompt tensor must be [B, T] with T >= 1, got shape {tuple(idx.shape)}")
    if attention_mask is not None:
        attention_mask = attention_mask.reshape(idx.shape).long()
        _check_left_padded(attention_mask)
        if bool(attention_mask.all()):
            attention_mask = None  # no padding: lets attention skip the mask entirely
    return idx.long(), attention_mask


@torch.inference_mode()
def stream_generate(
    model: torch.nn.Module,
    idx: Prompt,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    *,
    seed: int | None = None,
    sampling: SamplingConfig | None = None,
    attention_mask: torch.Tensor | None = None,
    use_cache: bool = True,
    pad_id: int | None = None,
    compile: bool | str = False,
) -> Iterator[torch.Tensor]:
    """Generate up to ``max_new_tokens`` tokens, yielding a ``[B]`` tensor of new ids at each step.

    * ``idx``: a ``[B, T]`` (or ``[T]``) tensor, a list of ids, or a list of id lists (left-padded here).
    * ``attention_mask``: ``[B, T]`` for a left-padded tensor prompt (1 = real token).
    * ``temperature``/``top_k``/``top_p``: see :func:`sample_next`; ``seed`` makes sampling reproducible,
      per sequence: each has its own generator seeded with ``seed``, so a prompt samples the same text
      alone or batched with any other prompts.
    * ``sampling``: the same four settings as one :class:`SamplingConfig` (instead of those arguments).
    * ``eos_id``: a sequence that produces it is finished; later steps yield ``pad_id`` for it
      (default ``eos_id``), and the loop stops once every sequence is finished.
    * ``use_cache``: the KV cache (default); without it each step re-reads the whole window.
    * ``compile``: run decode steps through ``torch.compile`` (:mod:`gptlab.model.compiled`): faster
      on CPU after a compilation of about a minute, whose code PyTorch caches on disk for later
      processes (seconds then); numerically equivalent up to float rounding, not bit-identical.
      ``compile="max-autotune"``: the whole step compiled ahead of time with the weights frozen,
      fastest for int8 weights, after minutes the first time (:mod:`gptlab.model.packaged`).
    """
    sampling = _sampling_config(sampling, temperature, top_k, top_p, seed)
    sampling.check(max_new_tokens)
    if pad_id is None:
        pad_id = eos_id if eos_id is not None else 0
    ids, mask = _as_batch(idx, attention_mask, pad_id)
    device = next(model.parameters()).device
    ids = ids.to(device)
    B, ctx = ids.size(0), model.cfg.context_length
    generators = None
    if sampling.seed is not None and sampling.temperature > 0.0:
        # One per sequence, all seeded alike: a row's draws are the same whatever else is in the batch.
        generators = [torch.Generator(device=device).manual_seed(sampling.seed) for _ in range(B)]

    # The whole sequence (prompt + new tokens) lives in one pre-allocated buffer; `n` is its used length.
    n = ids.size(1)
    seq = torch.empty(B, n + max_new_tokens, dtype=torch.long, device=device)
    seq[:, :n] = ids
    full_mask = None
    if mask is not None:
        full_mask = torch.ones(B, n + max_new_tokens, dtype=torch.long, device=device)
        full_mask[:, :n] = mask.to(device)
    # The cache never needs more than the window, nor more than this call's prompt + new tokens.
    # (A compiled step gets a view of the cache, which a spare position keeps strided alike at every step.)
    cache = (KVCache.for_model(model, B, max_len=min(ctx, n + max_new_tokens), spare=int(bool(compile)))
             if use_cache else None)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    next_pos = None  # per-row position of the next token (only needed with padding)

    was_training = model.training
    model.eval()
    compiled_step = None
    if compile and use_cache:
        from gptlab.model.compiled import compile_mode, compiled_decode_step

        compiled_step = compiled_decode_step(model, compile_mode(compile))
    try:
        for _ in range(max_new_tokens):
            if cache is None or cache.length == 0 or cache.length == cache.max_len:
                # (Re)fill from the window: the last `ctx` tokens, as generation without a cache sees them.
                start = max(0, n - ctx)
                window_mask = full_mask[:, start:n] if full_mask is not None else None
                if cache is not None:
                    cache.reset()
                logits = None
                if compiled_step is not None and getattr(compiled_step, "takes_prompts", False):
                    logits = _compiled_decode(model, compiled_step, seq[:, start:n], window_mask, cache, None)
                    if logits is None:  # compilation failed: carry on eagerly
                        compiled_step = None
                if logits is None:
                    logits = model(seq[:, start:n], attention_mask=window_mask, kv_cache=cache, last_only=True)
                if window_mask is not None:
                    next_pos = window_mask.sum(dim=1, keepdim=True)
            else:
                step_mask = full_mask[:, n - cache.length - 1 : n] if full_mask is not None else None
                logits = None
                if compiled_step is not None:
                    logits = _compiled_decode(model, compiled_step, seq[:, n - 1 : n], step_mask, cache, next_pos)
                    if logits is None:  # compilation failed: carry on eagerly
                        compiled_step = None
                if logits is None:
                    logits = model(seq[:, n - 1 : n], attention_mask=step_mask, kv_cache=cache,
                                   position_ids=next_pos, last_only=True)
                if next_pos is not None:
                    next_pos = next_pos + 1
            token = _next_tokens(logits[:, -1, :], sampling, generators, finished)
            if eos_id is not None:
                token = token.masked_fill(finished, pad_id)
                finished |= token == eos_id
            seq[:, n] = token
            n += 1
            yield token
            if eos_id is not None and bool(finished.all()):
                break
    finally:
        model.train(was_training)


def _next_tokens(
    logits: torch.Tensor,
    sampling: SamplingConfig,
    generators: list[torch.Generator] | None,
    finished: torch.Tensor,
) -> torch.Tensor:
    """One token per row; with per-row generators, finished rows draw nothing (their token is replaced anyway)."""
    if generators is None or len(generators) == 1:
        return sampling.sample(logits, generators[0] if generators else None)
    live = (~finished).nonzero().flatten().tolist()
    token = torch.zeros(logits.size(0), dtype=torch.long, device=logits.device)
    if live:
        token[live] = sampling.sample(logits[live], [generators[r] for r in live])
    return token


def _compiled_decode(
    model: torch.nn.Module,
    step,  # noqa: ANN001 - from compiled_decode_step
    token: torch.Tensor,
    mask: torch.Tensor | None,
    cache: KVCache,
    position_ids: torch.Tensor | None,
) -> torch.Tensor | None:
    """One compiled step (a decode step, or a prefill where the step takes prompts); None if compilation failed (it fails on the first call, before running)."""
    # The step writes into the cache but leaves advancing it to us; a copy of the mask keeps the full
    # mask's size out of the compiled graph's guards.
    try:
        logits = step(token, mask.clone() if mask is not None else None, cache, position_ids)
    except (GptlabError, KeyboardInterrupt):
        raise
    except Exception as exc:  # inductor/compiler failures surface here
        from gptlab.model.compiled import disable_compiled

        disable_compiled(model, exc)
        return None
    cache.advance(token.size(1))
    return logits


def generate(model: torch.nn.Module, idx: Prompt, max_new_tokens: int, **options: Any) -> torch.Tensor | list[int] | list[list[int]]:
    """Run :func:`stream_generate` to the end; ``options`` are its keyword arguments (temperature, ...).

    A tensor prompt gives a tensor back: the prompt followed by the new tokens (``pad_id`` after a
    sequence's EOS), ``[B, T + steps]`` (``[T + steps]`` for a 1-D prompt). A list prompt gives, for
    each prompt, the list of its new tokens, stopped before its EOS.
    """
    eos_id = options.get("eos_id")
    steps = list(stream_generate(model, idx, max_new_tokens, **options))
    if isinstance(idx, torch.Tensor):
        batch = idx if idx.dim() == 2 else idx.unsqueeze(0)
        if steps:
            new = torch.stack(steps, dim=1)
            batch = torch.cat([batch.to(new.device), new], dim=1)
        return batch if idx.dim() == 2 else batch[0]
    single = bool(len(idx)) and isinstance(idx[0], int)
    n_prompts = 1 if single else len(idx)
    rows = torch.stack(steps, dim=1).tolist() if steps else [[] for _ in range(n_prompts)]
    results = []
    for tokens in rows:
        if eos_id is not None and eos_id in tokens:
            tokens = tokens[: tokens.index(eos_id)]
        results.append(tokens)
    return results[0] if single else results

"""Continuous batching: requests decoded together give exactly what each gives alone."""

from __future__ import annotations

import random

import pytest
import torch

from gptlab.errors import GptlabError
from gptlab.model.generate import SamplingConfig
from gptlab.serve.engine import ContextLengthExceeded, Engine, SamplingParams, check_fits, wait_until
from gptlab.serve.slots import SlotCache
from gptlab.serve.text import TextStream


def _drain(req) -> list:
    events = []
    while True:
        event = req.events.get(timeout=60)
        events.append(event)
        if event.kind != "text":
            return events


def test_greedy_in_a_batch_equals_generate_alone(model, gpt2_tok):
    """Requests join mid-flight, longer and shorter than the batch, more than the slots, up to the context end.

    Every request's tokens must equal ``model.generate`` for that prompt alone, which also exercises
    the cache moving rows right (a longer prompt joins), left (the window fills) and reusing freed rows.
    """
    rng = random.Random(0)
    ctx = model.cfg.context_length
    engine = Engine(model, gpt2_tok, max_batch=3).start()
    try:
        jobs = []
        for i in range(10):
            p = rng.randrange(1, 50)
            n = ctx - p if i % 3 == 0 else rng.randrange(1, ctx - p + 1)  # some run to the very end
            jobs.append(([rng.randrange(50257) for _ in range(p)], n))
        reqs = []
        for i, (prompt, n) in enumerate(jobs):
            reqs.append(engine.submit(prompt, SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)))
            if i in (0, 4):  # let the batch get going, so later requests join running sequences
                reqs[-1].events.get(timeout=60)
        for req in reqs:
            _drain(req)
        for (prompt, n), req in zip(jobs, reqs):
            assert req.finish_reason == "length"
            assert req.tokens == model.generate(prompt, n), f"prompt of {len(prompt)} tokens, {n} new"
        stats = engine.stats()
        assert stats["peak_batch"] == 3 and stats["active"] == 0
        assert stats["steps"] < sum(n for _, n in jobs) * 0.6  # rows really were decoded together
        assert engine.cache.shifts["right"] > 0 and engine.cache.shifts["left"] > 0
    finally:
        engine.stop()


def test_seeded_sampling_is_the_same_alone_and_batched(model, gpt2_tok):
    """A seeded request draws from its own generator: same tokens as ``generate(seed=...)`` alone."""
    engine = Engine(model, gpt2_tok, max_batch=4).start()
    try:
        prompts = [gpt2_tok.encode(t) for t in ("The cat", "Once upon a time there was", "1 2 3", "Hello")]
        params = [SamplingParams(max_tokens=20, temperature=t, top_p=p, seed=s, ignore_eos=True)
                  for t, p, s in ((0.8, 0.9, 1), (1.2, 1.0, 2), (0.0, 1.0, None), (1.0, 0.5, 3))]
        reqs = [engine.submit(pr, pa) for pr, pa in zip(prompts, params)]
        for req in reqs:
            _drain(req)
        for prompt, pa, req in zip(prompts, params, reqs):
            alone = model.generate(prompt, 20, temperature=pa.temperature, top_p=pa.top_p, seed=pa.seed)
            assert req.tokens == alone
        assert engine.stats()["peak_batch"] >= 2
    finally:
        engine.stop()


def test_eos_stop_strings_and_usage(model, gpt2_tok):
    engine = Engine(model, gpt2_tok, max_batch=2).start()
    try:
        prompt = gpt2_tok.encode("The meaning of life is")
        full = model.generate(prompt, 30)
        text = gpt2_tok.decode(full)
        # A stop string taken from the middle of the greedy answer, spanning a token boundary.
        cut = len(gpt2_tok.decode(full[:10]))
        stop = text[cut - 2 : cut + 3]
        out, done = engine.complete(prompt, SamplingParams(max_tokens=30, temperature=0.0, stop=(stop,)))
        assert done.finish_reason == "stop"
        assert out == text[: text.index(stop)]
        assert done.prompt_tokens == len(prompt) and done.completion_tokens <= 12
        # EOS ends a request: make the model's first greedy token the end-of-text id.
        eos_engine = Engine(model, gpt2_tok, max_batch=1, eos_id=full[0]).start()
        try:
            out, done = eos_engine.complete(prompt, SamplingParams(max_tokens=30, temperature=0.0))
            assert (out, done.finish_reason, done.completion_tokens) == ("", "stop", 1)
        finally:
            eos_engine.stop()
    finally:
        engine.stop()


def test_cancel_frees_the_slot(gpt2_tok, make_tiny):
    engine = Engine(make_tiny(1), gpt2_tok, max_batch=1).start()
    try:
        long = engine.submit([1, 2, 3], SamplingParams(max_tokens=90, temperature=0.0, ignore_eos=True))
        waiting = engine.submit([4, 5], SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True))
        assert long.events.get(timeout=60).kind == "text"
        long.cancel()
        events = _drain(waiting)  # only runs once the single slot is free
        assert events[-1].finish_reason == "length"
        assert long.finish_reason == "cancelled" and len(long.tokens) < 90
        assert wait_until(lambda: engine.stats()["active"] == 0, 10)
        assert engine.stats()["cancelled"] == 1
    finally:
        engine.stop()


def test_requests_that_do_not_fit_are_refused(model, gpt2_tok):
    engine = Engine(model, gpt2_tok, max_batch=1)
    with pytest.raises(GptlabError, match="maximum context length is 96"):
        engine.submit([1] * 90, SamplingParams(max_tokens=7))
    with pytest.raises(GptlabError, match="no tokens"):
        engine.submit([], SamplingParams(max_tokens=1))
    with pytest.raises(GptlabError, match="max_batch"):
        Engine(model, gpt2_tok, max_batch=0)


def test_the_fit_check_counts_prompt_and_completion():
    check_fits(90, 6, 96)  # exactly the context: fits
    check_fits(1, 95, 96)
    with pytest.raises(ContextLengthExceeded) as info:
        check_fits(90, 7, 96)
    assert isinstance(info.value, GptlabError)
    assert (info.value.n_prompt, info.value.max_tokens, info.value.context_length) == (90, 7, 96)
    assert str(info.value) == ("This model's maximum context length is 96 tokens. However, you requested 97 tokens "
                               "(90 in the prompt, 7 for the completion). Please reduce the length of the prompt "
                               "or max_tokens.")
    with pytest.raises(ContextLengthExceeded):
        check_fits(97, 0, 96)


def test_sampling_params_are_sampling_settings_with_openai_defaults():
    params = SamplingParams(max_tokens=5, seed=3)
    assert isinstance(params, SamplingConfig)
    assert (params.temperature, params.top_k, params.top_p, params.seed) == (1.0, None, 1.0, 3)
    assert (params.max_tokens, params.stop, params.ignore_eos) == (5, (), False)


def test_slot_cache_moves_rows_and_keeps_masks():
    """Rows stay right-aligned: the mask marks exactly each row's own positions after every move."""
    cache = SlotCache(n_layers=1, slots=3, n_heads=1, head_dim=1, max_len=8)

    def prefilled(values: list[float]):
        from gptlab.model.kv_cache import KVCache

        kv = KVCache(1, 1, 1, 1, len(values))
        kv.layer(0).update(torch.tensor(values).view(1, 1, -1, 1), torch.tensor(values).view(1, 1, -1, 1))
        kv.advance(len(values))
        return kv

    def row(r: int) -> list[float]:
        keys = cache.keys[0][r, 0, : cache.width, 0]
        return [float(k) for k, m in zip(keys, cache.mask[r, : cache.width]) if m]

    cache.add(prefilled([1, 2]))
    cache.add(prefilled([3, 4, 5, 6]))  # longer: row 0 moves right
    assert cache.width == 4 and row(0) == [1, 2] and row(1) == [3, 4, 5, 6] and cache.shifts["right"] == 1
    assert cache.mask[0, :4].tolist() == [0, 0, 1, 1]
    cache.remove(0)  # the last row moves into row 0
    assert cache.n == 1 and row(0) == [3, 4, 5, 6] and cache.lens[0] == 4
    cache.add(prefilled([7]))
    for _ in range(4):  # four decode steps fill the buffer
        cache.make_room()
        cache.step_mask()
        cache.layer(0).update(torch.full((2, 1, 1, 1), 9.0), torch.full((2, 1, 1, 1), 9.0))
        cache.advance(1)
    assert cache.width == 8 and row(0) == [3, 4, 5, 6, 9, 9, 9, 9] and row(1) == [7, 9, 9, 9, 9]
    assert cache.step_positions().tolist() == [[8], [5]]
    with pytest.raises(ValueError, match="fills the whole context"):
        cache.make_room()
    cache.remove(0)
    cache.make_room()  # the remaining row has 3 positions of padding: moved left
    assert cache.shifts["left"] == 1 and cache.width == 5 and row(0) == [7, 9, 9, 9, 9]


def test_text_stream_never_leaks_stop_prefixes_or_broken_characters(gpt2_tok):
    text = "Héllo wörld 😀! User: more"
    ids = gpt2_tok.encode(text)
    stream = TextStream(gpt2_tok, stop=["\nUser:", "User:"])
    pieces = [stream.feed(t) for t in ids]
    assert "".join(pieces) == "Héllo wörld 😀! " and stream.stopped
    assert all("\ufffd" not in p for p in pieces)  # the emoji's bytes span tokens
    assert not any(p.endswith(("U", "Us", "Use")) for p in pieces)
    # Held-back text is released when generation ends for another reason.
    stream = TextStream(gpt2_tok, stop=["User:"])
    out = "".join(stream.feed(t) for t in gpt2_tok.encode("ok Use")) + stream.finish()
    assert out == "ok Use"


class _Faulty:
    """A model that raises on prompts containing ``bad_id`` and on decode step number ``bad_step``."""

    def __init__(self, model, bad_id: int, bad_step: int) -> None:
        self.model, self.bad_id, self.bad_step, self.steps = model, bad_id, bad_step, 0

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __call__(self, idx, **kwargs):
        if idx.size(1) == 1:
            self.steps += 1
            if self.steps == self.bad_step:
                raise RuntimeError("decode exploded")
        elif bool((idx == self.bad_id).any()):
            raise RuntimeError("prefill exploded")
        return self.model(idx, **kwargs)


def test_a_failing_forward_fails_only_its_requests(model, gpt2_tok):
    engine = Engine(model, gpt2_tok, max_batch=4)
    engine.model = _Faulty(model, bad_id=999, bad_step=3)
    engine.start()
    try:
        params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
        bad = engine.submit([5, 999, 6], params)
        assert _drain(bad)[-1].kind == "error" and bad.finish_reason == "error"
        with engine._cv:  # both admitted together, so both are in the batch when decode step 3 fails
            a, b = engine.submit([1, 2], params), engine.submit([3], params)
        assert _drain(a)[-1].kind == "error" and _drain(b)[-1].text == "generation failed: decode exploded"
        after = engine.submit([1, 2], params)  # the engine keeps serving, with a clean cache
        assert _drain(after)[-1].finish_reason == "length" and after.tokens == model.generate([1, 2], 8)
        assert engine.alive and engine.stats()["failures"] == 2 and engine.stats()["active"] == 0
    finally:
        engine.stop()

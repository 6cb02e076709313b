"""Shared fixtures for the serving tests: a tiny random GPT with GPT-2's tokenizer, and a live server."""

from __future__ import annotations

import time

import pytest
import torch

from gptlab.model import GPT, GPTConfig

API_KEY = "sk-test-key"
SLOW_KEY = "sk-slow-key"  # the key of the `slow_server` fixture
# Small enough that a decode step of 16 rows takes a few milliseconds on one core; GPT-2's vocabulary
# so real text round-trips; a short context so compaction of the slot cache is exercised.
TINY = GPTConfig(vocab_size=50257, context_length=96, emb_dim=32, n_heads=4, n_layers=2, tie_weights=True)


def tiny_model(seed: int = 0, cfg: GPTConfig = TINY) -> GPT:
    """A random tiny GPT in eval mode."""
    torch.manual_seed(seed)
    return GPT(cfg).eval()


@pytest.fixture(scope="session")
def gpt2_tok():
    from gptlab.tokenizer import get_tokenizer

    return get_tokenizer("gpt2")


@pytest.fixture(scope="session")
def make_tiny():
    """The :func:`tiny_model` factory, for tests that need a model of their own."""
    return tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def server(model, gpt2_tok):
    """A real server on a free loopback port, with an API key; closed after the module."""
    from gptlab.serve.engine import Engine
    from gptlab.serve.server import create_server

    engine = Engine(model, gpt2_tok, max_batch=8)
    srv = create_server(engine, "127.0.0.1", 0, api_key=API_KEY, model_name="tiny",
                        max_body_bytes=64 * 1024).start()
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def client(server):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(api_key=API_KEY, base_url=server.url + "/v1", max_retries=0, timeout=60)


class _SlowGPT:
    """Wraps a model so each decode step takes ``delay`` seconds (to disconnect mid-stream reliably)."""

    def __init__(self, model, delay: float) -> None:
        self.model, self.delay = model, delay

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __call__(self, idx, **kwargs):
        time.sleep(self.delay)
        return self.model(idx, **kwargs)


@pytest.fixture()
def slow_engine(model, gpt2_tok):
    """A factory of engines whose decode steps take ``delay`` seconds (requests stay in flight)."""
    from gptlab.serve.engine import Engine

    def make(max_batch: int = 2, delay: float = 0.02) -> Engine:
        engine = Engine(model, gpt2_tok, max_batch=max_batch)
        engine.model = _SlowGPT(model, delay)
        return engine

    return make


@pytest.fixture()
def slow_server(model, gpt2_tok):
    """A server whose decode steps take 20 ms: time to disconnect or press stop mid-answer."""
    from gptlab.serve.engine import Engine
    from gptlab.serve.server import create_server

    engine = Engine(model, gpt2_tok, max_batch=2)
    engine.model = _SlowGPT(model, 0.02)
    srv = create_server(engine, "127.0.0.1", 0, api_key=SLOW_KEY).start()
    yield srv
    srv.close()

"""``gptlab bench serve`` end to end on a tiny preset (the 124M run is the real measurement)."""

from __future__ import annotations

import json

import pytest

from gptlab.bench.serve import TARGET, run_benchmark
from gptlab.app import main
from gptlab.errors import GptlabError


def test_run_benchmark_counts_every_token():
    result, setup = run_benchmark("gpt-nano", "float32", clients=3, requests=1, max_tokens=4, prompt_tokens=5,
                                  repeats=1, stream=True)
    assert set(result.samples) == {"1 client", "3 concurrent clients"}
    assert result.ours > 0 and result.reference > 0 and result.target == TARGET
    assert result.ratio == pytest.approx(result.ours / result.reference)
    assert setup["peak_batch"] >= 2 and setup["stream"] is True
    o = setup["overhead"]
    assert o["http_ms"] > 0 and o["engine_ms"] > 0 and o["overhead_ms"] == pytest.approx(o["http_ms"] - o["engine_ms"],
                                                                                         abs=1e-2)
    assert o["met"] == (o["overhead_ms"] < o["target_ms"])


def test_cli_json_and_bad_flags(capsys):
    code = main(["bench", "serve", "--preset", "gpt-nano", "--clients", "2", "--requests", "1", "--max-tokens", "3",
                 "--repeats", "1", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["target"] == "serve" and out["results"][0]["unit"] == "tokens/s"
    assert out["results"][0]["name"] == "serve 2 clients vs 1" and out["setup"]["clients"] == 2
    with pytest.raises(GptlabError, match="--clients must be a positive integer"):
        run_benchmark("gpt-nano", clients=0)
    with pytest.raises(GptlabError, match="must fit the 128-token context"):
        run_benchmark("gpt-nano", max_tokens=120, prompt_tokens=10)

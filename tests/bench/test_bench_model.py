"""The model benchmark's bookkeeping (the measurements themselves live in ``gptlab bench model``)."""

from __future__ import annotations

from gptlab.bench.report import Result, format_table, interleaved


def test_contenders_alternate_after_warmup():
    calls: list[str] = []

    def make(name: str, value: float):
        def run() -> float:
            calls.append(name)
            return value

        return run

    samples = interleaved({"a": make("a", 1.0), "b": make("b", 2.0)}, repeats=3, warmup=1)
    assert calls == ["a", "b"] + ["a", "b"] * 3
    assert samples == {"a": [1.0] * 3, "b": [2.0] * 3}


def test_ratio_target_and_table():
    r = Result("generate batch 1", "tokens/s", 90.0, 60.0, "gptlab bf16", "transformers bf16", 1.5)
    assert r.ratio == 1.5 and r.met
    slow = Result("train step fp32", "tokens/s", 120.0, 100.0, "gptlab", "transformers fp32", 1.3)
    assert not slow.met
    table = format_table([r, slow]).splitlines()
    assert "1.50x" in table[1] and "yes" in table[1]
    assert "1.20x" in table[2] and "NO" in table[2]
    assert slow.to_dict()["met"] is False and slow.to_dict()["ratio"] == 1.2


def test_table_columns_stay_apart_for_long_names():
    r = Result("qwen3-0.6b KV cache vs none", "tokens/s", 5.3, 1.2, "gptlab fp32 cache", "gptlab fp32 no cache", 4.0,
               samples={"gptlab fp32 cache": [5.3], "gptlab fp32 no cache": [1.2]})
    lines = format_table([r]).splitlines()
    assert lines[1].startswith("qwen3-0.6b KV cache vs none ")
    assert any(line.strip().startswith("qwen3-0.6b KV cache vs none") and " gptlab fp32 cache" in line for line in lines[3:])

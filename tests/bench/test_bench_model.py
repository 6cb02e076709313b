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


def test_serve_ready_seconds_times_a_real_start_and_stops_the_server():
    """The start comparison's clock: a real ``gptlab serve`` until /health answers; the server is stopped after."""
    import os

    import pytest

    from gptlab.bench.model import serve_ready_seconds
    from gptlab.errors import GptlabError

    def children() -> set[int]:
        """Live (not zombie) processes whose parent is this one, from /proc."""
        found = set()
        for entry in os.listdir("/proc"):
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[1] == str(os.getpid()) and fields[0] != "Z":
                found.add(int(entry))
        return found

    before = children()
    seconds = serve_ready_seconds("gpt-nano", ["--dtype", "float32"], dict(os.environ))
    assert 0 < seconds < 120
    assert children() <= before
    with pytest.raises(GptlabError, match="gptlab serve exited with 2: .*no-such-model"):
        serve_ready_seconds("no-such-model", [], dict(os.environ))

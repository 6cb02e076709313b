"""``gptlab info`` for both model families: shape, exact parameter count, KV cache by key/value heads."""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from gptlab.app import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_llama_preset_json_shows_its_shape_and_grouped_kv_cache(capsys):
    code, out, _ = run(capsys, "info", "--preset", "llama-3.2-1b", "--dtype", "bfloat16", "--json")
    assert code == 0
    info = json.loads(out)
    assert info["parameters"] == 1_235_814_400
    assert info["family"] == "llama"
    shape = info["shape"]
    assert (shape["n_heads"], shape["n_kv_heads"], shape["head_dim"]) == (32, 8, 64)
    assert (shape["norm"], shape["positions"], shape["mlp"]) == ("rmsnorm", "rope", "gated")
    assert shape["rope_theta"] == 500_000.0 and shape["rope_scaling"]["factor"] == 32.0
    # Keys and values of 8 heads of 64 in 16 layers, 2 bytes each: a quarter of what 32 heads would need.
    per_token = 2 * 16 * 8 * 64 * 2
    assert info["kv_cache_bytes_per_token"] == per_token
    assert info["kv_cache_full_context_bytes"] == per_token * 131_072 == info["kv_cache_bytes"]


def test_llama_preset_text(capsys):
    code, out, _ = run(capsys, "info", "--preset", "llama-3.2-1b", "--dtype", "bfloat16")
    assert code == 0
    assert "1,235,814,400 parameters" in out
    assert "family llama (llama)" in out
    assert "32 heads, 8 key/value heads (grouped-query, 4 query heads per key/value head), head_dim 64" in out
    assert "rmsnorm, gated feed-forward (silu), ff_dim 8192" in out
    assert "rope, theta 500,000, llama3 scaling (factor 32" in out
    assert "KV cache/token        32.00 KB" in out
    assert "KV cache full      4,096.00 MB  (1 x 131072 tokens, the full context)" in out


def test_qwen3_text_names_its_export_type_and_qk_norm(capsys):
    code, out, _ = run(capsys, "info", "--preset", "qwen3-0.6b")
    assert code == 0
    assert "596,049,920 parameters" in out and "family llama (qwen3)" in out
    assert "head_dim 128, qkv bias no, q/k norm" in out and "theta 1,000,000" in out


def test_gpt2_shape_has_no_rope_fields(capsys):
    code, out, _ = run(capsys, "info", "--preset", "gpt2", "--json")
    info = json.loads(out)
    assert code == 0 and info["family"] == "gpt2"
    assert info["shape"]["positions"] == "learned" and "rope_theta" not in info["shape"]
    assert info["shape"]["n_kv_heads"] == 12
    assert info["kv_cache_bytes_per_token"] == 2 * 12 * 768 * 4


def test_kv_estimate_matches_a_real_cache(capsys):
    """The per-token and batch figures against what a grouped-query KVCache really allocates."""
    from gptlab.model import GPT, GPTConfig, KVCache

    code, out, _ = run(capsys, "info", "--preset", "llama-nano", "--context", "64", "--batch-size", "3", "--json")
    assert code == 0
    info = json.loads(out)
    model = GPT(GPTConfig.from_dict(info["config"]))
    cache = KVCache.for_model(model, batch_size=3, max_len=64)
    allocated = sum(t.nbytes for t in cache.keys + cache.values)
    assert info["kv_cache_bytes"] == allocated
    assert info["kv_cache_bytes_per_token"] * 3 * 64 == allocated
    assert cache.keys[0].shape[1] == info["shape"]["n_kv_heads"] == 2


def test_list_presets_shows_families_and_exact_counts(capsys):
    code, out, _ = run(capsys, "info", "--list-presets", "--json")
    assert code == 0
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["llama-3.2-1b"]["parameters"] == 1_235_814_400 and rows["llama-3.2-1b"]["n_kv_heads"] == 8
    assert rows["qwen3-0.6b"]["parameters"] == 596_049_920 and rows["qwen3-0.6b"]["hf_type"] == "qwen3"
    assert rows["smollm2-135m"]["parameters"] == 134_515_008
    assert rows["qwen2.5-0.5b"]["hf_type"] == "qwen2" and rows["gpt2"]["family"] == "gpt2"
    code, out, _ = run(capsys, "info", "--list-presets")
    lines = {line.split()[0]: line.split() for line in out.splitlines()[1:] if line.split()}
    assert lines["llama-3.2-1b"][:3] == ["llama-3.2-1b", "llama", "llama"]
    assert lines["llama-3.2-1b"][3] == "1,235,814,400"
    assert lines["qwen3-0.6b"][1:4] == ["llama", "qwen3", "596,049,920"]


def test_info_reads_a_qwen3_folder(capsys, tmp_path):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    hf_cfg = Qwen3Config(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=64)
    hf_cfg.save_pretrained(tmp_path)
    with torch.device("meta"):
        expected = Qwen3ForCausalLM(hf_cfg).num_parameters()
    code, out, _ = run(capsys, "info", "--model", str(tmp_path), "--json")
    info = json.loads(out)
    assert code == 0 and info["parameters"] == expected
    assert info["shape"]["n_kv_heads"] == 2 and info["shape"]["head_dim"] == 16 and info["shape"]["qk_norm"]
    assert info["kv_cache_bytes_per_token"] == 2 * 2 * 2 * 16 * 4


def test_info_does_not_download_a_hub_model(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("GPTLAB_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("GPTLAB_HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: any request fails
    code, _, err = run(capsys, "info", "--model", "qwen3-0.6b")
    assert code == 2 and "not in the cache" in err and len(err.strip().splitlines()) == 1
    assert err.strip().endswith("or see its shape with --preset qwen3-0.6b")


def test_building_the_parser_does_not_import_torch():
    """``gptlab --help`` stays fast: the info verb's presets come from config.py, which needs no torch."""
    probe = "import sys; from gptlab.app import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"

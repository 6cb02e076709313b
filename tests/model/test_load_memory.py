"""Loading a checkpoint keeps peak memory near the file size (no second copy): GPT-2 medium in float32,
and the Llama 3.2 1B shape in bfloat16 (the issue's bar: under 1.3x the file).

The full Llama 3.2 1B (2.47 GB, random weights written by transformers) was measured once the same way:
peak growth 1.003x the file (2,365 MiB for 2,357 MiB). Here it has 2 of its 16 layers, so that the test
reads ~770 MB instead of 2.5 GB and stays quick on a busy CI machine.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys

import pytest
import torch

from gptlab.model import GPT, PRESETS
from gptlab.model.hf import config_to_hf, hf_state_dict

_PROBE = """
import sys, torch
from gptlab.model import GPT
def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
GPT.from_pretrained  # import everything before measuring
before = rss("VmRSS:")
model = GPT.from_pretrained(sys.argv[1])
print(rss("VmHWM:") - before, sum(p.numel() for p in model.parameters()))
"""


_ST_CODES = {torch.float32: "F32", torch.bfloat16: "BF16"}


def _sparse_checkpoint(folder, cfg, dtype: torch.dtype) -> int:
    """A real config.json and safetensors header over a sparse file of zeros (gigabytes on paper, nothing
    written); returns the weight file's size."""
    with torch.device("meta"):
        model = GPT(cfg)
    header, offset = {}, 0
    for name, tensor in hf_state_dict(model):
        size = tensor.numel() * dtype.itemsize
        header[name] = {"dtype": _ST_CODES[dtype], "shape": list(tensor.shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header).encode()
    path = folder / "model.safetensors"
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        f.truncate(8 + len(blob) + offset)
    (folder / "config.json").write_text(json.dumps(config_to_hf(cfg, dtype)))
    return path.stat().st_size


def _peak_growth(folder) -> tuple[int, int]:
    """Peak resident growth (bytes) of GPT.from_pretrained(folder) in a fresh process, and its parameter count."""
    out = subprocess.run([sys.executable, "-c", _PROBE, str(folder)], capture_output=True, text=True, check=True)
    peak_growth, n_params = map(int, out.stdout.split())
    return peak_growth, n_params


@pytest.mark.slow
def test_peak_memory_while_loading_medium(tmp_path):
    cfg = PRESETS["gpt2-medium"].replace(qkv_bias=True, tie_weights=True)
    file_size = _sparse_checkpoint(tmp_path, cfg, torch.float32)
    assert file_size > 1.4e9
    peak_growth, n_params = _peak_growth(tmp_path)
    assert n_params == 354_823_168  # gpt2-medium with qkv bias, tied
    assert peak_growth < 1.3 * file_size, f"peak grew {peak_growth / 1e9:.2f} GB for a {file_size / 1e9:.2f} GB file"


@pytest.mark.slow
def test_peak_memory_while_loading_the_llama_3_2_1b_shape_in_bf16(tmp_path):
    """Llama 3.2 1B's widths (128k-token tied embedding, grouped-query attention, 131k-position RoPE with
    llama3 scaling) read in the file's bfloat16: each tensor goes straight from the file into the model."""
    cfg = PRESETS["llama-3.2-1b"].replace(n_layers=2)
    file_size = _sparse_checkpoint(tmp_path, cfg, torch.bfloat16)
    assert file_size > 7.5e8
    peak_growth, n_params = _peak_growth(tmp_path)
    assert n_params == 384_313_344
    assert peak_growth < 1.3 * file_size, f"peak grew {peak_growth / 1e9:.2f} GB for a {file_size / 1e9:.2f} GB file"

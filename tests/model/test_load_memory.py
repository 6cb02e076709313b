"""Loading a gpt2-medium-sized checkpoint keeps peak memory near the file size (no second copy)."""

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


@pytest.mark.slow
def test_peak_memory_while_loading_medium(tmp_path):
    cfg = PRESETS["gpt2-medium"].replace(qkv_bias=True, tie_weights=True)
    with torch.device("meta"):
        model = GPT(cfg)
    # A real safetensors header over a sparse file of zeros: 1.4 GB on paper, nothing to write.
    header, offset = {}, 0
    for name, tensor in hf_state_dict(model):
        size = tensor.numel() * 4
        header[name] = {"dtype": "F32", "shape": list(tensor.shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header).encode()
    path = tmp_path / "model.safetensors"
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        f.truncate(8 + len(blob) + offset)
    (tmp_path / "config.json").write_text(json.dumps(config_to_hf(cfg, torch.float32)))
    file_size = path.stat().st_size
    assert file_size > 1.4e9

    out = subprocess.run([sys.executable, "-c", _PROBE, str(tmp_path)], capture_output=True, text=True, check=True)
    peak_growth, n_params = map(int, out.stdout.split())
    assert n_params == 354_823_168  # gpt2-medium with qkv bias, tied
    assert peak_growth < 1.3 * file_size, f"peak grew {peak_growth / 1e9:.2f} GB for a {file_size / 1e9:.2f} GB file"

"""Stages 3-5: the GPT model, text generation with a KV cache, and GPT-2's pretrained weights.

Names are imported lazily, so that ``gptlab.model.config`` (and the CLI's parser) does not pay for
importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gptlab.lazy import lazy_exports

_EXPORTS = {
    "GPT": "gptlab.model.gpt",
    "GPTConfig": "gptlab.model.config",
    "PRESETS": "gptlab.model.config",
    "KVCache": "gptlab.model.kv_cache",
    "generate": "gptlab.model.generate",
    "stream_generate": "gptlab.model.generate",
    "sample_next": "gptlab.model.generate",
    "load_model": "gptlab.model.load",
    "estimate_memory": "gptlab.model.memory",
    "set_dropout": "gptlab.model.dropout",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from gptlab.model.config import PRESETS, GPTConfig
    from gptlab.model.dropout import set_dropout
    from gptlab.model.generate import generate, sample_next, stream_generate
    from gptlab.model.gpt import GPT
    from gptlab.model.kv_cache import KVCache
    from gptlab.model.load import load_model
    from gptlab.model.memory import estimate_memory


__getattr__ = lazy_exports(__name__, _EXPORTS)

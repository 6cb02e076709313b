"""A compiled decode step: ``torch.compile`` (inductor) with frozen weights, for fast CPU generation.

Generating one token reads every weight once, so a decode step is bound by memory bandwidth and,
in eager mode, by per-operator overhead. Inductor with ``freezing`` treats the weights as constants:
it pre-packs them into oneDNN's blocked layout (faster matrix-vector products, with the bias, GELU
and residual add fused in) and fuses the small element-wise operators between the matmuls.

Two details matter:

* Frozen weights are a copy taken at compile time. Before each generation the parameters' identity,
  storage and version counters are compared with the compiled ones; if they changed (training,
  ``load_state_dict``, ``.to()``), the compiled step is thrown away and rebuilt. Only this module's
  own function is reset (``torch._dynamo.reset_code``), not other compiled code in the process.
* Inductor's pattern matcher would turn the two small attention matmuls back into
  ``scaled_dot_product_attention``, whose CPU kernel is several times slower for a single query
  (see :class:`gptlab.model.attention.CausalSelfAttention`); it is switched off for this graph.

If compilation fails (no C++ compiler, an unsupported platform), generation falls back to the eager
model with a warning.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable

import torch

_KEY_ATTR = "_gptlab_compiled_decode_key"  # in the model's __dict__: never part of its state_dict
_FAILED = "failed"
_INDUCTOR_OPTIONS = {"freezing": True, "pattern_matcher": False}
_compiled: Callable | None = None


def _decode_forward(model, idx, attention_mask, kv_cache, position_ids):  # noqa: ANN001, ANN202
    """The function handed to torch.compile: one decode step (its own code object, reset on its own)."""
    return model(idx, attention_mask=attention_mask, kv_cache=kv_cache, position_ids=position_ids, last_only=True)


def _weights_key(model: torch.nn.Module) -> tuple:
    return tuple((id(p), p.data_ptr(), p.dtype, p._version) for p in model.parameters())


def _forget_compiled() -> None:
    torch._dynamo.reset_code(_decode_forward.__code__)


def compiled_decode_step(model: torch.nn.Module) -> Callable[..., torch.Tensor] | None:
    """A compiled ``step(idx, attention_mask, kv_cache, position_ids) -> logits`` for ``model``.

    None when compiling this model already failed once (the caller then stays eager).
    """
    global _compiled
    key = _weights_key(model)
    seen = model.__dict__.get(_KEY_ATTR)
    if seen == _FAILED:
        return None
    if seen is None:
        # When the model goes away, so do its frozen weights (and a later model reusing its id
        # cannot hit them).
        weakref.finalize(model, _forget_compiled)
    elif seen != key:
        _forget_compiled()  # the weights changed since they were frozen
    model.__dict__[_KEY_ATTR] = key
    if _compiled is None:
        # dynamic=True: one graph serves every cache length (and every batch size above 1).
        _compiled = torch.compile(_decode_forward, dynamic=True)

    def step(idx, attention_mask, kv_cache, position_ids):  # noqa: ANN001, ANN202
        # Freezing only while this graph compiles or runs, so that no other torch.compile in the
        # process (a training loop's, say) freezes weights it is about to update.
        with torch._inductor.config.patch(_INDUCTOR_OPTIONS):
            return _compiled(model, idx, attention_mask, kv_cache, position_ids)

    return step


def disable_compiled(model: torch.nn.Module, error: BaseException) -> None:
    """Remember that compiling ``model`` failed and warn; callers then use the eager model."""
    first_line = str(error).splitlines()[0] if str(error) else ""
    warnings.warn(
        f"torch.compile failed ({type(error).__name__}: {first_line}); generating with the eager model",
        RuntimeWarning,
        stacklevel=3,
    )
    model.__dict__[_KEY_ATTR] = _FAILED

"""A compiled decode step: ``torch.compile`` (inductor) for fast CPU generation, cached across processes.

Generating one token reads every weight once, so a decode step is bound by memory bandwidth and,
in eager mode, by per-operator overhead, which inductor removes by fusing the small element-wise
operators between the matmuls.

Only the transformer block is compiled (regional compilation); the embeddings before it and the
final norm and output head after it run eagerly (:meth:`gptlab.model.GPT.embed`, :meth:`~gptlab.model.GPT.head`).
Every block runs the same code on its own weights and its own part of the cache
(:class:`gptlab.model.kv_cache.LayerCache`, which carries no layer index), so dynamo traces one
block, not n_layers of them, and one graph serves them all: GPT-2 124M, first start 35 s instead of
151 s; ``serve --compile`` ready again on a second start in 8 s instead of 31-43 s; tokens/s unchanged.

What makes a second start fast is PyTorch's own persistent caches (inductor's FX graph cache, which
keeps the generated and compiled C++ code, and the AOT autograd cache). These choices keep them usable:

* No ``freezing``. Freezing bakes the weights into the graph as constants and pre-packs them into
  oneDNN tensors, which cannot be pickled: every start bypassed both caches and recompiled for 36-90 s.
  Here the weights are ordinary graph inputs, so the compiled code reads the current parameters on
  every call: two models of one shape share the code but each gets its own logits, and training or
  ``load_state_dict`` between calls needs no rebuild. The price: without pre-packed weights the batched
  matrix products are slower (GPT-2 fp32, 8 rows: about half the tokens/s of the frozen graph; 1 row:
  about 10% less).
* ``specialize_float``: with dynamic shapes, dynamo would otherwise trace module floats (LayerNorm eps,
  dropout p) as symbols and then restart the whole trace once they turn out to be constants.
* The batch dimension is unbacked (:func:`_any_batch`): one graph for one row and for many.
* No duck sizing, and callers pass a cache view that ends at this step's last position
  (:meth:`gptlab.model.KVCache.step_view`): shape coincidences at trace time would otherwise become
  guards, and the first step without them would compile again (a minute, mid-generation).
* The cache folder is gptlab's (:func:`gptlab.model.compile_cache.compile_cache_dir`, one subfolder per torch version) unless
  ``TORCHINDUCTOR_CACHE_DIR`` says otherwise, so it survives a cleaned ``/tmp``. Inductor keys every
  entry on the graph, the input shapes/dtypes, its own configuration and the torch build, so a model
  of another shape or dtype compiles its own entry and never picks up a wrong one.

Inductor's pattern matcher would turn the two small attention matmuls back into
``scaled_dot_product_attention``, whose CPU kernel is several times slower for a single query
(see :class:`gptlab.model.attention.CausalSelfAttention`); it is switched off for this graph only.

``max-autotune`` mode (``--compile max-autotune``) trades a long first start for the fastest decoding
of int8 weights: the whole step compiled ahead of time with frozen weights, kept as a package on
disk (:mod:`gptlab.model.packaged`).

If compilation fails (no C++ compiler, an unsupported platform), generation falls back to the eager
model with a warning.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable

import torch

from gptlab.model.compile_cache import use_compile_cache
from gptlab.model.compile_modes import compile_mode

_KEY_ATTR = "_gptlab_compiled_decode"  # in the model's __dict__: never part of its state_dict
_FAILED = "failed"
_INDUCTOR_OPTIONS = {"pattern_matcher": False}
_DYNAMO_OPTIONS = {"specialize_float": True}
# No duck sizing: two sizes that happen to be equal when a graph is traced (the slot count and a
# cache width, say) would otherwise be taken as one symbol, and the first step where they differ
# would compile again.
_SHAPE_OPTIONS = {"use_duck_shape": False}
_compiled: Callable | None = None

def _block_forward(block, x, mask, is_causal, layer_cache, rope):  # noqa: ANN001, ANN202
    """The function handed to torch.compile: one block of a decode step (its own code object, reset on its own)."""
    return block(x, mask, is_causal, layer_cache, rope)


def _any_batch(batch: int, *tensors: torch.Tensor | None) -> None:
    """Let the compiled block take any batch size, 1 included.

    Dynamic shapes still specialise a size of 1, so one row and two would be two graphs, each traced
    again on every start (about 2 s each with the caches warm). An unbacked batch dimension carries no
    such guard: one graph serves one row and many. Only a first dimension that is the batch is marked:
    rotary angles shared by every row (``[1, 1, T, D]``) keep their 1, which broadcasts; marked, it
    would be taken for the batch and the first batch of two would fail the graph's checks.
    """
    for t in tensors:
        if t is not None and t.size(0) == batch:
            torch._dynamo.decorators.mark_unbacked(t, 0)


def _forget_compiled() -> None:
    # Dynamo guards on the blocks' structure: without this, every model ever used would keep its
    # compiled entries (and count towards dynamo's recompile limit) after it is gone.
    torch._dynamo.reset_code(_block_forward.__code__)


def _option_patches(inductor_options: dict) -> tuple:
    """Context managers that set inductor's, dynamo's and the shape options while a step runs.

    Made once and entered at every step: building them costs more than a tenth of a millisecond
    (each ``patch`` defines a class), a noticeable part of a 10 ms step.
    """
    return (torch._inductor.config.patch(inductor_options), torch._dynamo.config.patch(_DYNAMO_OPTIONS),
            torch.fx.experimental._config.patch(_SHAPE_OPTIONS))


def compiled_decode_step(model: torch.nn.Module, mode: str = "default") -> Callable[..., torch.Tensor] | None:
    """A compiled ``step(idx, attention_mask, kv_cache, position_ids) -> logits`` for ``model``.

    ``kv_cache`` is the caller's cache (a :class:`gptlab.model.KVCache`, or the server's slot cache);
    the step writes this step's keys and values into it, and the caller then advances it. ``mode``: ``"default"`` or ``"max-autotune"``
    (:func:`gptlab.model.packaged.packaged_step`, which freezes the weights of the first call: a model
    changed afterwards keeps decoding with the old ones). None when compiling this
    model already failed once (the caller then stays eager).
    """
    global _compiled
    seen = model.__dict__.get(_KEY_ATTR)
    if seen == _FAILED:
        return None
    if compile_mode(mode) == "max-autotune":
        from gptlab.model.packaged import packaged_step_of

        return packaged_step_of(model)
    if seen is None:
        weakref.finalize(model, _forget_compiled)
        model.__dict__[_KEY_ATTR] = True
    if _compiled is None:
        use_compile_cache()
        # dynamic=True: one graph serves every cache length (and _any_batch: every batch size).
        _compiled = torch.compile(_block_forward, dynamic=True)

    patches = _option_patches(_INDUCTOR_OPTIONS)

    def step(idx, attention_mask, kv_cache, position_ids):  # noqa: ANN001, ANN202
        # The options only while this graph compiles or runs, so that no other torch.compile in the
        # process (a training loop's, say) is changed.
        kv_cache = kv_cache.step_view()  # its buffers end at this step's position (see KVCache.step_view)
        with patches[0], patches[1], patches[2]:
            inputs = model.embed(idx, attention_mask, kv_cache, position_ids)
            x = inputs.x
            rows = x.size(0)
            _any_batch(rows, x, inputs.mask, *(inputs.rope or ()))
            for i, block in enumerate(model.blocks):
                layer = kv_cache.layer(i)
                _any_batch(rows, layer.keys, layer.values)
                x = _compiled(block, x, inputs.mask, inputs.is_causal, layer, inputs.rope)
            kv_cache.advance(idx.size(1))
            return model.head(x, last_only=True)

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

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
* The cache folder is gptlab's (:func:`compile_cache_dir`, one subfolder per torch version) unless
  ``TORCHINDUCTOR_CACHE_DIR`` says otherwise, so it survives a cleaned ``/tmp``. Inductor keys every
  entry on the graph, the input shapes/dtypes, its own configuration and the torch build, so a model
  of another shape or dtype compiles its own entry and never picks up a wrong one.

Inductor's pattern matcher would turn the two small attention matmuls back into
``scaled_dot_product_attention``, whose CPU kernel is several times slower for a single query
(see :class:`gptlab.model.attention.CausalSelfAttention`); it is switched off for this graph only.

``max-autotune`` mode (``--compile max-autotune``) trades a long start for the fastest decoding of
int8 weights. The whole step is one graph with the weights *frozen* (constants of the graph), so that
inductor's max-autotune can lower each int8 matrix product to its generated C++ GEMM, which reads a
weight layout pre-packed at compile time: GPT-2 124M int8 at batch 1, about 90-100 tokens/s here, where
``aten._weight_int8pack_mm`` (the default mode's, and eager's) gives about 60. The price: a first start
of about 2-4 minutes and a second of about a minute (tracing twelve layers, freezing, loading), and
the weights are those of the first call (change them and the step must be made again).

Inductor's persistent cache, keyed on the graph and not on the frozen weights' values, would hand
one model's pre-packed weights to another model of the same shape. A custom post-grad pass
(:func:`_weights_key`), which changes nothing in the graph, puts a hash of the weights into the key.

If compilation fails (no C++ compiler, an unsupported platform), generation falls back to the eager
model with a warning.
"""

from __future__ import annotations

import hashlib
import os
import types
import warnings
import weakref
from collections.abc import Callable
from pathlib import Path

import torch

from gptlab.model.compile_modes import compile_mode

CACHE_DIR_ENV = "GPTLAB_CACHE_DIR"
_INDUCTOR_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"
_KEY_ATTR = "_gptlab_compiled_decode"  # in the model's __dict__: never part of its state_dict
_FROZEN_ATTR = "_gptlab_frozen_decode"  # the model's max-autotune step (its weights frozen into it)
_FAILED = "failed"
_INDUCTOR_OPTIONS = {"pattern_matcher": False}
_DYNAMO_OPTIONS = {"specialize_float": True}
# No duck sizing: two sizes that happen to be equal when a graph is traced (the slot count and a
# cache width, say) would otherwise be taken as one symbol, and the first step where they differ
# would compile again.
_SHAPE_OPTIONS = {"use_duck_shape": False}
_compiled: Callable | None = None

# Frozen weights, and max-autotune's choice between aten's kernel and inductor's generated C++ GEMM
# (which needs frozen, pre-packed weights) for every matrix product.
# The batch is unbacked (no size known at compile time): autotuning times each choice at the size
# inductor assumes for it, 8,192 rows by default, where the output head alone took a minute to time;
# decode steps have a few rows. Its tables of timings on stderr are left out: they would interleave
# with a command's output.
_FROZEN_OPTIONS = {"freezing": True, "max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN",
                   "unbacked_symint_fallback": 8,
                   "autotune_num_choices_displayed": 0, "max_autotune_report_choices_stats": False}


def compile_cache_dir() -> Path:
    """Where compiled code is kept between processes: ``$GPTLAB_CACHE_DIR/compile``, else ``~/.cache/gptlab/compile``.

    Not ``$GPTLAB_DATA_DIR`` (the download cache), which may be a shared read-only folder.
    """
    root = os.environ.get(CACHE_DIR_ENV)
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "gptlab"
    return base / "compile"


def use_compile_cache() -> str | None:
    """Point inductor's persistent caches at :func:`compile_cache_dir` (per torch version); returns the folder used.

    An explicit ``TORCHINDUCTOR_CACHE_DIR`` wins (and so does a folder inductor already chose in this
    process: it sets that variable itself). None when the folder cannot be created: inductor then
    keeps its default under the temporary directory.
    """
    if os.environ.get(_INDUCTOR_CACHE_ENV):
        return os.environ[_INDUCTOR_CACHE_ENV]
    # The torch version in the name: old versions' entries can be deleted as a whole, and a shared
    # home folder used by several environments keeps them apart.
    folder = compile_cache_dir() / f"torch-{torch.__version__}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    os.environ[_INDUCTOR_CACHE_ENV] = str(folder)
    return str(folder)


def _model_forward(model, idx, mask, kv_cache, position_ids):  # noqa: ANN001, ANN202
    """The function handed to torch.compile in ``max-autotune`` mode: a whole decode step, weights frozen."""
    return model(idx, attention_mask=mask, kv_cache=kv_cache, position_ids=position_ids, last_only=True)


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


def _weights_hash(model: torch.nn.Module) -> str:
    """A hash of every parameter and buffer of ``model``, names included (GPT-2 124M int8: 0.4 s, against a minute or more of compiling)."""
    digest = hashlib.blake2b(digest_size=16)
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].detach().contiguous().view(-1).view(torch.uint8).cpu().numpy().tobytes())
    return digest.hexdigest()


def _weights_key(model: torch.nn.Module):  # noqa: ANN202
    """A post-grad pass that leaves the graph alone and whose ``uuid`` (part of inductor's cache key) is the weights' hash."""
    from torch._inductor.custom_graph_pass import CustomGraphPass  # imported here: inductor loads slowly

    class WeightsKey(CustomGraphPass):
        def __call__(self, graph: torch.fx.Graph) -> None:
            return None

        def uuid(self) -> str:
            return key

    key = _weights_hash(model)
    return WeightsKey()


def _frozen_step(model: torch.nn.Module) -> Callable[..., torch.Tensor]:
    """``max-autotune`` mode: the whole decode step, one graph, the weights frozen into it."""
    # Dynamo keeps compiled graphs per code object and would hand this model's graph, frozen weights
    # and all, to another model of the same structure: each model gets a code object of its own.
    code = _model_forward.__code__.replace(co_name=f"_model_forward_{id(model):x}")
    compiled = torch.compile(types.FunctionType(code, _model_forward.__globals__), dynamic=True)
    patches = _option_patches({**_INDUCTOR_OPTIONS, **_FROZEN_OPTIONS, "post_grad_custom_post_pass": _weights_key(model)})

    def step(idx, attention_mask, kv_cache, position_ids):  # noqa: ANN001, ANN202
        with patches[0], patches[1], patches[2]:
            rows = idx.size(0)
            _any_batch(rows, idx, attention_mask, position_ids, *kv_cache.keys, *kv_cache.values)
            return compiled(model, idx, attention_mask, kv_cache, position_ids)

    weakref.finalize(model, torch._dynamo.reset_code, code)
    return step


def _frozen_step_of(model: torch.nn.Module) -> Callable[..., torch.Tensor]:
    """The model's ``max-autotune`` step, made once (a new one would compile the whole step again)."""
    step = model.__dict__.get(_FROZEN_ATTR)
    if step is None:
        step = model.__dict__[_FROZEN_ATTR] = _frozen_step(model)
    return step


def compiled_decode_step(model: torch.nn.Module, mode: str = "default") -> Callable[..., torch.Tensor] | None:
    """A compiled ``step(idx, attention_mask, kv_cache, position_ids) -> logits`` for ``model``.

    ``kv_cache`` is anything with a :class:`gptlab.model.KVCache`'s ``length``/``layer``/``advance``
    (and, in ``max-autotune`` mode, its ``keys``/``values`` lists). ``mode``: ``"default"`` or
    ``"max-autotune"`` (see the module's docstring); ``max-autotune`` freezes the weights of the first
    call, and a model changed afterwards keeps decoding with the old ones. None when compiling this
    model already failed once (the caller then stays eager).
    """
    global _compiled
    seen = model.__dict__.get(_KEY_ATTR)
    if seen == _FAILED:
        return None
    if compile_mode(mode) == "max-autotune":
        return _frozen_step_of(model)
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

"""``--compile max-autotune``: the whole decode step compiled ahead of time into a package on disk.

The step is exported once (``torch.export``) and compiled by AOTInductor with the weights *frozen*
(constants of the graph) and max-autotune on, so that inductor can lower each int8 matrix product to
its generated C++ GEMM, which reads a weight layout pre-packed at compile time (``aten._weight_int8pack_mm``,
eager's kernel, streams GPT-2 124M's int8 weights at about 9 GB/s here; the generated GEMM at about
16). The result, a shared library plus the packed weights, is a ``.pt2`` package in gptlab's compile
cache (:func:`gptlab.model.compile_cache.compile_cache_dir`). Why ahead of time rather than ``torch.compile``:

* A second start loads the package (well under a second for GPT-2) instead of tracing, freezing and
  re-loading twelve layers through dynamo (about a minute; a frozen graph bypasses the AOT autograd
  cache, and every layer's weights are baked in, so no graph is shared between layers).
* A step is one call into C++: no dynamo guards to evaluate (about a millisecond per step of GPT-2),
  a tenth of the step at 100 tokens/s.

The package is named by a hash of everything it depends on (:func:`package_key`): every weight's bytes,
dtype and shape, the model's config, the cache's dtype, the torch version and the CPU's instruction set
(the generated code is AVX2 or AVX512, and a home folder may be shared between machines). Inductor's
own FX graph cache is off for this compile: it keys a frozen graph on the shapes, not the weights'
values, and would hand one model's pre-packed weights to another model of the same shape.

The exported step takes the cache's whole buffers, which are contiguous (a package's code is compiled
for the strides it was exported with); the mask's width says how far the cache is filled, so one
package serves every batch size, cache length and buffer size.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import torch

from gptlab.model.attention import positions_from_mask
from gptlab.model.compile_cache import compile_cache_dir, use_compile_cache
from gptlab.model.kv_cache import KVCache, cache_dtype

# Bump when what is exported changes (the step's inputs, the model's forward): old packages then
# stop matching any key and are never loaded.
PACKAGE_FORMAT = 2
_PACKAGE_ATTR = "_gptlab_packaged_decode"  # in the model's __dict__: never part of its state_dict
# Frozen weights, and max-autotune's choice between aten's kernel and inductor's generated C++ GEMM for
# every matrix product; the timing tables kept off stderr (they would interleave with a command's output).
# No pattern matcher: it would turn the two small attention products back into
# scaled_dot_product_attention, several times slower on CPU for one query.
PACKAGE_OPTIONS = {"freezing": True, "max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN",
                   "pattern_matcher": False, "fx_graph_cache": False,
                   "autotune_num_choices_displayed": 0, "max_autotune_report_choices_stats": False}
_MAX_BATCH = 1024


class DecodeStep(torch.nn.Module):
    """What is exported: ``T`` new tokens (one in a decode step, a prompt's in a prefill) over whole cache buffers ``[B, kv_heads, L, D]``.

    ``mask`` is ``[B, end]``: the step reads and writes positions ``< end`` (the last ``T`` are the new
    tokens'), so the filled length is ``end - T`` and the buffers may be longer than ``end``.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, idx: torch.Tensor, mask: torch.Tensor, position_ids: torch.Tensor,
                keys: list[torch.Tensor], values: list[torch.Tensor]) -> torch.Tensor:
        """Logits ``[B, 1, vocab]`` after the new tokens ``idx`` ``[B, T]``; their keys and values go into the buffers."""
        end, new = mask.size(1), idx.size(1)
        torch._check(end <= keys[0].size(2))
        torch._check(end >= new)
        cache = KVCache.over([k[:, :, :end] for k in keys], [v[:, :, :end] for v in values], end - new)
        return self.model(idx, attention_mask=mask, kv_cache=cache, position_ids=position_ids, last_only=True)


def package_key(model: torch.nn.Module) -> str:
    """A hash of what a package of ``model``'s decode step depends on (GPT-2 124M int8: about 0.4 s)."""
    digest = hashlib.blake2b(digest_size=16)
    cpu = torch.backends.cpu.get_cpu_capability()
    digest.update(f"{PACKAGE_FORMAT} {torch.__version__} {cpu} {cache_dtype(model)} {model.cfg!r} {PACKAGE_OPTIONS}".encode())
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    for name in sorted(tensors):
        t = tensors[name].detach()
        digest.update(f"{name} {t.dtype} {tuple(t.shape)}".encode())
        digest.update(t.contiguous().view(-1).view(torch.uint8).cpu().numpy().tobytes())
    return digest.hexdigest()


def _example_inputs(model: torch.nn.Module) -> tuple:
    """Inputs to export with: two rows, three new tokens after five, room for eleven (sizes that coincide with nothing)."""
    batch, new, past, room = 2, 3, 5, 11
    cache = KVCache.for_model(model, batch, max_len=room)
    device = model.tok_emb.weight.device
    idx = torch.zeros(batch, new, dtype=torch.long, device=device)
    mask = torch.ones(batch, past + new, dtype=torch.long, device=device)
    positions = torch.arange(past, past + new, device=device).expand(batch, new).contiguous()
    return idx, mask, positions, cache.keys, cache.values


def export_step(model: torch.nn.Module) -> torch.export.ExportedProgram:
    """``model``'s step as an exported program, dynamic in the batch, the new tokens, the filled length and the buffers' length."""
    from torch.export import Dim

    ctx = model.cfg.context_length
    batch = Dim("batch", min=1, max=_MAX_BATCH)
    new = Dim("new", min=1, max=ctx)
    end = Dim("end", min=1, max=ctx)
    buffer = Dim("buffer", min=2, max=ctx + 1)
    kv = {0: batch, 2: buffer}
    shapes = {"idx": {0: batch, 1: new}, "mask": {0: batch, 1: end}, "position_ids": {0: batch, 1: new},
              "keys": [kv] * model.cfg.n_layers, "values": [kv] * model.cfg.n_layers}
    step, inputs = DecodeStep(model), _example_inputs(model)
    with torch.no_grad():
        # One eager call first: attributes a layer makes on its first call (the int8 layers' bf16
        # scales) would otherwise be made while tracing, and export warns of a traced attribute.
        step(*inputs)
        return torch.export.export(step, inputs, dynamic_shapes=shapes, strict=False)


def package_path(model: torch.nn.Module) -> Path:
    """Where ``model``'s package is (or will be) kept: ``<compile cache>/packages/<key>.pt2``."""
    return compile_cache_dir() / f"torch-{torch.__version__}" / "packages" / f"{package_key(model)}.pt2"


def build_package(model: torch.nn.Module, path: Path) -> Path:
    """Export and compile ``model``'s decode step into ``path`` (written atomically: a temporary file, then a rename)."""
    use_compile_cache()  # autotuning's timings are kept there between packages
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.pt2")
    try:
        program = export_step(model)
        # A copy of the options: inductor adds to the dict it is given (and ours is part of the key).
        torch._inductor.aoti_compile_and_package(program, package_path=str(tmp), inductor_configs=dict(PACKAGE_OPTIONS))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def packaged_step(model: torch.nn.Module) -> Callable[..., torch.Tensor]:
    """``step(idx, attention_mask, kv_cache, position_ids) -> logits`` running ``model``'s package, built on first use.

    ``kv_cache`` has a ``length`` and ``step_buffers()`` (a :class:`gptlab.model.KVCache`, or the
    server's slot cache); the step writes the new keys and values into it, and the caller advances
    it. The mask and positions may be None (no padding). ``idx`` may hold a whole prompt (a prefill,
    into an empty cache) as well as one token per row: the step has ``takes_prompts`` set. The
    weights are read once, when the step is first called: a model changed afterwards keeps decoding
    with the old ones. More than 1,024 rows is a ValueError (callers then decode eagerly).
    """
    run = None

    def step(idx, attention_mask, kv_cache, position_ids):  # noqa: ANN001, ANN202
        nonlocal run
        rows, past = idx.size(0), kv_cache.length
        if rows > _MAX_BATCH:  # the package would not check: its code assumes the exported range
            raise ValueError(f"a packaged step takes at most {_MAX_BATCH} rows, got {rows}")
        if run is None:
            path = package_path(model)
            if not path.exists():
                build_package(model, path)
            # The loader's own entry point, with the inputs already flat (idx, mask, positions, keys,
            # values, as exported): the package object's __call__ parses its input spec from JSON and
            # flattens the arguments on every call, a few percent of a GPT-2 step.
            run = torch._inductor.aoti_load_package(str(path)).loader.boxed_run
        end = past + idx.size(1)
        if position_ids is None:  # as the model counts them (GPT.embed)
            position_ids = (positions_from_mask(attention_mask)[:, past:] if attention_mask is not None
                            else torch.arange(past, end, device=idx.device).expand(rows, -1))
        if attention_mask is None:
            attention_mask = torch.ones(rows, end, dtype=torch.long, device=idx.device)
        # A package's code assumes the strides it was exported with (contiguous) and checks none:
        # a column of a longer sequence, say, would be read as garbage ids.
        keys, values = kv_cache.step_buffers()
        return run([idx.long().contiguous(), attention_mask.long().contiguous(), position_ids.long().contiguous(),
                    *keys, *values])[0]

    step.takes_prompts = True
    return step


def packaged_step_of(model: torch.nn.Module) -> Callable[..., torch.Tensor]:
    """The model's packaged step, made once (its package is loaded on the first call)."""
    step = model.__dict__.get(_PACKAGE_ATTR)
    if step is None:
        step = model.__dict__[_PACKAGE_ATTR] = packaged_step(model)
    return step

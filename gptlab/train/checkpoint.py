"""Training checkpoints: written atomically, loaded without unpickling code, complete enough to resume exactly.

A checkpoint is a folder ``checkpoints/step-00001234/`` holding

* ``model.safetensors`` – the weights (the only part needed for generation or export);
* ``state.pt`` – optimizer state, step, data position and every RNG state, saved with ``torch.save``
  but holding only tensors, numbers, strings, lists and dicts, so it loads with ``weights_only=True``;
* ``meta.json`` – step, tokens seen, validation loss, time: what a human or a script looks at.

The folder is written under a temporary name and renamed into place, so a crash (or a full disk)
mid-write leaves the previous checkpoints intact and never a half-written one under a real name.

This module writes checkpoints; reading them back (listing, weights, training state) is
:mod:`gptlab.model.run_folder`'s job, so that loading a model does not import the trainer.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from gptlab.errors import GptlabError
from gptlab.io import default_mode
from gptlab.model.run_folder import CHECKPOINTS, STEP_PREFIX, list_checkpoints


def rng_state() -> dict:
    """Every random-number generator state a training run touches, in weights_only-loadable form."""
    np_state = np.random.get_state()
    state = {
        "python": _to_lists(random.getstate()),
        "numpy": {
            "key": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore the generators saved by :func:`rng_state`."""
    random.setstate(_to_tuples(state["python"]))
    npst = state["numpy"]
    np.random.set_state(
        ("MT19937", npst["key"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"], npst["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(x):
    return [_to_lists(v) for v in x] if isinstance(x, (tuple, list)) else x


def _to_tuples(x):
    return tuple(_to_tuples(v) for v in x) if isinstance(x, list) else x


def model_state_for_saving(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's tensors, with tied weights stored once (safetensors refuses shared storage)."""
    seen: dict[int, str] = {}
    out: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        key = tensor.untyped_storage().data_ptr() if tensor.numel() else id(tensor)
        if key in seen and tensor.numel():
            continue  # tied to an earlier tensor: load_state_dict(strict=False) restores it through the tie
        seen[key] = name
        out[name] = tensor.detach().contiguous().cpu()
    return out


def save_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    model: torch.nn.Module,
    state: dict,
    meta: dict,
    keep_last: int = 2,
    best: bool = False,
    weights: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write checkpoint ``step`` atomically; keep the newest ``keep_last`` and, if ``best``, mark it best.

    ``state`` is anything weights_only-loadable (optimizer state dict, data position, RNG states);
    ``meta`` is JSON-serialisable. The best checkpoint is kept as a separate folder ``best/`` (a copy),
    so pruning old steps never removes it. ``weights``, when given, is written as the model's
    weights instead of ``model``'s own state dict (a fine-tuning task's merged export).
    """
    ckpt_root = Path(run_dir) / CHECKPOINTS
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"{STEP_PREFIX}{step:08d}"
    tmp = ckpt_root / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        tmp.mkdir()
        tensors = model_state_for_saving(model) if weights is None else weights
        save_file(tensors, str(tmp / "model.safetensors"))
        torch.save(state, tmp / "state.pt")
        (tmp / "meta.json").write_text(json.dumps({**meta, "step": step}, indent=2))
        for f in tmp.iterdir():  # make the bytes durable before the rename publishes them
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
            os.chmod(f, default_mode())  # safetensors writes 0600; the user's umask decides, as elsewhere
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise GptlabError(
            f"could not write checkpoint {final} ({exc.strerror or exc}); earlier checkpoints are intact"
        ) from None
    if best:
        best_tmp = ckpt_root / f".tmp-best-{os.getpid()}"
        shutil.rmtree(best_tmp, ignore_errors=True)
        try:
            shutil.copytree(final, best_tmp)
            old = ckpt_root / "best"
            if old.exists():
                trash = ckpt_root / f".old-best-{os.getpid()}"
                os.replace(old, trash)
                os.replace(best_tmp, old)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                os.replace(best_tmp, old)
        except OSError as exc:
            shutil.rmtree(best_tmp, ignore_errors=True)
            raise GptlabError(f"could not update {ckpt_root / 'best'} ({exc.strerror or exc})") from None
    for old in list_checkpoints(run_dir)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old.path, ignore_errors=True)
    return final

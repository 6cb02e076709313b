"""Muon: momentum whose update is orthogonalized, for the weight matrices of the transformer blocks.

Muon (Keller Jordan, 2024; "MomentUm Orthogonalized by Newton-Schulz") keeps SGD's Nesterov momentum
for each weight matrix, but replaces the update ``M`` by the nearest semi-orthogonal matrix: every
singular value of the step is pushed to about 1, so directions the gradient rarely points in learn as
fast as the dominant ones. On the race model of ``gptlab bench pretrain`` it reaches the target loss in
about half the steps of a tuned AdamW (250-275 against 500-575).

The price is the iteration: about 15 products of the matrix's size per weight matrix and step, however
large the batch. It pays off when a step holds many more tokens than the model is wide (the race model:
128 wide, 2,048 tokens a step, +20% per step for -50% steps).

Only matrices that act on hidden activations get it. Embeddings (a lookup, not a product), the output
head, and the 1-D gains and biases keep AdamW: that split is the published recipe, and Muon has no
meaning for a vector. :class:`MuonWithAdamW` presents the two optimizers to the trainer as one.

PyTorch ships ``torch.optim.Muon``, but it always orthogonalizes in bf16. On a CPU without bf16
instructions that is 30x slower than fp32 (16 matrices of the race model: 840 ms against 25 ms a step),
so here the dtype follows the device: bf16 where bf16 products are fast, fp32 elsewhere.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from gptlab.errors import GptlabError
from gptlab.model.device import fast_bf16

# The quintic Newton-Schulz iteration's coefficients: chosen (by Muon's author) for the steepest slope
# at zero, so that small singular values grow fastest; the iteration then leaves them in roughly
# [0.7, 1.2] instead of exactly 1, which measured no worse in training.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5

# Scale of an orthogonalized update, times sqrt(the matrix's larger side): an update whose RMS matches
# a typical AdamW update's (Moonlight, Liu et al. 2025), so Muon's learning rate is on AdamW's scale and
# shapes of any aspect ratio get updates of the same RMS.
RMS_MATCH = 0.2


def orthogonalize(update: torch.Tensor, steps: int = NS_STEPS, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """An approximately semi-orthogonal matrix with ``update``'s singular vectors (Newton-Schulz).

    The matrix is normalised so its spectral norm is at most 1 (the Frobenius norm bounds it), then
    ``X <- a X + (b A + c A^2) X`` with ``A = X X^T`` is applied ``steps`` times. Working on the wide
    orientation keeps ``A`` the small square: 128 x 128 for a 128 x 512 matrix, not 512 x 512.
    """
    if update.dim() != 2:
        raise ValueError(f"orthogonalize: expected a matrix, got shape {tuple(update.shape)}")
    a, b, c = NS_COEFFICIENTS
    x = update.to(dtype)
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T
    x = x / (x.norm() + 1e-7)
    for _ in range(steps):
        gram = x @ x.T
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.addmm(x, poly, x, beta=a)
    return x.T if tall else x


class Muon(torch.optim.Optimizer):
    """Muon for 2-D parameters: Nesterov momentum, orthogonalized, scaled to AdamW's update size.

    Weight decay is decoupled (``p *= 1 - lr * weight_decay``), as in AdamW. ``ns_dtype`` is the
    precision of the Newton-Schulz products: None picks bf16 where bf16 products are fast on the
    parameters' device (CUDA, AMX or AVX512-BF16 CPUs) and fp32 elsewhere.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = NS_STEPS,
        ns_dtype: torch.dtype | None = None,
    ) -> None:
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() != 2:
                    raise ValueError(f"Muon: only matrices, got a parameter of shape {tuple(p.shape)}")
        self.ns_dtype = ns_dtype

    def _dtype_for(self, p: torch.Tensor) -> torch.dtype:
        if self.ns_dtype is None:
            self.ns_dtype = torch.bfloat16 if fast_bf16(p.device) else torch.float32
        return self.ns_dtype

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001, ANN201 (torch.optim.Optimizer's signature)
        """One update of every matrix that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, decay, beta = group["lr"], group["weight_decay"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - beta)
                update = p.grad.lerp(buf, beta) if group["nesterov"] else buf
                ortho = orthogonalize(update, group["ns_steps"], self._dtype_for(p))
                if decay:
                    p.mul_(1 - lr * decay)
                p.add_(ortho.to(p.dtype), alpha=-lr * RMS_MATCH * math.sqrt(max(p.shape)))
        return loss


def hidden_matrices(model: torch.nn.Module) -> list[torch.Tensor]:
    """The trainable 2-D parameters inside the transformer blocks (``model.blocks``): Muon's share."""
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise GptlabError(f"optimizer muon: {type(model).__name__} has no transformer blocks (model.blocks)")
    return [p for p in blocks.parameters() if p.requires_grad and p.dim() == 2]


class MuonWithAdamW:
    """Muon on the blocks' weight matrices and AdamW on every other parameter, as one optimizer.

    The trainer uses an optimizer through ``param_groups`` (it sets each group's ``lr``), ``step``,
    ``zero_grad`` and ``state_dict``/``load_state_dict``; this forwards each to both. One learning rate
    schedule drives both parts: Muon's updates are scaled to AdamW's size (:data:`RMS_MATCH`).
    """

    def __init__(self, muon: Muon, adamw: torch.optim.Optimizer) -> None:
        self.muon, self.adamw = muon, adamw

    @property
    def param_groups(self) -> list[dict]:
        """AdamW's groups, then Muon's (the dictionaries themselves: setting ``lr`` reaches both)."""
        return self.adamw.param_groups + self.muon.param_groups

    def step(self) -> None:
        """Update every parameter."""
        self.adamw.step()
        self.muon.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear every gradient."""
        self.adamw.zero_grad(set_to_none=set_to_none)
        self.muon.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        """Both optimizers' states, under ``adamw`` and ``muon``."""
        return {"adamw": self.adamw.state_dict(), "muon": self.muon.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` saved; a plain AdamW state (another optimizer's run) is an error."""
        if set(state) != {"adamw", "muon"}:
            raise GptlabError("the checkpoint's optimizer state is not Muon + AdamW's (the run used another optimizer)")
        self.adamw.load_state_dict(state["adamw"])
        self.muon.load_state_dict(state["muon"])

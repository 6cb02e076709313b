"""Evaluation on EleutherAI's lm-evaluation-harness: any gptlab model as an ``lm_eval`` model.

``lm_eval`` is an optional dependency (``pip install 'gptlab[eval]'``): nothing here imports it until a
name of :mod:`gptlab.evaluation.harness` is used, and :func:`require_lm_eval` turns its absence into
one clear line.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from gptlab.errors import GptlabError
from gptlab.lazy import lazy_exports

_EXPORTS = {
    "GptlabLM": "gptlab.evaluation.harness",
    "perplexity": "gptlab.evaluation.harness",
    "prefix_token_id": "gptlab.evaluation.harness",
}
__all__ = sorted([*_EXPORTS, "require_lm_eval"])

if TYPE_CHECKING:  # pragma: no cover
    from gptlab.evaluation.harness import GptlabLM, perplexity, prefix_token_id


def require_lm_eval() -> None:
    """Import ``lm_eval``, or raise :class:`GptlabError` saying how to install it."""
    try:
        importlib.import_module("lm_eval")
    except ImportError as exc:
        raise GptlabError(
            f"gptlab eval needs lm-evaluation-harness ({exc}); install it with: pip install 'gptlab[eval]'"
        ) from None


__getattr__ = lazy_exports(__name__, _EXPORTS)

"""The pack's one cache of loaded RAFT models (Estimate Optical Flow and Rerender's direct flows
share it, so the same weights are never loaded twice)."""

from __future__ import annotations

import torch

from ..flow.raft_checkpoint import RaftCache
from .paths import resolve_raft_weights

RAFT_MODELS = RaftCache()


def raft_model(method: str, weights: str = "auto") -> torch.nn.Module:
    """The RAFT model of ``method`` (``raft_large``/``raft_small``) with ``weights`` from models/raft
    (``auto``: the best-known file for the method), loaded once per file and modification time."""
    return RAFT_MODELS.get(method, resolve_raft_weights(method, weights))

"""The source branch (replay of a VE_INVERSION) that TokenFlow, FLATTEN injection and other
source-replay methods consume, built for a given MODEL."""

from __future__ import annotations


def source_branch_from(inversion, model):
    """``SourceReplay`` of ``inversion`` for ``model``; raises ValueError when the inversion was
    made with other weights (a cache from another model must not be replayed)."""
    from ..inversion.comfy_adapter import source_replay
    from ..inversion.record import InversionRecord

    if not isinstance(inversion, InversionRecord):
        raise ValueError(f"inversion: expected a VE_INVERSION from VideoEdit DDIM Inversion, got {type(inversion).__name__}")
    return source_replay(model, inversion)

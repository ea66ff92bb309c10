"""The feature cache as the editing patches see it: one group of entries per (inversion, method
settings, model patches). The cache itself is ``inversion/feature_cache.py``; DDIM Inversion's
``feature_cache`` option attaches one to the VE_INVERSION it outputs."""

from __future__ import annotations

from ..inversion.feature_cache import FeatureGroup
from ..inversion.record import InversionRecord
from .inversion import patches_id


def feature_group(inversion, model, method_key: str) -> FeatureGroup | None:
    """The feature-cache group of ``inversion`` for a method setting applied to ``model`` (the
    MODEL before the method's own patches: what else it carries changes the source features), or
    None when the inversion has no feature cache (or it is off)."""
    cache = inversion.feature_cache if isinstance(inversion, InversionRecord) else None
    if cache is None or not cache.enabled:
        return None
    return cache.group(f"{method_key}; model patches {patches_id(model)}")

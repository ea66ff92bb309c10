"""The pack's phases and modes as Enums (``str`` mix-ins: they compare equal to their values, so
logs and reprs stay readable)."""

from __future__ import annotations

from enum import Enum


class CrossFrameMode(str, Enum):
    """What Rerender's cross-frame attention store does in the current sampling pass."""

    OFF = "off"  # untouched self-attention
    RECORD_ANCHOR = "record_anchor"  # plain attention; inputs stored as the anchor's
    ATTEND = "attend"  # keys/values from the anchor and previous keyframe inside the window


class X0Mode(str, Enum):
    """What Rerender's x0 hook does with the denoised prediction."""

    OFF = "off"
    RECORD_ANCHOR = "record_anchor"  # remember the anchor's x0 per sigma
    FUSE = "fuse"  # AdaIN and shape-aware fusion towards the anchor's x0


class PnPMode(str, Enum):
    """A PnP pass: record the source rows' features, or inject them into the edit."""

    CAPTURE = "capture"
    INJECT = "inject"


class TokenFlowPass(str, Enum):
    """TokenFlow's UNet calls within one sampler step."""

    KEYFRAMES = "kf"  # the sampled keyframes, jointly (extended attention)
    PROPAGATE = "prop"  # one window of frames, features propagated from the keyframes

"""Source-branch replay: the cached source latents and conditioning at the sampler's sigma.

TokenFlow, FLATTEN injection and P2P run the *source* video through the UNet at every step of
the edit. Instead of denoising the source again, the edit reads the inversion's latent of
those frames at exactly the current sigma (no interpolation; a sigma the inversion did not
cache is an error naming both schedules) and runs the UNet once on it with the source prompt
(``attention.capture`` records the features that pass produces).

:class:`SourceReplay` implements the ``SourceBranch`` protocol of
``attention.tokenflow_patch`` (``step_index``, ``num_steps``, ``latent``, ``unet_conditioning``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

# transformer_options key under which the inversion (which runs the clip in chunks of frames)
# and the capture helpers list the global frame indices of the batch a UNet call holds.
from ..attention.keys import FRAME_INDICES_KEY, FRAME_TOTAL_KEY
from .record import InversionRecord

log = logging.getLogger(__name__)


def source_context(conditioning: list) -> torch.Tensor:
    """The cross-attention tensor ``[1 or F, T, D]`` of a CONDITIONING (its first entry)."""
    if not conditioning:
        raise ValueError("the inversion's source conditioning is empty")
    if len(conditioning) > 1:
        log.warning(
            "VideoEdit replay: the source conditioning has %d entries; the source branch uses the first",
            len(conditioning),
        )
    return conditioning[0][0]


SAMPLE_FIX = (
    "sample the inversion's own latent (DDIM Inversion's latent output, or the latent that was inverted) "
    "with its SIGMAS, or invert the clip you are sampling"
)


def check_sampled_latent(
    num_frames: int,
    latent_shape: tuple[int, int, int],
    sample_shape: tuple[int, ...],
    frames: torch.Tensor,
    total: int | None,
) -> None:
    """Raise a ValueError naming ``latent_image`` when a UNet call of the edit does not match
    the inversion being replayed.

    ``sample_shape``: ``(C, h, w)`` of the call's rows; ``frames``: the call's global frame
    indices; ``total``: frame count of the whole latent being sampled (None: the call holds
    every frame; 0: a window of the latent whose total is unknown, only indices are checked).
    """
    c, h, w = latent_shape
    have = f"the inversion holds {num_frames} frames of {c}x{h}x{w} (channels x height x width)"
    if tuple(int(v) for v in sample_shape) != (c, h, w):
        got = "x".join(str(int(v)) for v in sample_shape)
        raise ValueError(f"latent_image: the latent being sampled has frames of {got} but {have}; {SAMPLE_FIX}")
    count = len(frames) if total is None else int(total)
    beyond = len(frames) and int(frames.max()) >= num_frames
    if beyond or (count and count != num_frames):
        count = max(count, int(frames.max()) + 1) if beyond else count
        raise ValueError(f"latent_image: the latent being sampled has {count} frames but {have}; {SAMPLE_FIX}")


def window_total(transformer_options: dict) -> int | None:
    """Frame count of the whole latent when a UNet call holds a window of it (core context
    windows, AnimateDiff ``sub_idxs``, the pack's own chunked passes): the count, 0 when the
    window does not say, None when the call holds the whole latent."""
    window = transformer_options.get("context_window")
    if window is not None and getattr(window, "index_list", None) is not None:
        return int(getattr(window, "total_frames", 0) or 0)
    ad = transformer_options.get("ad_params") or {}
    if ad.get("sub_idxs") is not None:
        return int(ad.get("full_length", 0) or 0)
    if transformer_options.get(FRAME_INDICES_KEY) is not None:
        return int(transformer_options.get(FRAME_TOTAL_KEY) or 0)
    return None


class SourceReplay:
    """Read-only view of an :class:`InversionRecord` for use inside sampling.

    Args:
        record: the VE_INVERSION.
        context: source cross-attention ``[1 or F, T, D]`` (default: from the record's conditioning).
        y: optional extra UNet vector conditioning ``[1 or F, A]`` (SDXL's ``y``), built by the
            adapter from the model; None for SD1.x/2.x.
    """

    def __init__(self, record: InversionRecord, context: torch.Tensor | None = None, y: torch.Tensor | None = None):
        self.record = record
        self.context = source_context(record.conditioning) if context is None else context
        self.y = y

    def __deepcopy__(self, memo):  # shared, read-only: never copied with model options
        return self

    @property
    def sigmas(self) -> torch.Tensor:
        return self.record.sigmas

    @property
    def num_steps(self) -> int:
        return self.record.num_steps

    @property
    def num_frames(self) -> int:
        return self.record.num_frames

    def check_call(self, sample_shape: tuple[int, ...], frames: torch.Tensor, transformer_options: dict) -> None:
        """ValueError naming ``latent_image`` unless the call's rows (``(C, h, w)``, global
        ``frames``) belong to a latent of the inverted clip's frame count and size."""
        check_sampled_latent(
            self.num_frames, self.record.latent_shape, sample_shape, frames, window_total(transformer_options)
        )

    def step_index(self, sigma: float | torch.Tensor) -> int:
        """0 for the noisiest sigma; ValueError naming both schedules when not cached."""
        return self.record.step_index(sigma)

    def latent(self, sigma: float | torch.Tensor, frames: Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
        """VE source latent ``[n, C, h, w]`` float32 (CPU) of ``frames`` at ``sigma`` — what the
        sampler's ``x`` would be for the source video."""
        return self.record.latent_at(sigma, frames, space="ve")

    def unet_input(
        self, sigma: float | torch.Tensor, frames: Sequence[int] | torch.Tensor | None = None
    ) -> torch.Tensor:
        """VP latent ``x / sqrt(1+sigma^2)`` ``[n, C, h, w]``: the UNet's input (DIFFUSION_MODEL level)."""
        return self.record.latent_at(sigma, frames, space="vp")

    def _rows(self, t: torch.Tensor, n: int, frames, what: str) -> torch.Tensor:
        if t.shape[0] == 1:
            return t.expand(n, *t.shape[1:])
        if frames is not None and t.shape[0] == self.num_frames:
            return t[torch.as_tensor(frames, dtype=torch.long).to(t.device)]
        if t.shape[0] == n:
            return t
        raise ValueError(
            f"source {what} has a batch of {t.shape[0]}; cannot serve {n} frames "
            "(per-frame conditioning needs the frame indices)"
        )

    def unet_conditioning(
        self, n: int, like: torch.Tensor, frames: Sequence[int] | torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(context [n, T, D], y [n, A] or None)`` on ``like``'s device and dtype."""
        ctx = self._rows(self.context, n, frames, "conditioning").to(like.device, like.dtype)
        y = None if self.y is None else self._rows(self.y, n, frames, "y").to(like.device, like.dtype)
        return ctx, y

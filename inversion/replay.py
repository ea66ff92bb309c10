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
from .record import InversionRecord

log = logging.getLogger(__name__)


def source_context(conditioning: list) -> torch.Tensor:
    """The cross-attention tensor ``[1 or F, T, D]`` of a CONDITIONING (its first entry)."""
    if not conditioning:
        raise ValueError("the inversion's source conditioning is empty")
    if len(conditioning) > 1:
        log.warning("VideoEdit replay: the source conditioning has %d entries; the source branch uses the first",
                    len(conditioning))
    return conditioning[0][0]


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

    def step_index(self, sigma: float | torch.Tensor) -> int:
        """0 for the noisiest sigma; ValueError naming both schedules when not cached."""
        return self.record.step_index(sigma)

    def latent(self, sigma: float | torch.Tensor, frames: Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
        """VE source latent ``[n, C, h, w]`` float32 (CPU) of ``frames`` at ``sigma`` — what the
        sampler's ``x`` would be for the source video."""
        return self.record.latent_at(sigma, frames, space="ve")

    def unet_input(self, sigma: float | torch.Tensor, frames: Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
        """VP latent ``x / sqrt(1+sigma^2)`` ``[n, C, h, w]``: the UNet's input (DIFFUSION_MODEL level)."""
        return self.record.latent_at(sigma, frames, space="vp")

    def _rows(self, t: torch.Tensor, n: int, frames, what: str) -> torch.Tensor:
        if t.shape[0] == 1:
            return t.expand(n, *t.shape[1:])
        if frames is not None and t.shape[0] == self.num_frames:
            return t[torch.as_tensor(frames, dtype=torch.long).to(t.device)]
        if t.shape[0] == n:
            return t
        raise ValueError(f"source {what} has a batch of {t.shape[0]}; cannot serve {n} frames "
                         "(per-frame conditioning needs the frame indices)")

    def unet_conditioning(self, n: int, like: torch.Tensor, frames: Sequence[int] | torch.Tensor | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(context [n, T, D], y [n, A] or None)`` on ``like``'s device and dtype."""
        ctx = self._rows(self.context, n, frames, "conditioning").to(like.device, like.dtype)
        y = None if self.y is None else self._rows(self.y, n, frames, "y").to(like.device, like.dtype)
        return ctx, y

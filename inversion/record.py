"""``VE_INVERSION``: the DDIM inversion of a source video, as the editing methods consume it.

Layout (all on CPU; consumers move what they need, when they need it):

- ``sigmas`` ``[S+1]`` float32, the *editing* schedule, descending, ending in 0 — exactly the
  SIGMAS the inversion node returns and a KSampler with the same steps/scheduler walks;
- ``latents_vp`` ``[S+1, F, C, h, w]`` float16: row k is every frame at ``sigmas[k]`` in the
  sampler's (``process_latent_in``) space, VP-scaled ``x / sqrt(1 + sigma^2)`` so magnitudes
  are ~1 and fp16 is accurate (row S is the source latent itself);
- ``x_T`` ``[F, C, h, w]`` float32: the exact noisiest latent, VE scale (what sampling starts from);
- ``conditioning``: the source CONDITIONING (ComfyUI's ``[[cross_attn, {pooled_output, …}], …]``,
  tensors on CPU) the inversion ran with;
- ``weights_id`` / ``patches_id``: model identity (weights incl. weight patches such as LoRA;
  model_options patches and wrappers). ``latent_hash``: sha256 of the input latent;
  ``key``: the cache key; ``info``: steps, scheduler, prediction type, …;
- ``null_text`` ``[S, T, D]`` float32 or None: one unconditional embedding per *step* (step i
  goes from ``sigmas[i]`` to ``sigmas[i+1]``), shared by all frames; ``null_text_cfg``;
- ``features``: free dict of named tensors (e.g. an fp16 feature store).

Records are values: never mutate one that a node returned; use :meth:`with_null_text` /
:meth:`with_features`, which return shallow copies.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from . import schedule
from .ddim import to_ve

FORMAT_VERSION = 1


@dataclass(frozen=True, eq=False)
class InversionRecord:
    sigmas: torch.Tensor
    latents_vp: torch.Tensor
    x_T: torch.Tensor
    conditioning: list
    weights_id: str
    patches_id: str
    latent_hash: str
    key: str = ""
    info: dict = field(default_factory=dict)
    null_text: torch.Tensor | None = None
    null_text_cfg: float | None = None
    features: dict[str, Any] = field(default_factory=dict)
    # the edits' feature cache (``feature_cache.FeatureCache``) or None; not part of the disk entry
    feature_cache: Any = None

    def __post_init__(self):
        s = self.sigmas.numel()
        if self.latents_vp.ndim != 5 or self.latents_vp.shape[0] != s:
            raise ValueError(
                f"latents_vp must be [{s}, F, C, h, w] (one row per sigma), got {tuple(self.latents_vp.shape)}"
            )
        if tuple(self.x_T.shape) != tuple(self.latents_vp.shape[1:]):
            raise ValueError(
                f"x_T {tuple(self.x_T.shape)} does not match the latents {tuple(self.latents_vp.shape[1:])}"
            )
        if self.null_text is not None and self.null_text.shape[0] != s - 1:
            raise ValueError(f"null_text must hold one embedding per step ({s - 1}), got {self.null_text.shape[0]}")

    def __deepcopy__(self, memo):  # immutable by convention; ComfyUI may deep-copy options holding it
        return self

    # -- shape ---------------------------------------------------------------------------------
    @property
    def num_frames(self) -> int:
        return int(self.latents_vp.shape[1])

    @property
    def num_steps(self) -> int:
        """Sampling steps of the editing schedule (``len(sigmas) - 1``)."""
        return int(self.sigmas.numel() - 1)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """``(C, h, w)`` of one frame."""
        return tuple(int(v) for v in self.latents_vp.shape[2:])

    def nbytes(self) -> int:
        tensors = [self.sigmas, self.latents_vp, self.x_T]
        if self.null_text is not None:
            tensors.append(self.null_text)
        tensors += [t for t in self.features.values() if isinstance(t, torch.Tensor)]
        return sum(t.numel() * t.element_size() for t in tensors)

    # -- lookup --------------------------------------------------------------------------------
    def step_index(self, sigma: float | torch.Tensor) -> int:
        """Row of ``sigma`` in :attr:`sigmas` (0 = noisiest). Raises ValueError naming both
        schedules when the sampler's sigma is not one the inversion cached."""
        i = schedule.find_sigma(self.sigmas, sigma)
        if i is None:
            raise ValueError(
                f"sigma {float(sigma):.6g} is not in the inversion's schedule {schedule.describe(self.sigmas)}. "
                "Sample with the SIGMAS output of VideoEdit DDIM Inversion (or a KSampler with the same steps and "
                f"scheduler '{self.info.get('scheduler', '?')}', {self.num_steps} steps, denoise 1)."
            )
        return i

    def check_schedule(self, sampler_sigmas: torch.Tensor) -> None:
        """Every non-final sigma a sampler will evaluate must be cached; the error names both."""
        missing = [
            float(s)
            for s in torch.as_tensor(sampler_sigmas).flatten()[:-1]
            if schedule.find_sigma(self.sigmas, s) is None
        ]
        if missing:
            raise ValueError(
                f"the sampler's schedule {schedule.describe(torch.as_tensor(sampler_sigmas))} has sigmas "
                f"{[f'{m:.4g}' for m in missing[:4]]} not in the inversion's {schedule.describe(self.sigmas)}"
            )

    def latent_at(
        self,
        sigma: float | torch.Tensor,
        frames: Sequence[int] | torch.Tensor | None = None,
        *,
        space: str = "ve",
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Cached source latent ``[n, C, h, w]`` at exactly ``sigma`` (no interpolation).

        ``frames``: global frame indices (None = all). ``space``: ``"ve"`` (the sampler's x,
        ``x0 + sigma eps``) or ``"vp"`` (the UNet input ``x / sqrt(1+sigma^2)``). At the
        noisiest sigma the exact fp32 ``x_T`` is used.
        """
        if space not in ("ve", "vp"):
            raise ValueError(f"space must be 've' or 'vp', got {space!r}")
        i = self.step_index(sigma)
        idx = None if frames is None else torch.as_tensor(frames, dtype=torch.long).flatten()
        if idx is not None and idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.num_frames):
            raise ValueError(
                f"frame indices {idx.tolist()[:8]} out of range: the inversion holds {self.num_frames} frames"
            )
        s = self.sigmas[i]
        if i == 0:
            x = self.x_T if idx is None else self.x_T[idx]
            out = x.to(torch.float32) if space == "ve" else x.to(torch.float32) / torch.sqrt(1 + s * s)
        else:
            z = self.latents_vp[i] if idx is None else self.latents_vp[i, idx]
            z = z.to(torch.float32)
            out = to_ve(z, s) if space == "ve" else z
        return out.to(device=device or out.device, dtype=dtype)

    def source_latent(self, frames: Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
        """The input latent in the sampler's space (``sigma = 0``), ``[n, C, h, w]`` float32."""
        return self.latent_at(0.0, frames)

    def null_text_at(self, sigma: float | torch.Tensor) -> torch.Tensor:
        """The optimised unconditional embedding ``[1, T, D]`` for the step starting at ``sigma``."""
        if self.null_text is None:
            raise ValueError(
                "this VE_INVERSION has no null-text embeddings: run VideoEdit Null-Text Optimization on it"
            )
        i = self.step_index(sigma)
        if i >= self.num_steps:
            raise ValueError("sigma 0 ends the schedule; there is no step (and no null-text embedding) after it")
        return self.null_text[i : i + 1]

    # -- derived records -----------------------------------------------------------------------
    def with_null_text(self, embeddings: torch.Tensor, cfg: float, **info: Any) -> InversionRecord:
        """A shallow copy carrying ``embeddings`` ``[S, T, D]`` (one per step)."""
        return dataclasses.replace(
            self,
            null_text=embeddings.detach().to("cpu", torch.float32),
            null_text_cfg=float(cfg),
            info={**self.info, **info},
        )

    def with_features(self, **features: Any) -> InversionRecord:
        return dataclasses.replace(self, features={**self.features, **features})

    def check_weights(self, weights_id: str, what: str = "this MODEL") -> None:
        """Raise when ``weights_id`` (of the model about to use the record) differs."""
        if weights_id != self.weights_id:
            raise ValueError(
                f"inversion: the VE_INVERSION was computed with a different model than {what} (weights "
                f"{self.weights_id[:12]}… vs {weights_id[:12]}…). Run VideoEdit DDIM Inversion with the same "
                "MODEL (same checkpoint and LoRAs) that samples the edit."
            )

    def summary(self) -> str:
        c, h, w = self.latent_shape
        nt = "" if self.null_text is None else f", null-text x{self.null_text.shape[0]}"
        return (
            f"DDIM inversion: {self.num_frames} frames of {c}x{h}x{w}, {self.num_steps} steps "
            f"({self.info.get('scheduler', '?')}, inversion steps {self.info.get('inversion_steps', '?')}), "
            f"sigma {float(self.sigmas[0]):.4g} -> 0{nt}, key {self.key[:12]}"
        )


# -- (de)serialisation for the disk cache ---------------------------------------------------------
def record_tensors(record: InversionRecord) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and JSON metadata of a record (its conditioning is *not* stored: it is part of
    the cache key, and the caller has it when it asks for the entry)."""
    tensors = {"sigmas": record.sigmas, "latents_vp": record.latents_vp, "x_T": record.x_T}
    if record.null_text is not None:
        tensors["null_text"] = record.null_text
    meta = {
        "format_version": FORMAT_VERSION,
        "weights_id": record.weights_id,
        "patches_id": record.patches_id,
        "latent_hash": record.latent_hash,
        "key": record.key,
        "info": record.info,
        "null_text_cfg": record.null_text_cfg,
        "sigmas": [float(s) for s in record.sigmas],
    }
    return tensors, meta


def record_from_tensors(tensors: dict[str, torch.Tensor], meta: dict[str, Any], conditioning: list) -> InversionRecord:
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"record format {meta.get('format_version')} is not {FORMAT_VERSION}")
    return InversionRecord(
        sigmas=tensors["sigmas"],
        latents_vp=tensors["latents_vp"],
        x_T=tensors["x_T"],
        conditioning=conditioning,
        weights_id=meta["weights_id"],
        patches_id=meta["patches_id"],
        latent_hash=meta["latent_hash"],
        key=meta.get("key", ""),
        info=dict(meta.get("info", {})),
        null_text=tensors.get("null_text"),
        null_text_cfg=meta.get("null_text_cfg"),
    )

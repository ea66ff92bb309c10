"""CLIP embeddings for the edit-quality report: image embeddings from a CLIP_VISION, and a prompt
embedding from a CLIP text tower that shares the vision model's embedding space (detected, with
the reason when it does not).

When do a vision and a text model share a space? Only when both towers were trained together
(CLIP / OpenCLIP) and both keep their projection into the joint space. ComfyUI marks the text
towers whose projected pooled output it uses (``return_projected_pooled`` by default: SDXL's
clip_g, SD2's clip_h); SD1.x checkpoints ship their CLIP-L text encoder *without* the trained
projection, and ComfyUI then uses the unprojected pooled output — a cosine against image
embeddings would be meaningless there, so the report says so instead. The projection widths
must also agree (CLIP-L 768, OpenCLIP-H 1024, bigG 1280); equal widths are taken to mean the
same family (ViT-H vision with SD2's clip_h, bigG vision with clip_g), which no file records.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..media.quality import ClipEmbeddings, QualityReport, edit_quality
from ..media.quality_plot import plot_report

FRAME_CONSISTENCY = "CLIP frame consistency"
TEXT_ALIGNMENT = "CLIP text alignment"
CLIP_BATCH = 16  # frames per CLIP vision call
_TOWERS = ("clip_g", "clip_l", "clip_h")  # text towers of ComfyUI's CLIP wrappers (SD1, SD2, SDXL, SD3)


def image_embeddings(
    clip_vision, frames: torch.Tensor, batch: int = CLIP_BATCH, on_batch: Callable[[], None] | None = None
) -> torch.Tensor:
    """Projected image embeddings ``[F, D]`` float32 (CPU) of IMAGE frames ``[F, H, W, C]``
    (ComfyUI's own preprocessing: centre crop to the model's input size, CLIP normalisation)."""
    out = []
    for i in range(0, frames.shape[0], batch):
        out.append(clip_vision.encode_image(frames[i : i + batch, ..., :3])["image_embeds"].float().cpu())
        if on_batch is not None:
            on_batch()
    return torch.cat(out)


def vision_width(clip_vision) -> tuple[int | None, str]:
    """Width of the vision model's projection into the joint space, or None and why not."""
    proj = getattr(getattr(clip_vision, "model", None), "visual_projection", None)
    if not isinstance(proj, torch.nn.Linear):
        return None, (
            "the CLIP vision model has no projection into a joint image–text space (SigLIP / DINO-style image encoders)"
        )
    return int(proj.weight.shape[0]), ""


def _projects(tower) -> bool:
    """Whether ComfyUI uses this tower's projected pooled output (its default, not a per-call
    override: ``options_default`` holds the constructor's choice where it exists)."""
    defaults = getattr(tower, "options_default", None)
    if isinstance(defaults, tuple) and len(defaults) >= 3:
        return bool(defaults[2])
    return bool(getattr(tower, "return_projected_pooled", False))


def shared_text_tower(clip_vision, clip) -> tuple[str | None, str]:
    """The attribute name of ``clip``'s text tower that embeds into ``clip_vision``'s space
    (e.g. ``"clip_g"``), or None and the reason, naming each tower it looked at."""
    width, why = vision_width(clip_vision)
    if width is None:
        return None, why
    model = getattr(clip, "cond_stage_model", None)
    reasons = []
    for name in _TOWERS:
        tower = getattr(model, name, None)
        if tower is None:
            continue
        proj = getattr(getattr(tower, "transformer", None), "text_projection", None)
        if not isinstance(proj, torch.nn.Linear):
            reasons.append(f"{name} has no text projection")
            continue
        if not _projects(tower):
            reasons.append(
                f"{name} is used without its text projection (SD1.x checkpoints do not ship it), "
                "so its embeddings are not in the image space"
            )
            continue
        if int(proj.weight.shape[0]) != width:
            reasons.append(
                f"{name} embeds in {int(proj.weight.shape[0])} dimensions, the vision model in {width}: "
                "different CLIP models"
            )
            continue
        if not bool(torch.isfinite(proj.weight).all()) or not bool(proj.weight.abs().sum() > 0):
            reasons.append(f"{name}'s text projection holds no trained weights")
            continue
        return name, ""
    if not reasons:
        return None, "the CLIP model has no CLIP text tower"
    return (
        None,
        "; ".join(reasons) + ". Use a text encoder with a trained projection of the vision model's family "
        "(e.g. SDXL's clip_g with clip_vision_g, SD2's clip_h with a CLIP ViT-H vision model)",
    )


def text_embedding(clip, tower_name: str, prompt: str) -> torch.Tensor:
    """The prompt's projected pooled embedding ``[D]`` float32 (CPU) from one text tower."""
    tokens = clip.tokenize(prompt)
    key = tower_name[len("clip_") :]
    if key not in tokens:
        raise ValueError(f"clip: the tokenizer gives no tokens for its {tower_name} tower")
    clip.load_model()
    tower = getattr(clip.cond_stage_model, tower_name)
    tower.reset_clip_options()  # the tower's default: projected pooled output (checked by shared_text_tower)
    pooled = tower.encode_token_weights(tokens[key])[1]
    return pooled[0].float().cpu()


def clip_embeddings(
    source: torch.Tensor,
    edited: torch.Tensor,
    clip_vision=None,
    clip=None,
    prompt: str = "",
    on_batch: Callable[[], None] | None = None,
) -> ClipEmbeddings:
    """Everything the CLIP part of the report needs, with a reason for each score it cannot give."""
    result = ClipEmbeddings()
    if clip_vision is None:
        result.skipped[FRAME_CONSISTENCY] = "no clip_vision connected (Load CLIP Vision)"
        result.skipped[TEXT_ALIGNMENT] = "needs clip_vision, clip and a prompt"
        return result
    result.edited = image_embeddings(clip_vision, edited, on_batch=on_batch)
    result.source = image_embeddings(clip_vision, source, on_batch=on_batch)
    if clip is None or not prompt.strip():
        result.skipped[TEXT_ALIGNMENT] = "no clip connected" if clip is None else "the prompt is empty"
        return result
    tower, why = shared_text_tower(clip_vision, clip)
    if tower is None:
        result.skipped[TEXT_ALIGNMENT] = why
        return result
    result.text = text_embedding(clip, tower, prompt)
    return result


def evaluate_edit(
    source: torch.Tensor,
    edited: torch.Tensor,
    forward: torch.Tensor | None,
    backward: torch.Tensor | None,
    mask: torch.Tensor | None,
    clip_vision,
    clip,
    prompt: str,
    label: str,
    flow_scale: float,
    on_step: Callable[[], None] | None = None,
) -> tuple[QualityReport, torch.Tensor]:
    """The Edit Quality node's work on checked inputs: CLIP embeddings (where the models allow),
    every metric, and the plot IMAGE ``[1, H, W, 3]``."""
    embeds = clip_embeddings(source, edited, clip_vision, clip, prompt, on_batch=on_step)
    report = edit_quality(source, edited, forward, backward, mask, embeds, flow_scale, label, on_step=on_step)
    return report, plot_report(report)

"""The README's GPU memory guide, computed from tensor shapes (no GPU involved).

    .venv/bin/python scripts/memory_guide.py

Peak GPU memory of an edit while it samples, SD1.5 in fp16:

    peak ≈ overhead + UNet weights + rows of the largest UNet call × activations per row + stored features

- activations per row: ComfyUI's own estimate for SD1.5 with flash/xformers/SDPA attention
  (``comfy/model_base.py: BaseModel.memory_required``: latent h·w × 2 bytes × 0.01 × 1 MiB);
- rows per UNet call, from what each method batches (the cond and uncond rows of CFG, the source
  rows TokenFlow replays from the inversion in the same call);
- stored features: TokenFlow keeps every keyframe's self-attention output (source, uncond, cond)
  at all 16 SD1.5 self-attention layers for the step;
- overhead: CUDA context and ComfyUI's reserve, 1 GiB.

Inversion caches live in RAM or on disk (``steps × frames × 4·h·w × 2 bytes``), VAE encode and
decode are batched by ComfyUI to what fits, so neither limits the clip length.
"""

from __future__ import annotations

import math

GIB = 1024**3
MIB = 1024**2
UNET_PARAMS = 859.52e6  # SD1.5 UNet
OVERHEAD = 1.0 * GIB
# SD1.5 self-attention layers per latent resolution (level 1, 1/2, 1/4, 1/8 of the latent) and channels
ATTN_LAYERS = ((1, 5, 320), (2, 5, 640), (4, 5, 1280), (8, 1, 1280))
GPUS = (8, 12, 16, 24, 48, 80)


def per_row(latent_hw: int) -> float:
    return latent_hw * 2 * 0.01 * MIB


def attn_features_per_frame(h: int, w: int) -> float:
    """Bytes of one frame's self-attention outputs over every layer (fp16)."""
    return sum(n * (h // s) * (w // s) * c * 2 for s, n, c in ATTN_LAYERS)


def peaks(frames: int, size: int = 512, window: int = 8) -> dict[str, float]:
    h = w = size // 8
    row = per_row(h * w)
    base = OVERHEAD + UNET_PARAMS * 2
    n_key = math.ceil(frames / window)
    return {
        "plain CFG sampling of the clip in one batch": base + 2 * frames * row,
        "DDIM inversion (frame_batch_size 16)": base + min(frames, 16) * row,
        "TokenFlow (window 8)": base + 3 * max(window, n_key) * row + 3 * n_key * attn_features_per_frame(h, w),
        "FLATTEN (dense or bounded; all frames in one call)": base + 2 * frames * row,
        "Rerender keyframes (one keyframe at a time)": base + 2 * row,
    }


def most_frames(method: str, gib: float, size: int) -> str:
    if peaks(1, size)[method] > gib * GIB:
        return "—"
    if peaks(4096, size)[method] <= gib * GIB:
        return "any"
    lo, hi = 1, 4096
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if peaks(mid, size)[method] <= gib * GIB else (lo, mid - 1)
    return str(lo)


def table(size: int) -> str:
    methods = list(peaks(16, size))
    head = f"| method (SD1.5 fp16, {size}², computed) | " + " | ".join(f"{g} GB" for g in GPUS) + " |"
    lines = [head, "|---|" + "---|" * len(GPUS)]
    for m in methods:
        lines.append(f"| {m} | " + " | ".join(most_frames(m, g * 0.93, size) for g in GPUS) + " |")
    return "\n".join(lines)


def main() -> None:
    for size in (512, 768):
        print(table(size))
        print()
    p = peaks(16)
    print("16 frames at 512²: " + ", ".join(f"{k}: {v / GIB:.1f} GiB" for k, v in p.items()))


if __name__ == "__main__":
    main()

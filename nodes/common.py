"""Small helpers shared by the node modules (ComfyUI-side only)."""

from __future__ import annotations


def comfy_attention():
    """ComfyUI's own attention kernel (honours the user's --use-*-attention choice) with the
    ``attn_fn(q, k, v, heads)`` signature the attention modules take."""
    from comfy.ldm.modules.attention import optimized_attention

    return lambda q, k, v, heads: optimized_attention(q, k, v, heads)


def comfy_long_attention():
    """The kernel for attention over the keys of many frames (FLATTEN's spatio-temporal part):
    ComfyUI's own, unless that is one of its generic fallbacks chosen by default (sub-quadratic
    or split attention: what a CPU gets, a Python loop over chunks), then PyTorch's fused SDPA,
    which is memory-bounded as well (flash kernel on CPU, flash/memory-efficient on CUDA) and
    about 3x faster there at 8 frames x 1024 tokens (bench). A user's explicit
    --use-split/quad-cross-attention and every specialised kernel (xformers, sage, flash,
    pytorch) are kept."""
    import comfy.ldm.modules.attention as attention
    from comfy.cli_args import args

    from ..attention.extended import sdpa_attention

    explicit = getattr(args, "use_split_cross_attention", False) or getattr(args, "use_quad_cross_attention", False)
    fallbacks = {getattr(attention, name, None) for name in ("attention_sub_quad", "attention_split")}
    if not explicit and attention.optimized_attention in fallbacks:
        return sdpa_attention
    return comfy_attention()


def parse_int_list(text: str, input_name: str) -> list[int]:
    """'0, 8,16' → [0, 8, 16]; empty → []. Raises ValueError naming the input."""
    text = (text or "").strip()
    if not text:
        return []
    try:
        values = [int(part) for part in text.replace(";", ",").split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"{input_name}: '{text}' is not a comma-separated list of frame numbers, e.g. '0, 8, 16'") from None
    if any(v < 0 for v in values):
        raise ValueError(f"{input_name}: frame numbers must be >= 0, got '{text}'")
    return sorted(set(values))


def _custom_types():
    from comfy_api.latest import io

    return io.Custom("VE_INVERSION"), io.Custom("VE_TRAJECTORIES"), io.Custom("OPTICAL_FLOW")


VE_INVERSION, VE_TRAJECTORIES, OPTICAL_FLOW = _custom_types()

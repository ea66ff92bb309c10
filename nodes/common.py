"""What the node modules share: the pack's custom types, the one set of IMAGE / OPTICAL_FLOW
validators, and option parsing."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..flow.resize import resize_flow


def check_image(images, name: str = "images") -> torch.Tensor:
    """An IMAGE batch ``[F, H, W, C >= 3]``, returned as it is; ValueError naming the input otherwise."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[-1] < 3:
        raise ValueError(f"{name}: expected an IMAGE batch [F,H,W,3], got {_shape(images)}")
    return images


def check_flow(
    flow,
    name: str,
    frames: int | None = None,
    size: tuple[int, int] | None = None,
    missing: str = "",
    against: str = "the clip",
) -> torch.Tensor:
    """An OPTICAL_FLOW ``[F-1, H, W, 2]`` as float32; with ``frames``, it must hold ``frames - 1``
    pairs; with ``size`` ``(H, W)``, it is resized (and its vectors rescaled) to that grid.
    ``missing`` is the advice given when the input is not connected (``None``)."""
    if flow is None:
        raise ValueError(f"{name}: connect the clip's {name} (Estimate Optical Flow){missing}")
    if not isinstance(flow, torch.Tensor) or flow.ndim != 4 or flow.shape[-1] != 2:
        raise ValueError(f"{name}: expected OPTICAL_FLOW [F-1,H,W,2] (from Estimate Optical Flow), got {_shape(flow)}")
    if frames is not None and flow.shape[0] != frames - 1:
        raise ValueError(
            f"{name} has {flow.shape[0]} frame pairs ({flow.shape[0] + 1} frames) but {against} has "
            f"{frames} frames: use the flow of the same clip"
        )
    flow = flow.float()
    if size is not None and tuple(flow.shape[1:3]) != tuple(size):
        flow = resize_flow(flow, tuple(size))
    return flow


def _shape(value) -> str:
    return str(tuple(value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__


def parse_int_list(text: str, input_name: str) -> list[int]:
    """'0, 8,16' → [0, 8, 16]; empty → []. Raises ValueError naming the input."""
    text = (text or "").strip()
    if not text:
        return []
    try:
        values = [int(part) for part in text.replace(";", ",").split(",") if part.strip()]
    except ValueError:
        raise ValueError(
            f"{input_name}: '{text}' is not a comma-separated list of frame numbers, e.g. '0, 8, 16'"
        ) from None
    if any(v < 0 for v in values):
        raise ValueError(f"{input_name}: frame numbers must be >= 0, got '{text}'")
    return sorted(set(values))


def check_filename_prefix(prefix, input_name: str = "filename_prefix") -> str:
    """A save prefix that stays inside ComfyUI's output folder: no absolute path, no ``..``
    component, no NUL or other control character. Returns it unchanged."""
    if not isinstance(prefix, str):
        raise ValueError(f"{input_name}: expected text, got {type(prefix).__name__}")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in prefix):
        raise ValueError(
            f"{input_name}: contains a control character (e.g. a NUL byte); use letters, digits, "
            "'_', '-', '/' for subfolders"
        )
    parts = prefix.replace("\\", "/").split("/")
    if prefix.startswith(("/", "\\")) or (len(prefix) > 1 and prefix[1] == ":" and prefix[0].isalpha()):
        raise ValueError(
            f"{input_name}: '{prefix}' is an absolute path; give a path inside ComfyUI's output "
            "folder, e.g. 'VideoEdit/my_edit'"
        )
    if ".." in parts:
        raise ValueError(
            f"{input_name}: '{prefix}' climbs out of ComfyUI's output folder with '..'; give a path "
            "inside it, e.g. 'VideoEdit/my_edit'"
        )
    return prefix


def sampler_inputs(sampler_default: str, cfg_tooltip: str, sampler_tooltip: str) -> list:
    """The ``cfg`` and ``sampler_name`` widgets of the one-box samplers (TokenFlow, Video-P2P):
    guidance 7.5 in 0..100 and KSampler's samplers (checked by ``adapters.inversion.check_sampler_name``)."""
    import comfy.samplers
    from comfy_api.latest import io

    return [
        io.Float.Input("cfg", default=7.5, min=0.0, max=100.0, step=0.1, round=0.01, tooltip=cfg_tooltip),
        io.Combo.Input(
            "sampler_name",
            options=list(comfy.samplers.KSampler.SAMPLERS),
            default=sampler_default,
            tooltip=sampler_tooltip,
        ),
    ]


def interruptible_progress(total: int, absolute: bool = False) -> Callable[[int], None]:
    """The progress callback a node hands to the pure code: ``on_progress(n)`` stops when the user
    cancels (ComfyUI's interrupt), then moves ComfyUI's progress bar of ``total`` by ``n`` (with
    ``absolute``, to ``n``)."""
    import comfy.model_management
    import comfy.utils

    bar = comfy.utils.ProgressBar(max(total, 1))

    def on_progress(n: int = 1) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        if absolute:
            bar.update_absolute(min(n, bar.total))
        else:
            bar.update(n)

    return on_progress


def available_ram() -> int:
    """Bytes of RAM free for new tensors (0 = unknown: memory guards are off)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # psutil comes with ComfyUI; without it the guards are off, not the nodes
        return 0


def _custom_types():
    from comfy_api.latest import io

    return io.Custom("VE_INVERSION"), io.Custom("VE_TRAJECTORIES"), io.Custom("OPTICAL_FLOW")


VE_INVERSION, VE_TRAJECTORIES, OPTICAL_FLOW = _custom_types()

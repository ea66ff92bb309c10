"""Peak resident memory of one edit sampled with and without ComfyUI core's context windows,
in a process of its own (run by ``tests/host/test_context_windows.py``; also by hand:
``python tests/ve_testkit/peak_rss.py --method flatten --frames 24``).

The peak is the kernel's high-water mark (``VmHWM``), reset through ``/proc/self/clear_refs``
just before each sampling run, minus the resident size at that moment: the memory the run
itself needed. Prints one JSON object.
"""

import argparse
import gc
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ve_testkit.pack import load_pack  # noqa: E402


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def _reset_peak() -> None:
    gc.collect()
    try:  # hand freed heap back to the kernel, so one run's leftovers do not hide the next run's
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def measure(
    method: str,
    frames: int,
    size: int,
    length: int,
    overlap: int,
    steps: int,
    runs: tuple[str, ...] = ("windowed", "whole"),
) -> dict:
    import torch

    from ve_testkit.host import import_host
    from ve_testkit.models import build_tiny_clip, build_tiny_model, encode_prompt

    import_host()
    load_pack()
    import comfy.sample
    import comfy.samplers
    import comfy_extras.nodes_context_windows as ncw

    from comfyui_videoedit.nodes.flatten import ApplyFLATTEN, SampleTrajectories
    from comfyui_videoedit.nodes.inversion import DDIMInversion
    from comfyui_videoedit.nodes.tokenflow import ApplyExtendedAttention, ApplyTokenFlow

    model, clip = build_tiny_model(), build_tiny_clip()
    with torch.inference_mode():
        pos, neg, src = (encode_prompt(clip, t) for t in ("a red car", "", "a car"))
        latent = torch.randn(frames, 4, size, size, generator=torch.Generator().manual_seed(0)) * 0.5
        record, noisy, sigmas = DDIMInversion.execute(
            model, {"samples": latent}, src, steps, 0, "ddim_uniform", length, "memory", 0, False
        ).args
        flow = torch.zeros(frames - 1, size * 8, size * 8, 2)
        flow[..., 0] = 8.0
        (trajectories,) = SampleTrajectories.execute(flow, {"samples": latent}, 0).args

        def patched(base):
            if method == "tokenflow":
                return ApplyTokenFlow.execute(
                    base,
                    record,
                    window=4,
                    pnp_attn_t=0.5,
                    pnp_f_t=0.8,
                    seed=1,
                    nn_feature="input",
                    blend="official",
                    pnp_attn_blocks="output 1/32#1-2, 1/16, 1/8",
                    pnp_resnet_blocks="output 1/32#1",
                ).args[0]
            if method == "flatten":
                return ApplyFLATTEN.execute(
                    base,
                    trajectories,
                    mode="dense",
                    levels="highest",
                    old_qk=False,
                    anchor_stride=4,
                    max_anchors=4,
                    inject_step=0.8,
                    pnp_attn_blocks="output 4-9",
                    pnp_resnet_blocks="output 3, 4, 6",
                    inversion=record,
                ).args[0]
            return ApplyExtendedAttention.execute(base, keyframe_stride=1, keyframes="").args[0]

        windowed = ncw.ContextWindowsManualNode.execute(
            model, length, overlap, "standard_static", 1, False, "pyramid", 0
        ).args[0]
        result = {
            "method": method,
            "frames": frames,
            "latent": [size, size],
            "steps": steps,
            "context_length": length,
            "context_overlap": overlap,
        }
        x = noisy["samples"]
        # warm-up (the last step, windowed): lazy one-time allocations (kernels, thread pools) out of the figures
        comfy.sample.sample_custom(
            patched(windowed),
            torch.zeros_like(x),
            4.0,
            comfy.samplers.sampler_object("euler"),
            sigmas[-2:],
            pos,
            neg,
            x,
            disable_pbar=True,
            seed=0,
        )
        for label, base in (("windowed", windowed), ("whole", model)):
            if label not in runs:
                continue
            m = patched(base)
            _reset_peak()
            start = _status_mb("VmRSS")
            out = comfy.sample.sample_custom(
                m,
                torch.zeros_like(x),
                4.0,
                comfy.samplers.sampler_object("euler"),
                sigmas,
                pos,
                neg,
                x,
                disable_pbar=True,
                seed=0,
            )
            result[f"{label}_peak_mb"] = round(_status_mb("VmHWM") - start, 1)
            result[f"{label}_finite"] = bool(torch.isfinite(out).all())
            del out, m
        return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--method", choices=["tokenflow", "flatten", "extended"], default="flatten")
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--size", type=int, default=16, help="latent side (pixels / 8)")
    p.add_argument("--length", type=int, default=6)
    p.add_argument("--overlap", type=int, default=2)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--runs", default="windowed,whole", help="which runs, comma-separated")
    a = p.parse_args()
    runs = tuple(r.strip() for r in a.runs.split(","))
    print(json.dumps(measure(a.method, a.frames, a.size, a.length, a.overlap, a.steps, runs)), flush=True)


if __name__ == "__main__":
    main()

"""``python -m bench [--device cpu|cuda] [--frames 8] [--size 256] [--steps 2] [--cases a,b]``

Prints a table (time per sampling step, peak memory, ratio to the case's baseline measured
in the same run) and writes ``bench/results/latest.json``."""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from .cases import BASELINE, CASES, SHARES_SHAPES, WARMED_BY_SETUP, Context
from .memory import PeakMemory
from .setup import build_sd15, random_conditioning, start_host

RESULTS = Path(__file__).resolve().parent / "results"


def measure(runner, device, repeats: int, warm_up: bool = True) -> tuple[float, int]:
    """Best wall time over ``repeats`` runs and the peak memory above the level at the start
    of a run (time and memory taken in the same runs), after one warm-up run: on CPU the
    first call at a new batch size pays for oneDNN kernel generation (seconds), which would
    otherwise be charged to whichever case first uses that size. Cases that only scale their
    baseline's frame count reuse its shapes (``cases.SHARES_SHAPES``), and cases whose untimed
    setup already ran the same shapes (``cases.WARMED_BY_SETUP``, e.g. a Rerender keyframe after
    its anchor), skip it."""
    if warm_up:
        runner()
    times, peak = [], 0
    for _ in range(max(repeats, 1)):
        with PeakMemory(device) as mem:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            runner()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
        peak = max(peak, mem.peak_bytes)
    return min(times), peak


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=256, help="pixel size; the latent is size/8")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--cfg", type=float, default=7.5)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--out", default=str(RESULTS / "latest.json"))
    a = p.parse_args(argv)

    start_host(a.device)
    import comfy.model_management as mm

    device = mm.get_torch_device()
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    model = build_sd15(dtype)
    pos, neg = random_conditioning(1), random_conditioning(2)
    h = a.size // 8
    latent = torch.randn(a.frames, 4, h, h, generator=torch.Generator().manual_seed(3))
    ctx = Context(model=model, positive=pos, negative=neg, latent=latent, steps=a.steps, cfg=a.cfg)

    names = [n for n in a.cases.split(",") if n]
    unknown = [n for n in names if n not in CASES]
    if unknown:
        p.error(f"unknown cases {unknown}; known: {sorted(CASES)}")
    # each case's baseline (transitively) runs first, in the same process
    needed, todo = [], ["plain_cfg", *names]
    while todo:
        name = todo.pop(0)
        base = BASELINE.get(name)
        if base and base not in needed and base not in todo:
            todo.insert(0, name)
            todo.insert(0, base)
            continue
        if name not in needed:
            needed.append(name)
    names = needed
    rows = {}
    for name in names:
        runner = CASES[name](ctx)
        warm = not (name in SHARES_SHAPES and BASELINE.get(name) in rows) and name not in WARMED_BY_SETUP
        secs, peak = measure(runner, device, a.repeats, warm_up=warm)
        rows[name] = {"seconds": secs, "step_seconds": secs / a.steps, "peak_mb": peak / 2**20}
        print(f"  measured {name}: {secs:.2f}s, peak {peak / 2**20:.0f} MB", flush=True)
    for name, row in rows.items():
        base = BASELINE.get(name, "plain_cfg")
        row["baseline"] = base
        row["ratio"] = row["seconds"] / rows[base]["seconds"] if base in rows else None
        base_mem = rows[base]["peak_mb"] if base in rows else 0
        row["mem_ratio"] = row["peak_mb"] / base_mem if base_mem > 0 else None

    print(f"\nSD1.5 UNet (random weights), {a.frames} frames at {a.size}² (latent {h}²), {a.steps} steps, "
          f"device {device}, {torch.get_num_threads()} threads")
    print(f"{'case':<28}{'step s':>10}{'peak MB':>10}{'time x':>8}{'mem x':>8}  vs")
    for name, row in rows.items():
        ratio = f"{row['ratio']:.2f}" if row["ratio"] is not None else "-"
        mem = f"{row['mem_ratio']:.2f}" if row["mem_ratio"] is not None else "-"
        print(f"{name:<28}{row['step_seconds']:>10.3f}{row['peak_mb']:>10.0f}{ratio:>8}{mem:>8}  {row['baseline']}")
    result = {"settings": vars(a), "device": str(device), "host": platform.node(), "torch": torch.__version__,
              "cases": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))
    print(f"\nwritten {a.out}")
    return result


if __name__ == "__main__":
    main()

"""``python -m bench [--device cpu|cuda] [--frames 8] [--size 256] [--steps 2] [--repeats 3]
[--cases a,b] [--noise] [--model] [--threads N]``

Prints a table per case: seconds per sampling step (median of ``--repeats`` timed runs after a
warm-up; wall and process CPU time), peak memory, and the ratio to the case's baseline measured
in the same run with its spread (min–max over the repeats); ratios come from CPU time on CPU
and from synchronised wall time on CUDA. ``--noise`` keeps one core busy with a second process
for the whole run. ``--model`` adds the physical-limit model (FLOPs from the UNet's own shapes,
and the FLOPs counted in each case's warm-up run) and the quotient measured / modelled.
The timed repeats of all cases are interleaved (one of each case per round, after every
case's warm-up), so a change of load hits a case and its baseline alike. OpenMP threads wait
passively (``OMP_WAIT_POLICY=PASSIVE``, set here before torch loads unless the environment sets
it): a thread that waits for a descheduled sibling sleeps instead of spinning, and spinning would
count as CPU time. ``--threads N`` sets torch's intra-op threads.
``--gpu`` is the one-command GPU table (``make bench-gpu``). Writes ``bench/results/latest.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path


def passive_wait_policy(environ=os.environ, modules=sys.modules) -> str:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless the environment chose a policy, and return the
    policy in force. When torch (and with it libgomp, which reads the variable once, at load) is
    already imported, as when ``main`` is called from another program, nothing is changed and the
    answer says so.

    With the default (active) policy a thread that finishes its share of an operator spins until
    its siblings are done; when a sibling is descheduled (2 threads on 2 cores, one core taken by
    another process) the spinning is counted as this process's CPU time, and the CPU-time ratios
    then depend on the machine's load."""
    if "torch" in modules:
        return environ.get("OMP_WAIT_POLICY", "default") + " (torch was imported before the bench)"
    return environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


OMP_WAIT_POLICY = passive_wait_policy()  # before torch is imported below

import torch  # noqa: E402

from .cases import BASELINE, CASES, FULL_SCHEDULE, MODELS, SHARES_SHAPES, WARMED_BY_SETUP, Context  # noqa: E402
from .timing import busy_core, measure_interleaved, ratio_with_spread  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
# the GPU table: every method and the plain baselines (Rerender's CPU-only propagation/flow cases
# and the trajectory-sampling scale case are left out: they do not touch the GPU)
GPU_CASES = (
    "plain_cfg,plain_cfg1,extended_attention,tokenflow,tokenflow_separate_source,flatten_dense,"
    "flatten_bounded,inversion,plain_img2img,rerender_keyframe_img2img"
)


def _order(names: list[str]) -> list[str]:
    """``names`` with each case's baseline (transitively) before it; plain_cfg first."""
    needed, todo = [], ["plain_cfg", *names]
    while todo:
        name = todo.pop(0)
        base = BASELINE.get(name)
        if base and base not in needed and base not in todo:
            todo[:0] = [base, name]
            continue
        if name not in needed:
            needed.append(name)
    return needed


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=256, help="pixel size; the latent is size/8")
    p.add_argument("--steps", type=int, default=2, help="steps of the sampling schedule")
    p.add_argument(
        "--timed-steps", type=int, default=0, help="run only this many steps of the schedule and extrapolate (0 = all)"
    )
    p.add_argument("--cfg", type=float, default=7.5)
    p.add_argument("--repeats", type=int, default=3, help="timed runs per case after the warm-up (median)")
    p.add_argument("--cases", default="")
    p.add_argument(
        "--unet",
        default="sd15",
        choices=["sd15", "tiny"],
        help="tiny: the test UNet, only to check the script itself quickly",
    )
    p.add_argument("--dtype", default="auto", choices=["auto", "fp16", "fp32"], help="auto: fp16 on CUDA")
    p.add_argument("--noise", action="store_true", help="keep one core busy with a second process while timing")
    p.add_argument("--model", action="store_true", help="add the FLOP model and the counted FLOPs")
    p.add_argument(
        "--gpu",
        action="store_true",
        help="the GPU table: cuda, fp16, 512², 16 frames, 3 of 50 steps, 1 repeat, every method",
    )
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default, one per core)")
    p.add_argument("--out", default=str(RESULTS / "latest.json"))
    a = p.parse_args(argv)
    if a.gpu:  # explicit flags still win over the preset where given
        given = set(argv if argv is not None else __import__("sys").argv[1:])
        preset = {
            "--device": ("device", "cuda"),
            "--size": ("size", 512),
            "--frames": ("frames", 16),
            "--steps": ("steps", 50),
            "--timed-steps": ("timed_steps", 3),
            "--repeats": ("repeats", 1),
            "--cases": ("cases", GPU_CASES),
        }
        for flag, (attr, value) in preset.items():
            if not any(g == flag or g.startswith(flag + "=") for g in given):
                setattr(a, attr, value)
    if not a.cases:
        a.cases = ",".join(CASES)
    names = [n for n in a.cases.split(",") if n]
    unknown = [n for n in names if n not in CASES]
    if unknown:
        p.error(f"unknown cases {unknown}; known: {sorted(CASES)}")
    if a.size % 8 or a.size < 64:
        p.error(f"--size must be a multiple of 8 and at least 64, got {a.size}")
    if a.frames < 1 or a.steps < 1 or a.repeats < 1 or a.threads < 0:
        p.error("--frames, --steps and --repeats must be at least 1, --threads at least 0")
    a.names = _order(names)
    return a


def main(argv=None) -> dict:
    a = parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    from .setup import build_sd15, random_conditioning, start_host

    t_start = time.perf_counter()
    start_host(a.device)
    import comfy.model_management as mm

    device = mm.get_torch_device()
    if a.device == "cuda" and device.type != "cuda":
        raise SystemExit("--device cuda: ComfyUI found no CUDA device")
    dtype = {"fp16": torch.float16, "fp32": torch.float32}.get(
        a.dtype, torch.float16 if device.type == "cuda" else torch.float32
    )
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = build_sd15(dtype, device=device if device.type == "cuda" else None, unet=a.unet)
    build_s = time.perf_counter() - t0
    dim = model.get_model_object("diffusion_model").input_blocks[1][1].transformer_blocks[0].attn2.to_k.in_features
    pos, neg = random_conditioning(1, dim=dim), random_conditioning(2, dim=dim)
    h = a.size // 8
    latent = torch.randn(a.frames, 4, h, h, generator=torch.Generator().manual_seed(3))
    ctx = Context(
        model=model,
        positive=pos,
        negative=neg,
        latent=latent,
        steps=a.steps,
        cfg=a.cfg,
        timed_steps=a.timed_steps or None,
    )

    shapes = None
    if a.model:
        from .flops import unet_shapes

        shapes = unet_shapes(model.get_model_object("diffusion_model"), (h, h), context_dim=dim)

    kind = device.type
    rows: dict[str, dict] = {}
    runners, warm, counted, warm_up_fns = {}, {}, {}, {}
    for name in a.names:
        runners[name] = CASES[name](ctx)
        counted[name] = {}
        if a.model:
            from .flops import counted_flops

            def warm_up_fn(r, counted=counted[name]):
                counted["flops"] = counted_flops(r)

            warm_up_fns[name] = warm_up_fn
        # with --model every case runs its (counted) warm-up
        warm[name] = a.model or not (
            (name in SHARES_SHAPES and BASELINE.get(name) in runners) or name in WARMED_BY_SETUP
        )
    with busy_core(a.noise):
        timings = measure_interleaved(runners, device, a.repeats, warm, warm_up_fns)
    for name, tm in timings.items():
        steps = ctx.steps if name in FULL_SCHEDULE else ctx.run_steps
        row = {
            "wall": tm.wall,
            "cpu": tm.cpu,
            "steps_run": steps,
            "peak_mb": tm.peak_bytes / 2**20,
            "peak_total_mb": tm.peak_total_bytes / 2**20 if tm.peak_total_bytes else None,
            "step_seconds": tm.median(kind) / steps,
            "step_wall": sorted(tm.wall)[len(tm.wall) // 2] / steps,
            "step_cpu": sorted(tm.cpu)[len(tm.cpu) // 2] / steps,
        }
        if "flops" in counted[name]:
            row["counted_flops_per_step"] = counted[name]["flops"] / steps
        if shapes is not None and name in MODELS:  # models are linear in ctx.steps
            row["model_flops_per_step"] = MODELS[name](shapes, ctx) / ctx.steps
        rows[name] = row
        print(f"  measured {name}: wall {tm.wall}, cpu {tm.cpu}, peak {row['peak_mb']:.0f} MB", flush=True)

    for name, row in rows.items():
        base = BASELINE.get(name, "plain_cfg")
        row["baseline"] = base
        row["ratio"] = row["ratio_lo"] = row["ratio_hi"] = row["wall_ratio"] = None
        if base in rows and name != base:
            b = rows[base]
            scale = b["steps_run"] / row["steps_run"]
            metric = "wall" if kind == "cuda" else "cpu"
            r, lo, hi = ratio_with_spread(row[metric], b[metric])
            row["ratio"], row["ratio_lo"], row["ratio_hi"] = r * scale, lo * scale, hi * scale
            row["wall_ratio"] = ratio_with_spread(row["wall"], b["wall"])[0] * scale
            if b["peak_mb"] > 0:
                row["mem_ratio"] = row["peak_mb"] / b["peak_mb"]
            for key in ("model_flops_per_step", "counted_flops_per_step"):
                if key in row and key in b:
                    row[key.replace("_flops_per_step", "_ratio")] = row[key] / b[key]
            modelled = row.get("model_ratio") or row.get("counted_ratio")
            if modelled:
                row["quotient"] = row["ratio"] / modelled

    total_s = time.perf_counter() - t_start
    gpu = torch.cuda.get_device_name(device) if kind == "cuda" else platform.processor() or platform.machine()
    print(
        f"\n{'tiny test' if a.unet == 'tiny' else 'SD1.5'} UNet (random weights, {str(dtype)[6:]}), {a.frames} frames "
        f"at {a.size}² (latent {h}²), {a.steps}-step schedule"
        + (f", {ctx.run_steps} steps timed" if ctx.timed_steps else "")
        + f", device {device} ({gpu}), {torch.get_num_threads()} threads (OMP_WAIT_POLICY {OMP_WAIT_POLICY}),"
        + f" {a.repeats} interleaved repeats"
        + (", one core kept busy (--noise)" if a.noise else "")
        + f"; ratios from {'synchronised wall' if kind == 'cuda' else 'process CPU'} time"
    )
    if shapes is not None:
        print(shapes.summary())
    head = f"{'case':<28}{'wall s/st':>10}{'cpu s/st':>10}{'peak MB':>9}{'ratio':>7}{'spread':>13}{'wall x':>8}"
    if kind == "cuda":
        head += f"{'VRAM MB':>9}{'50 st s':>9}"
    if a.model:
        head += f"{'model':>7}{'count':>7}{'meas/mod':>9}"
    print(head + "  vs")
    for name, row in rows.items():

        def f2(v):
            return f"{v:.2f}" if v is not None else "-"

        spread = f"{row['ratio_lo']:.2f}-{row['ratio_hi']:.2f}" if row["ratio"] is not None else "-"
        line = (
            f"{name:<28}{row['step_wall']:>10.3f}{row['step_cpu']:>10.3f}{row['peak_mb']:>9.0f}"
            f"{f2(row['ratio']):>7}{spread:>13}{f2(row['wall_ratio']):>8}"
        )
        if kind == "cuda":
            line += f"{row['peak_total_mb'] or 0:>9.0f}{row['step_seconds'] * a.steps:>9.1f}"
        if a.model:
            line += f"{f2(row.get('model_ratio')):>7}{f2(row.get('counted_ratio')):>7}{f2(row.get('quotient')):>9}"
        print(line + f"  {row['baseline']}")
    for name, text in ctx.extra.get("info", {}).items():
        if name in rows:
            rows[name]["info"] = text
            print(f"{name}: {text}")
    print(f"whole run {total_s:.0f} s (model construction {build_s:.1f} s)")
    settings = {k: v for k, v in vars(a).items() if k != "names"}
    result = {
        "settings": settings,
        "device": str(device),
        "device_name": gpu,
        "host": platform.node(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "omp_wait_policy": OMP_WAIT_POLICY,
        "total_seconds": total_s,
        "build_seconds": build_s,
        "unet": shapes.summary() if shapes is not None else None,
        "cases": rows,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))
    print(f"\nwritten {a.out}")
    return result


if __name__ == "__main__":
    main()

"""``make demo``: run the shipped example workflow through a real ComfyUI's HTTP API.

Starts ComfyUI headless on 127.0.0.1 (a throw-away base directory under .host/demo, outputs
in ./output), queues ``workflows/api/<workflow>.json`` on the bundled sample clip, waits for
it and prints where the edited video and the flow preview were written.

Without ``--ckpt`` (``make demo CKPT=path/to/model.safetensors``) the workflow's checkpoint
loader is swapped for a tiny random-weight SD1.5-layout model: the run proves the plumbing
end to end, and the "edit" is noise-like. Say so plainly; use a real SD1.5 checkpoint for a
real edit.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from ve_testkit.server import ComfyServer  # noqa: E402
from ve_testkit.workflows import prepare_prompt, shrink  # noqa: E402

DEFAULT_WORKFLOW = ROOT / "workflows" / "api" / "videoedit_demo.json"
SAMPLE = ROOT / "workflows" / "assets" / "sample.mp4"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", type=Path, help="an SD1.5 checkpoint (.safetensors/.ckpt); default: tiny random model")
    p.add_argument("--workflow", type=Path, default=DEFAULT_WORKFLOW)
    p.add_argument("--video", type=Path, default=SAMPLE)
    p.add_argument("--prompt", help="target prompt for the edit")
    p.add_argument("--output", type=Path, default=ROOT / "output")
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--smoke-frames", type=int, default=12, help="frames in a smoke run (no --ckpt)")
    p.add_argument("--smoke-steps", type=int, default=10, help="steps in a smoke run (no --ckpt)")
    a = p.parse_args(argv)

    if a.ckpt is not None and not a.ckpt.is_file():
        p.error(f"--ckpt {a.ckpt}: no such file")
    if not a.video.is_file():
        p.error(f"--video {a.video}: no such file")
    base = ROOT / ".host" / "demo"
    (base / "input").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(a.video, base / "input" / a.video.name)
    if a.ckpt is not None:
        ckpt_dir = base / "models" / "checkpoints"
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        link = ckpt_dir / a.ckpt.name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(a.ckpt.resolve())
    a.output.mkdir(parents=True, exist_ok=True)
    prompt = prepare_prompt(json.loads(a.workflow.read_text()), a.video.name, a.ckpt.name if a.ckpt else None, a.prompt)
    if a.ckpt is None:  # smoke run: keep it short
        prompt = shrink(prompt, frames=a.smoke_frames, steps=a.smoke_steps, width=256)

    if a.ckpt is None:
        print(
            "NOTE: no CKPT given: this is a SMOKE RUN with a tiny random-weight model. It exercises the whole\n"
            "      pipeline through ComfyUI's HTTP API, but the 'edited' video is not a meaningful edit.\n"
            "      For a real edit: make demo CKPT=/path/to/sd15_model.safetensors",
            flush=True,
        )
    print(f"starting ComfyUI (base {base}, outputs {a.output}) ...", flush=True)
    t0 = time.time()
    with ComfyServer(base, with_smoke_models=True, output_dir=a.output) as server:
        print(f"ComfyUI up at {server.url} after {time.time() - t0:.1f}s; queueing {a.workflow.name}", flush=True)
        entry = server.run(prompt, timeout=a.timeout)
        files = server.output_files(entry)
    print(f"finished in {time.time() - t0:.1f}s. Outputs:")
    for f in files:
        print(f"  {f}")
    missing = [f for f in files if not f.exists()]
    if not files or missing:
        print(f"error: expected output files missing: {missing or 'none reported'}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

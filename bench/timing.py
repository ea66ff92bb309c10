"""Timing that survives a busy machine: process CPU time (every thread of this process) beside
wall time, the median of several repeats, and the spread of the ratios.

On a shared CPU the wall time of a run depends on what else runs; the CPU time this process
spends does much less (it still moves a little with cache and memory-bandwidth contention), so
ratios on CPU are taken from CPU time. On CUDA the GPU does the work and the host thread
mostly waits, so ratios are taken from wall time between two ``torch.cuda.synchronize``.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from .memory import PeakMemory


@dataclass
class Timing:
    """The repeats of one case: seconds per repeat (wall and process CPU) and peak memory."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    peak_bytes: int = 0  # above the level at the start of a run
    peak_total_bytes: int = 0  # CUDA only: max_memory_allocated (weights and everything else)

    def metric(self, device_type: str) -> list[float]:
        """The seconds ratios are computed from: CPU time on CPU, synchronised wall on CUDA."""
        return self.wall if device_type == "cuda" else self.cpu

    def median(self, device_type: str) -> float:
        return statistics.median(self.metric(device_type))


def _time_once(runner, device: torch.device, result: Timing) -> None:
    """One timed call of ``runner``: wall and process CPU seconds and peak memory into ``result``."""
    with PeakMemory(device) as mem:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        c0, t0 = time.process_time(), time.perf_counter()
        runner()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        result.wall.append(time.perf_counter() - t0)
        result.cpu.append(time.process_time() - c0)
    result.peak_bytes = max(result.peak_bytes, mem.peak_bytes)
    result.peak_total_bytes = max(result.peak_total_bytes, mem.total_peak_bytes)


def measure(runner, device: torch.device, repeats: int, warm_up: bool = True, warm_up_fn=None) -> Timing:
    """Run ``runner`` once untimed (unless ``warm_up`` is False: on CPU the first call at a new
    batch size pays for oneDNN kernel generation, seconds that would otherwise be charged to
    whichever case first uses that size), then ``repeats`` timed times.

    ``warm_up_fn(runner)`` replaces the plain warm-up call (the FLOP counter runs there, so
    counting costs no timed run)."""
    return measure_interleaved(
        {"case": runner}, device, repeats, {"case": warm_up}, {"case": warm_up_fn} if warm_up_fn else None
    )["case"]


def measure_interleaved(
    runners: dict, device: torch.device, repeats: int, warm_up: dict | None = None, warm_up_fns: dict | None = None
) -> dict[str, Timing]:
    """Every runner's warm-up (in order; ``warm_up[name]`` False skips it, ``warm_up_fns[name]``
    replaces it), then ``repeats`` rounds that time each runner once, in order: ABC ABC ABC.

    A change of load on a shared machine (another job starting or ending) then falls on a
    case's repeats and on its baseline's alike instead of on the one timed before or after it,
    and the repeats of one round ran under the same conditions."""
    warm_up, warm_up_fns = warm_up or {}, warm_up_fns or {}
    for name, runner in runners.items():
        if warm_up.get(name, True):
            (warm_up_fns.get(name) or (lambda r: r()))(runner)
    results = {name: Timing() for name in runners}
    for _ in range(max(int(repeats), 1)):
        for name, runner in runners.items():
            _time_once(runner, device, results[name])
    return results


def ratio_with_spread(case: list[float], base: list[float]) -> tuple[float, float, float]:
    """``(median ratio, lowest, highest)`` of ``case`` seconds over ``base`` seconds.

    The median ratio is median(case) / median(base); the spread is the widest the repeats
    allow: min(case) / max(base) .. max(case) / min(base)."""
    return (statistics.median(case) / statistics.median(base), min(case) / max(base), max(case) / min(base))


@contextmanager
def busy_core(enabled: bool = True):
    """Keep one core busy with a second process (``python -c "while True: pass"``) for the
    duration of the block: the ``--noise`` run that shows the CPU-time ratios do not move."""
    if not enabled:
        yield None
        return
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

"""Peak memory of a call: CUDA allocator peak on GPU, sampled RSS on CPU."""

from __future__ import annotations

import threading
import time

import psutil
import torch


class PeakMemory:
    """Context manager measuring the peak memory above the level at entry.

    CPU: RSS polled every ``interval`` s in a thread (coarse but honest for allocations
    that live longer than a few ms, which is what matters for activations and caches).
    CUDA: ``torch.cuda.max_memory_allocated`` relative to the allocation at entry.
    """

    def __init__(self, device: torch.device, interval: float = 0.005):
        self.device = torch.device(device)
        self.interval = interval
        self.peak_bytes = 0
        self.total_peak_bytes = 0  # CUDA: the allocator's whole peak (weights included)

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        self._proc = psutil.Process()
        self._base = self._proc.memory_info().rss
        self._peak = self._base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, self._proc.memory_info().rss)
            time.sleep(self.interval)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.total_peak_bytes = torch.cuda.max_memory_allocated(self.device)
            self.peak_bytes = self.total_peak_bytes - self._base
            return
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, self._proc.memory_info().rss)
        self.peak_bytes = self._peak - self._base

"""Wall time and peak memory of one call (the "unlearning step" of each method, measured, not asserted).

On CUDA, peak memory is ``torch.cuda.max_memory_allocated`` above the level at the start; on CPU it is the peak
resident set size of the process above its size at the start, sampled every ``interval_s`` by a thread (so very
short spikes can be missed; a lower bound). Before the start is read, memory freed by earlier work is handed back
to the operating system (``gc.collect`` and glibc's ``malloc_trim``): otherwise the allocator would reuse it
without the resident size growing, and a call measured after a larger one would read as almost free.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import psutil
import torch

T = TypeVar("T")


@dataclass
class Measured(Generic[T]):
    """``value`` returned by the call, its ``seconds`` and ``peak_mib`` (peak memory above the start, MiB)."""

    value: T
    seconds: float
    peak_mib: float
    memory_kind: str

    def cost(self) -> dict[str, float | str]:
        return {"seconds": self.seconds, "peak_mib": self.peak_mib, "memory_kind": self.memory_kind}


def release_freed_memory() -> None:
    """Collect garbage and return freed heap memory to the OS (glibc ``malloc_trim``; a no-op elsewhere)."""
    gc.collect()
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def measure(fn: Callable[[], T], device: torch.device | str = "cpu", interval_s: float = 0.02) -> Measured[T]:
    """Run ``fn()`` and measure it (module docstring); ``device`` is the model's (``model.cfg.device``)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start_bytes = torch.cuda.memory_allocated(device)
        start = time.perf_counter()
        value = fn()
        torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated(device) - start_bytes
        return Measured(value, seconds, peak / 2**20, "cuda_allocated")
    process = psutil.Process()
    release_freed_memory()
    start_rss = process.memory_info().rss
    peak = [start_rss]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(interval_s):
            peak[0] = max(peak[0], process.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    try:
        value = fn()
    finally:
        seconds = time.perf_counter() - start
        done.set()
        sampler.join()
    peak[0] = max(peak[0], process.memory_info().rss)
    return Measured(value, seconds, (peak[0] - start_rss) / 2**20, "cpu_rss")

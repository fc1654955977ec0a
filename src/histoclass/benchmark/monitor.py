"""What a benchmark stage used besides time: GPU busy share, peak host memory (process tree), peak
device memory."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

import psutil
import torch

__all__ = ["Usage", "UsageMonitor"]


@dataclass
class Usage:
    """Mean GPU utilisation (%, None without a GPU), peak host memory (MiB, PSS of this process and its
    children: shared pages counted once), peak device memory allocated (MiB, None without a GPU)."""

    gpu_util: float | None
    host_peak_mib: float
    device_peak_mib: float | None


def _tree_pss_mib() -> float:
    """Proportional set size of this process and its loader processes: memory they really add up to."""
    total = 0
    for process in [
        psutil.Process(os.getpid()),
        *psutil.Process(os.getpid()).children(recursive=True),
    ]:
        try:
            info = process.memory_full_info()
            total += getattr(info, "pss", info.rss)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total / 2**20


def _gpu_util() -> float | None:
    try:
        return float(torch.cuda.utilization())
    except Exception:  # no NVML on this machine: utilisation is simply not reported
        return None


class UsageMonitor:
    """Samples in a thread while ``measuring`` (set by :meth:`start`/:meth:`stop`, e.g. from a callback)."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.measuring = False
        self._utils: list[float] = []
        self._host_peak = 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> UsageMonitor:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()

    def start(self) -> None:
        self.measuring = True

    def stop(self) -> None:
        self.measuring = False

    def _sample(self) -> None:
        tick = 0
        while not self._done.wait(self.interval):
            if self.measuring:
                util = _gpu_util() if torch.cuda.is_available() else None
                if util is not None:
                    self._utils.append(util)
                if tick % 5 == 0:  # reading every process's page map is slower than NVML
                    self._host_peak = max(self._host_peak, _tree_pss_mib())
                tick += 1

    def usage(self) -> Usage:
        self._host_peak = max(self._host_peak, _tree_pss_mib())
        device = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
        util = sum(self._utils) / len(self._utils) if self._utils else None
        return Usage(util, self._host_peak, device)


def synchronize() -> float:
    """Wait for queued GPU work, then read the clock: timings end when the device is done, not when
    launched."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()

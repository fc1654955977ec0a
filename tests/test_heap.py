"""glibc's allocator: a training process keeps what a step frees for the next step."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

#: Page faults of a few forward and backward passes with activations of 2-19 MB (as a training step at
#: 96 px has), before and after ``keep_freed_memory``, in a process of its own (it lasts for the process).
STEPS = """
import resource
import torch
from histoclass.heap import keep_freed_memory

torch.manual_seed(0)
layers = [torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(32, 32, 3, padding=1)]
model, images = torch.nn.Sequential(*layers), torch.randn(16, 3, 96, 96)


def faults(steps: int = 3) -> int:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(steps):
        model(images).sum().backward()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


faults()
default = faults()
applied = keep_freed_memory()
faults()
print(applied, default, faults())
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator")
def test_freed_memory_is_kept_for_the_next_step() -> None:
    done = subprocess.run(
        [sys.executable, "-c", STEPS], capture_output=True, text=True, timeout=120, check=True
    )
    applied, default, kept = done.stdout.split()
    assert applied == "True"
    # glibc's defaults hand the activations back and fault them in again every step
    assert int(kept) * 4 < int(default), (default, kept)

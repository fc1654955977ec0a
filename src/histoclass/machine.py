"""The machine a process runs on, described once: its CPU and accelerators, and its place in a
distributed launch.

Speed records (the engine checks, ``histoclass bench``, the benchmark scripts) name the machine they were
measured on; distributed jobs (training, slides) read their rank the same way under torchrun and srun.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
from pathlib import Path

__all__ = ["cpu_flags", "cpu_name", "describe_machine", "launch"]

#: Instruction sets that decide precision and engine choices on x86 CPUs.
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


@functools.cache
def _cpuinfo() -> str:
    with contextlib.suppress(OSError):
        return Path("/proc/cpuinfo").read_text()
    return ""


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what the platform says."""
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """Which of :data:`CPU_FLAGS` this CPU has."""
    flags = next(
        (
            line.split(":", 1)[1].split()
            for line in _cpuinfo().splitlines()
            if line.startswith("flags")
        ),
        [],
    )
    return [flag for flag in CPU_FLAGS if flag in flags]


@functools.cache
def describe_machine() -> str:
    """Names this machine for speed records: the CPU, its cores, and whether a GPU is attached."""
    gpu = any(Path(node).exists() for node in ("/dev/nvidia0", "/dev/kfd"))
    return f"{cpu_name()}, {os.cpu_count()} cpus{', gpu' if gpu else ''}"


def launch() -> tuple[int, int, str]:
    """(global rank, world size, launch id) as torchrun or srun announce them; (0, 1, "") otherwise."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        launch_id = (
            env.get("TORCHELASTIC_RUN_ID") or f"{env.get('MASTER_ADDR')}-{env.get('MASTER_PORT')}"
        )
        return int(env["RANK"]), int(env["WORLD_SIZE"]), launch_id
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        step = f"slurm-{env.get('SLURM_JOB_ID')}-{env.get('SLURM_STEP_ID')}"
        return int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), step
    return 0, 1, ""

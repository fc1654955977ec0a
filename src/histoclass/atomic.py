"""Atomic file and folder writes: a reader (or a crash) never sees a half-written output.

Every output histoclass produces goes through here: write beside the target, flush, fsync, rename. Outputs get
the user's usual permissions (umask), not the private ones of temporary files; temporary folders left by an
interrupted job are removed by the next job that builds in the same place.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from histoclass.errors import HistoclassError

_UMASK = os.umask(0)
os.umask(_UMASK)

__all__ = [
    "atomic_path",
    "building_folder",
    "replace_folder",
    "require_writable",
    "write_bytes",
    "write_csv",
    "write_json",
    "write_pieces",
    "write_text",
]


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp makes 0600 (and some writers, safetensors', make their own file): outputs get the usual mode
        os.chmod(tmp, 0o666 & ~_UMASK)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(target: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def write_text(target: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``target`` atomically."""
    return write_bytes(target, text.encode("utf-8"))


def write_json(target: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON to ``target`` atomically."""
    return write_text(target, json.dumps(data, indent=2, sort_keys=False) + "\n")


@contextlib.contextmanager
def _text_file(target: str | Path) -> Iterator[TextIO]:
    """A UTF-8 text file written as it goes and renamed onto ``target`` at the end: a large output
    is never one string in memory."""
    with atomic_path(target) as tmp, tmp.open("w", encoding="utf-8", newline="") as handle:
        yield handle


def write_pieces(target: str | Path, pieces: Iterable[str]) -> Path:
    """Write text pieces to ``target`` atomically as they come."""
    with _text_file(target) as handle:
        handle.writelines(pieces)
    return Path(target)


def write_csv(target: str | Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    """Write a header and rows as CSV (quoted where needed) to ``target`` atomically, row by row."""
    with _text_file(target) as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return Path(target)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _remove_stale(parent: Path, prefix: str) -> None:
    """Remove ``prefix<pid>-*`` folders whose process is gone (an interrupted job's leftovers)."""
    for folder in parent.glob(f"{prefix}*"):
        pid = folder.name[len(prefix) :].split("-", 1)[0]
        if folder.is_dir() and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def building_folder(parent: str | Path, prefix: str) -> Iterator[Path]:
    """A fresh hidden folder ``parent/<prefix><pid>-XXXX`` to build outputs in, removed afterwards whatever
    happens (move what should stay out of it first); leftovers of dead processes are removed first."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(parent, prefix)
    folder = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=parent))
    os.chmod(folder, 0o777 & ~_UMASK)  # mkdtemp makes 0700
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def replace_folder(built: Path, target: Path) -> None:
    """Put ``built`` in place of ``target`` with renames only: the old folder goes once the new one is in."""
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    built.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def require_writable(folder: str | Path, writes: str) -> None:
    """One line, before any work, when ``folder`` (a run directory on read-only storage) cannot take
    ``writes``."""
    folder = Path(folder)
    if folder.is_dir() and not os.access(folder, os.W_OK):
        raise HistoclassError(
            f"'{folder}' is read-only, and this writes {writes} into it: copy the run to a writable place "
            f"(cp -r {folder} ~/runs/) and run it there"
        )

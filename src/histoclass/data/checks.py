"""Data checks: decode every image once, report unreadable, truncated and empty files, never touch them.

``histoclass check-data`` prints the report; training runs the same scan and leaves bad files out.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from histoclass.atomic import write_json
from histoclass.data.images import EMPTY_FILE, unreadable_reason
from histoclass.data.inputs import file_identities
from histoclass.data.records import DataSource, ImageRecords
from histoclass.data.sources import cache_root

__all__ = ["BadImage", "DataReport", "check_source", "drop_bad", "print_report", "scan_records"]

#: Changes whenever the scan does, so scans kept from the old way are not reused.
SCAN_VERSION = 1
#: JPEGs are decoded at 1/8 scale by the DCT: every byte is still parsed, so truncation is still found.
_CHECK_DECODE_SIZE = 32


@dataclass(frozen=True)
class BadImage:
    """A file that could not be used, and why."""

    split: str
    id: str
    reason: str


@dataclass
class ImageInfo:
    size: tuple[int, int] | None
    mode: str | None
    error: str | None


def _inspect_file(records: ImageRecords, i: int) -> ImageInfo:
    from PIL import Image

    path = records.paths[i]
    try:
        if path.stat().st_size == 0:
            return ImageInfo(None, None, EMPTY_FILE)
        with Image.open(path) as probe:
            size, mode = probe.size, probe.mode
        records.open(i, size_hint=_CHECK_DECODE_SIZE)
        return ImageInfo(size, mode, None)
    except Exception as error:
        # Pillow raises many types for bad data; each becomes a reported reason
        return ImageInfo(None, None, unreadable_reason(error))


def _scan_file(records: ImageRecords) -> Path | None:
    """Where the scan of these files (by path, size and time) is kept; None when one cannot be
    stat'ed (the scan reports it)."""
    digest = hashlib.sha256(f"scan {SCAN_VERSION}\n".encode())
    try:
        for identity in file_identities(records.paths):
            digest.update(f"{identity}\n".encode())
    except OSError:
        return None
    return cache_root() / "scans" / f"{digest.hexdigest()[:32]}.json"


def scan_records(records: ImageRecords, workers: int | None = None) -> list[ImageInfo]:
    """Decode every image of ``records`` (threads: Pillow releases the GIL while decoding); the
    same files scanned before (a second run, each trial of a study) are read back."""
    if records.paths is None:
        shape = records.array.shape
        mode = "L" if records.array.ndim == 3 else ("RGB" if shape[-1] == 3 else f"{shape[-1]}ch")
        return [ImageInfo((shape[2], shape[1]), mode, None)] * len(records)
    kept = _scan_file(records)
    if kept is not None and kept.is_file():
        return [
            ImageInfo(tuple(size) if size else None, mode, error)
            for size, mode, error in json.loads(kept.read_text())
        ]
    workers = workers or min(32, (os.cpu_count() or 1) * 2)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        infos = list(
            pool.map(lambda i: _inspect_file(records, i), range(len(records)), chunksize=64)
        )
    if kept is not None:
        # a cache that cannot be written costs the next run a scan, not this one its result
        with contextlib.suppress(OSError):
            write_json(kept, [[info.size, info.mode, info.error] for info in infos])
    return infos


def drop_bad(
    records: ImageRecords, infos: list[ImageInfo], split: str
) -> tuple[ImageRecords, list[BadImage]]:
    """Records without the unreadable ones, and the list of those left out."""
    good = [i for i, info in enumerate(infos) if info.error is None]
    bad = [
        BadImage(split, records.ids[i], info.error) for i, info in enumerate(infos) if info.error
    ]
    return (records if len(good) == len(records) else records.subset(good)), bad


@dataclass
class DataReport:
    """What ``check-data`` shows: counts per class and split, sizes, modes, imbalance and bad files."""

    source: DataSource
    counts: dict[str, np.ndarray] = field(default_factory=dict)
    sizes: Counter = field(default_factory=Counter)
    modes: Counter = field(default_factory=Counter)
    bad: list[BadImage] = field(default_factory=list)
    clean: dict[str, ImageRecords] = field(default_factory=dict)

    @property
    def imbalance(self) -> float:
        """Largest over smallest class count across all splits (inf when a class has no readable image)."""
        total = sum(self.counts.values())
        return float(total.max() / total.min()) if total.min() > 0 else float("inf")

    def empty_classes(self) -> list[str]:
        """Classes with no readable image in any split."""
        total = sum(self.counts.values())
        return [name for name, count in zip(self.source.classes, total, strict=True) if count == 0]


def check_source(source: DataSource, workers: int | None = None) -> DataReport:
    """Scan every split of ``source``; the report's ``clean`` splits hold only readable images."""
    report = DataReport(source=source)
    report.bad += [BadImage("all", image_id, reason) for image_id, reason in source.missing]
    for split, records in source.splits.items():
        infos = scan_records(records, workers)
        clean, bad = drop_bad(records, infos, split)
        report.bad += bad
        report.clean[split] = clean
        report.counts[split] = clean.class_counts(len(source.classes))
        report.sizes.update(info.size for info in infos if info.size)
        report.modes.update(info.mode for info in infos if info.mode)
    return report


def print_report(report: DataReport) -> None:
    """The check-data tables: per class and split, sizes and modes, imbalance, bad files."""
    from rich.table import Table

    from histoclass.console import console

    splits = list(report.counts)
    table = Table(title=f"{report.source.name} ({report.source.kind}): readable images per class")
    table.add_column("class")
    for split in [*splits, "total"]:
        table.add_column(split, justify="right")
    total = sum(report.counts.values())
    for i, name in enumerate(report.source.classes):
        table.add_row(name, *(str(report.counts[s][i]) for s in splits), str(total[i]))
    table.add_row(
        "total", *(str(report.counts[s].sum()) for s in splits), str(total.sum()), style="bold"
    )
    console.print(table)
    sizes = ", ".join(f"{w}x{h} ({n})" for (w, h), n in report.sizes.most_common(5))
    console.print(f"Image sizes (most common): {sizes or 'none'}")
    console.print(
        f"Modes: {', '.join(f'{m} ({n})' for m, n in report.modes.most_common()) or 'none'}"
    )
    console.print(f"Class imbalance (largest / smallest class): {report.imbalance:.2f}")
    if report.bad:
        bad = Table(
            title=f"{len(report.bad)} file(s) that cannot be used (left in place, skipped in training)"
        )
        for column in ("split", "file", "problem"):
            bad.add_column(column)
        for item in report.bad:
            bad.add_row(item.split, item.id, item.reason)
        console.print(bad)
    else:
        console.print("[green]Every image is readable.[/]")

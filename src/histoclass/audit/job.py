"""The check-data job: the data scan, and with ``--duplicates`` the near-duplicate audit of every split
(and of ``--against``), with ``duplicates.csv`` and ``duplicates.html``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from histoclass.audit.copies import AuditSettings, find_copies
from histoclass.audit.report import findings, print_findings, write_audit
from histoclass.config import CheckDataConfig, DataConfig, ModelConfig
from histoclass.console import console
from histoclass.data.checks import DataReport, check_source, print_report
from histoclass.data.records import ImageRecords
from histoclass.data.sources import read_source
from histoclass.errors import HistoclassError

__all__ = ["audit_settings", "check_data"]


def audit_settings(config: CheckDataConfig) -> AuditSettings:
    """The audit as the flags ask: their backbone (default: the training default) and thresholds."""
    return AuditSettings(
        model=config.model or ModelConfig().name,
        weights=config.weights,
        image_size=config.audit_size,
        threshold=config.threshold,
        neighbours=config.neighbours,
        min_inliers=config.min_inliers,
    )


def _data_config(config: CheckDataConfig, path: str) -> DataConfig:
    given = {key: getattr(config, key) for key in ("image_dir", "id_column", "label_column")}
    return DataConfig(
        path=path, **{key: value for key, value in given.items() if value is not None}
    )


def _combined(reports: list[DataReport]) -> tuple[ImageRecords, list[str], list[str]]:
    """Every readable image of every split (and of --against), with its split and label names.

    A split is named by its dataset when the dataset has no splits, else ``dataset/split``.
    """
    paths, ids, splits, labels = [], [], [], []
    for report in reports:
        name = report.source.name
        for split, records in report.clean.items():
            if records.paths is None:
                raise HistoclassError(
                    "--duplicates audits image files; save .npz images as files first"
                )
            paths += records.paths
            ids += [
                f"{name}/{image_id}" if len(reports) > 1 else image_id for image_id in records.ids
            ]
            splits += [name if split == "all" else f"{name}/{split}"] * len(records)
            labels += [report.source.classes[k] for k in records.labels]
    return ImageRecords(ids=ids, labels=np.zeros(len(ids), np.int64), paths=paths), splits, labels


def check_data(config: CheckDataConfig) -> DataReport:
    """Scan ``config.data`` (and audit it for copies); fail when a class has no readable image."""
    source = read_source(config.data, _data_config(config, config.data))
    against = (
        read_source(config.against, _data_config(config, config.against))
        if config.against
        else None
    )
    report = check_source(source)
    print_report(report)
    if report.empty_classes():
        raise HistoclassError(f"class {', '.join(report.empty_classes())} has no readable image")
    if config.duplicates or against is not None:
        reports = [report] + ([check_source(against)] if against is not None else [])
        records, splits, labels = _combined(reports)
        settings = audit_settings(config)
        found = findings(records, splits, labels, find_copies(records, settings))
        print_findings(found, settings)
        out = Path(config.out or f"{report.source.name}-duplicates")
        table, page = write_audit(found, out, report.source.name)
        console.print(f"Clusters of every image: [bold]{table}[/]; thumbnails: [bold]{page}[/]")
    return report

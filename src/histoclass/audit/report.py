"""What an audit shows: the terminal summary, ``duplicates.csv`` and the self-contained
``duplicates.html``."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from jinja2 import Environment, PackageLoader, select_autoescape
from rich.markup import escape

from histoclass.atomic import write_csv, write_text
from histoclass.audit.copies import AuditSettings, Copies
from histoclass.audit.names import slide_hint
from histoclass.console import console
from histoclass.data.records import ImageRecords

__all__ = ["AuditFindings", "findings", "print_findings", "write_audit"]

#: Thumbnails per cluster on the page, and clusters per section (the CSV lists everything).
_THUMBNAILS, _CLUSTERS = 12, 100


@dataclass
class AuditFindings:
    """The clusters that matter: the largest, those crossing splits, those mixing labels."""

    records: ImageRecords
    splits: list[str]
    labels: list[str]
    copies: Copies
    crossing: list[int]
    mixed: list[int]

    @property
    def in_clusters(self) -> int:
        sizes = self.copies.sizes
        return int(sizes[sizes > 1].sum())


def findings(
    records: ImageRecords, splits: list[str], labels: list[str], copies: Copies
) -> AuditFindings:
    """Which clusters cross splits and which mix labels (each list largest first)."""
    crossing, mixed = [], []
    for cluster in np.flatnonzero(copies.sizes > 1):
        members = copies.members(cluster)
        if len({splits[i] for i in members}) > 1:
            crossing.append(int(cluster))
        if len({labels[i] for i in members}) > 1:
            mixed.append(int(cluster))
    return AuditFindings(records, splits, labels, copies, crossing, mixed)


def _describe_cluster(found: AuditFindings, cluster: int) -> str:
    members = found.copies.members(cluster)
    splits = sorted({found.splits[i] for i in members})
    labels = sorted({found.labels[i] for i in members})
    return f"cluster {cluster}: {len(members)} images, splits {'/'.join(splits)}, labels {', '.join(labels)}"


def print_findings(found: AuditFindings, settings: AuditSettings) -> None:
    sizes = found.copies.sizes
    verified = (
        f", confirmed by >= {settings.min_inliers} keypoints and the pixels"
        if settings.min_inliers
        else ""
    )
    floor = f" above {settings.threshold}" if settings.threshold is not None else ""
    console.print(
        f"[bold]Near-duplicates[/] ({settings.model} at {settings.image_size} px; "
        f"{settings.neighbours} nearest neighbours{floor}{verified})"
    )
    console.print(
        f"  {len(found.records)} images in {len(sizes)} clusters; {found.in_clusters} images have a copy "
        f"({int((sizes > 1).sum())} clusters of 2 or more, largest {int(sizes.max())})"
    )
    console.print(f"  exact byte duplicates: {len(found.copies.exact)} group(s)")
    style = "red" if found.crossing else "green"
    console.print(f"  [{style}]clusters crossing splits: {len(found.crossing)}[/]")
    for cluster in found.crossing[:10]:
        console.print(f"    {_describe_cluster(found, cluster)}")
    style = "yellow" if found.mixed else "green"
    console.print(f"  [{style}]clusters with different labels: {len(found.mixed)}[/]")
    for cluster in found.mixed[:10]:
        console.print(f"    {_describe_cluster(found, cluster)}")
    if hint := slide_hint(found.records.ids):
        console.print(f"  {escape(hint)}")


def _thumbnail(records: ImageRecords, i: int) -> str:
    try:
        image = records.open(i, size_hint=96)
    except Exception:  # an unreadable image shows as a blank tile; it is listed by the data check
        return ""
    image.thumbnail((96, 96))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _section(found: AuditFindings, clusters: list[int]) -> list[dict]:
    items = []
    for cluster in clusters[:_CLUSTERS]:
        members = found.copies.members(cluster)
        items.append(
            {
                "title": _describe_cluster(found, cluster),
                "images": [
                    {
                        "id": found.records.ids[i],
                        "split": found.splits[i],
                        "label": found.labels[i],
                        "data": _thumbnail(found.records, i),
                    }
                    for i in members[:_THUMBNAILS]
                ],
                "more": max(0, len(members) - _THUMBNAILS),
            }
        )
    return items


def write_audit(found: AuditFindings, out: Path, title: str) -> tuple[Path, Path]:
    """``duplicates.csv`` (every image: id, cluster, cluster size, split, label) and ``duplicates.html``."""
    copies, sizes = found.copies, found.copies.sizes
    rows = [
        (image_id, int(cluster), int(sizes[cluster]), split, label)
        for image_id, cluster, split, label in zip(
            found.records.ids, copies.clusters, found.splits, found.labels, strict=True
        )
    ]
    table = write_csv(
        out / "duplicates.csv", ["id", "cluster", "cluster_size", "split", "label"], rows
    )
    largest = [int(c) for c in np.flatnonzero(sizes > 1)][:10]
    template = Environment(
        loader=PackageLoader("histoclass.audit", "templates"), autoescape=select_autoescape()
    ).get_template("duplicates.html.j2")
    html = template.render(
        title=title,
        images=len(found.records),
        clusters=len(sizes),
        in_clusters=found.in_clusters,
        exact=len(copies.exact),
        crossing_count=len(found.crossing),
        mixed_count=len(found.mixed),
        sections=[
            ("crossing", "Clusters that cross splits (they leak)", _section(found, found.crossing)),
            ("mixed", "Clusters whose images carry different labels", _section(found, found.mixed)),
            ("largest", "The largest clusters", _section(found, largest)),
        ],
        limit=_CLUSTERS,
    )
    return table, write_text(out / "duplicates.html", html)

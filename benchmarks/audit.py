"""Near-duplicate audit quality and speed: copies with known sources, a real dataset, another source.

    python -m benchmarks.audit --weights ../shared/weights/tf_efficientnet_lite0.in1k.safetensors \
        [--slide ../shared/data/slides/small_HE.svs] [--real ../shared/data/bloodcells/train] \
        [--other ../shared/data/wbc_tecom]

Sets with known sources: 60 distinct ``test_simple`` cells, each copied 8-20 times (benchmarks/copies.py), and
with ``--slide`` the tissue sets of benchmarks/tissue_copies.py (augmented tiles, overlapping tiles, glass).
For each, the clusters' adjusted Rand index against the true sources, pair precision and recall, and the time;
on the cells also embedding similarity alone (``--min-inliers 0``), the control. ``--real`` audits a whole
folder and prints its time and clusters; ``--other`` then counts the images of another source (another lab:
no copies possible) that the audit matches to it.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from benchmarks.copies import make_copies, read_truth
from benchmarks.tissue_copies import make_tissue_sets
from sklearn.metrics import adjusted_rand_score

from histoclass.audit.copies import AuditSettings, copies_in_reference, find_copies
from histoclass.data.sources import read_source

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bloodcells"
#: test_simple holds two images twice under other names, and two more cells twice in overlapping crops of one
#: field (checked by eye): not distinct sources.
SAME_IMAGE_AGAIN = {"_4_8814.jpeg", "_6_7701.jpeg", "_24_8655.jpeg", "_37_3964.jpeg"}


def distinct_sources(count: int = 60) -> list[Path]:
    """``count`` distinct test_simple cells, spread over the classes."""
    files = sorted(
        p for p in (SHARED / "test_simple").rglob("*.jpeg") if p.name not in SAME_IMAGE_AGAIN
    )
    step = len(files) / count
    return [files[int(i * step)] for i in range(count)]


def pair_scores(truth: np.ndarray, clusters: np.ndarray) -> tuple[float, float]:
    """Precision and recall of 'same cluster' as a predictor of 'same source', over all pairs."""
    same_source = truth[:, None] == truth[None]
    same_cluster = clusters[:, None] == clusters[None]
    upper = np.triu(np.ones_like(same_source), 1)
    hits = (same_source & same_cluster & upper).sum()
    return hits / max((same_cluster & upper).sum(), 1), hits / max((same_source & upper).sum(), 1)


def score(name: str, folder: Path, settings: AuditSettings) -> None:
    """One table row: the audit of ``folder`` against its truth.csv."""
    records = read_source(str(folder)).splits["all"]
    truth_map = read_truth(folder)
    truth = np.array([truth_map[i] for i in records.ids])
    started = time.perf_counter()
    found = find_copies(records, settings)
    seconds = time.perf_counter() - started
    precision, recall = pair_scores(truth, found.clusters)
    ari = adjusted_rand_score(truth, found.clusters)
    print(
        f"| {name} | {len(records)} / {len(set(truth))} | {len(found.sizes)} | {ari:.3f} | {precision:.3f} | "
        f"{recall:.3f} | {seconds:.1f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="tf_efficientnet_lite0")
    parser.add_argument("--weights")
    parser.add_argument("--slide", help="a slide to cut the tissue sets from")
    parser.add_argument("--real", help="a class-folder dataset to audit whole")
    parser.add_argument(
        "--other", help="with --real: images of another source, none of them a copy"
    )
    args = parser.parse_args()
    os.environ.setdefault("HISTOCLASS_CACHE", tempfile.mkdtemp(prefix="histoclass-audit-"))
    settings = AuditSettings(args.model, args.weights)
    with tempfile.TemporaryDirectory() as folder:
        print(
            "| set | images / sources | clusters | ARI | pair precision | pair recall | seconds |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|")
        cells = make_copies(distinct_sources(), Path(folder) / "cells")
        score("blood-cell copies", cells, settings)
        score("blood-cell copies, embedding alone", cells, replace(settings, min_inliers=0))
        if args.slide:
            for name, tiles in make_tissue_sets(Path(args.slide), Path(folder) / "tissue").items():
                score(f"tissue: {name}", tiles, settings)
    if args.real:
        records = read_source(args.real).splits["all"]
        started = time.perf_counter()
        found = find_copies(records, settings)
        sizes = found.sizes
        print(
            f"\n{args.real}: {len(records)} images audited in {time.perf_counter() - started:.0f} s; "
            f"{len(sizes)} clusters, {(sizes == 1).sum()} singletons, largest {sizes[:5].tolist()}"
        )
        if args.other:
            other = read_source(args.other).splits["all"]
            matched = copies_in_reference(other, records, settings)
            shown = ", ".join(
                f"{other.ids[q]} -> {records.ids[r]}" for q, r in enumerate(matched) if r >= 0
            )
            print(f"{args.other}: {(matched >= 0).sum()} of {len(other)} matched as copies {shown}")


if __name__ == "__main__":
    main()

"""Near-duplicate audit quality and speed: synthetic copies with known sources, and a real dataset.

    python -m benchmarks.audit --weights ../shared/weights/tf_efficientnet_lite0.in1k.safetensors \
        [--real ../shared/data/bloodcells/train]

Copies: 60 distinct ``test_simple`` cells, each copied 8-20 times (benchmarks/copies.py). For each threshold,
with geometric verification (the default) and without (embedding similarity alone), prints the clusters' adjusted
Rand index against the true sources, pair precision and recall, and the time. ``--real`` audits a whole folder
and prints its time and clusters.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from benchmarks.copies import make_copies, read_truth
from sklearn.metrics import adjusted_rand_score

from histoclass.audit.copies import AuditSettings, find_copies
from histoclass.data.sources import read_source

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bloodcells"
#: test_simple holds two images twice under other names (checked by eye): not distinct sources.
SAME_IMAGE_AGAIN = {"_4_8814.jpeg", "_6_7701.jpeg"}


def distinct_sources(count: int = 60) -> list[Path]:
    """``count`` distinct test_simple cells, spread over the classes."""
    files = sorted(p for p in (SHARED / "test_simple").rglob("*.jpeg") if p.name not in SAME_IMAGE_AGAIN)
    step = len(files) / count
    return [files[int(i * step)] for i in range(count)]


def pair_scores(truth: np.ndarray, clusters: np.ndarray) -> tuple[float, float]:
    """Precision and recall of 'same cluster' as a predictor of 'same source', over all pairs."""
    same_source = truth[:, None] == truth[None]
    same_cluster = clusters[:, None] == clusters[None]
    upper = np.triu(np.ones_like(same_source), 1)
    hits = (same_source & same_cluster & upper).sum()
    return hits / max((same_cluster & upper).sum(), 1), hits / max((same_source & upper).sum(), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tf_efficientnet_lite0")
    parser.add_argument("--weights")
    parser.add_argument("--thresholds", default="0.1,0.2,0.3,0.4,0.5,0.6")
    parser.add_argument("--real", help="a class-folder dataset to audit whole")
    args = parser.parse_args()
    os.environ.setdefault("HISTOCLASS_CACHE", tempfile.mkdtemp(prefix="histoclass-audit-"))
    with tempfile.TemporaryDirectory() as folder:
        copies = make_copies(distinct_sources(), Path(folder) / "copies")
        records = read_source(str(copies)).splits["all"]
        truth_map = read_truth(copies)
        truth = np.array([truth_map[i] for i in records.ids])
        print(f"{len(records)} copies of {len(set(truth))} sources\n")
        print("| verification | threshold | clusters | ARI | pair precision | pair recall | seconds |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for min_inliers in (20, 0):
            for threshold in [float(t) for t in args.thresholds.split(",")]:
                settings = AuditSettings(args.model, args.weights, threshold=threshold, min_inliers=min_inliers)
                started = time.perf_counter()
                found = find_copies(records, settings)
                seconds = time.perf_counter() - started
                precision, recall = pair_scores(truth, found.clusters)
                ari = adjusted_rand_score(truth, found.clusters)
                how = "ORB + RANSAC" if min_inliers else "none (embedding only)"
                print(f"| {how} | {threshold:.2f} | {len(found.sizes)} | {ari:.3f} | {precision:.3f} | "
                      f"{recall:.3f} | {seconds:.1f} |")  # fmt: skip
    if args.real:
        records = read_source(args.real).splits["all"]
        started = time.perf_counter()
        found = find_copies(records, AuditSettings(args.model, args.weights))
        sizes = found.sizes
        print(f"\n{args.real}: {len(records)} images audited in {time.perf_counter() - started:.0f} s; "
              f"{len(sizes)} clusters, {(sizes == 1).sum()} singletons, largest {sizes[:5].tolist()}")  # fmt: skip


if __name__ == "__main__":
    main()

"""Near-duplicate audit on real images: copies are found, splits keep them together, leaks are reported."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from benchmarks.audit import pair_scores
from benchmarks.copies import read_truth
from benchmarks.tissue_copies import make_tissue_sets
from sklearn.metrics import adjusted_rand_score

from conftest import BLOOD_TEST, LITE0, SLIDE, quick_train, run_cli
from histoclass.audit.copies import AuditSettings, find_copies
from histoclass.audit.names import named_slides
from histoclass.audit.search import neighbour_pairs
from histoclass.data.sources import cache_root, read_source
from histoclass.embeddings.store import image_keys
from test_cli import assert_one_line_error

AUDIT = ["--model", "tf_efficientnet_lite0", "--weights", str(LITE0)]


def truth_of(folder: Path, ids: list[str]) -> np.ndarray:
    truth = read_truth(folder)
    return np.array([truth[i] for i in ids])


def test_clusters_recover_the_sources_of_augmented_copies(copies: Path) -> None:
    records = read_source(str(copies)).splits["all"]
    found = find_copies(records, AuditSettings("tf_efficientnet_lite0", str(LITE0)))
    truth = truth_of(copies, records.ids)
    precision, recall = pair_scores(truth, found.clusters)
    assert adjusted_rand_score(truth, found.clusters) >= 0.9
    assert precision >= 0.9 and recall >= 0.95, (precision, recall)
    joined = [c for c in np.flatnonzero(found.sizes > 1) if len(set(truth[found.members(c)])) > 1]
    assert len(joined) <= 3, joined  # a cluster joins two sources' images only rarely


@pytest.fixture(scope="module")
def tissue(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiles of the real H&E slide with known sources: augmented copies, overlapping tiles, glass."""
    return make_tissue_sets(SLIDE, tmp_path_factory.mktemp("tissue"))


@pytest.mark.parametrize("kind", ["augmented", "overlapping"])
def test_copies_of_tissue_tiles_are_found(tissue: dict[str, Path], kind: str) -> None:
    """Rotated, shifted, flipped and recoloured tiles (black corners left), and tiles sharing 25-75% of their
    area, recovered from the pixels alone without joining two different places of the slide."""
    records = read_source(str(tissue[kind])).splits["all"]
    found = find_copies(records, AuditSettings("tf_efficientnet_lite0", str(LITE0)))
    truth = truth_of(tissue[kind], records.ids)
    precision, recall = pair_scores(truth, found.clusters)
    assert adjusted_rand_score(truth, found.clusters) >= 0.9 and precision >= 0.99, (
        precision,
        recall,
    )


def test_an_audit_is_read_back_until_a_file_changes(tissue: dict[str, Path]) -> None:
    """Each trial of a study, or a second run, reuses the audit of the same files (identity: path,
    size, time)."""
    records = read_source(str(tissue["overlapping"])).splits["all"]
    settings = AuditSettings("tf_efficientnet_lite0", str(LITE0))
    first = find_copies(records, settings)
    audits = set((cache_root() / "audits").iterdir())
    again = find_copies(records, settings)
    assert set((cache_root() / "audits").iterdir()) == audits and np.array_equal(
        again.clusters, first.clusters
    )
    stat = records.paths[0].stat()
    os.utime(records.paths[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    verified = _verified_pairs()
    changed = find_copies(records, settings)
    assert (
        len({p for p in (cache_root() / "audits").iterdir() if "pairs" not in p.name} - audits) == 1
    )
    assert np.array_equal(changed.clusters, first.clusters)
    # only the changed file's pairs were verified again
    new, key = _verified_pairs() - verified, image_keys(records.subset([0]))[0][:20]
    assert new and all(key in pair for pair in new), len(new)


def _verified_pairs() -> set[str]:
    """The pairs whose verdicts audits keep."""
    (kept,) = (cache_root() / "audits").glob("pairs-*.npz")
    with np.load(kept) as saved:
        return set(saved["pairs"].tolist())


def test_glass_is_never_joined_to_other_glass(tissue: dict[str, Path]) -> None:
    """Copies of empty glass cannot be told from other glass: the audit must not chain them together."""
    records = read_source(str(tissue["textureless"])).splits["all"]
    found = find_copies(records, AuditSettings("tf_efficientnet_lite0", str(LITE0)))
    precision, _ = pair_scores(truth_of(tissue["textureless"], records.ids), found.clusters)
    assert precision >= 0.99 and found.sizes.max() <= 10


def test_slide_ids_in_names_are_read_and_cell_names_are_not(
    tissue: dict[str, Path], tmp_path: Path
) -> None:
    tiles = [
        f"EPI/TCGA-A1-{slide}-01Z_{x}_{y}.png"
        for slide in (17, 42)
        for x in (0, 512)
        for y in (0, 256)
    ]
    assert named_slides(tiles).slides == 2 and named_slides(tiles).example == "TCGA-A1-17-01Z"
    assert named_slides(
        [f"A/slide{k} [x={x},y=0,w=256,h=256].png" for k in (1, 2) for x in (0, 256, 512)]
    )
    # "_4_8814.jpeg": no slide
    assert named_slides(read_source(str(BLOOD_TEST)).splits["all"].ids) is None
    data = tmp_path / "named"
    chosen = [
        path
        for folder in ("pink", "purple")
        for path in sorted((tissue["augmented"] / folder).iterdir())[:12]
    ]
    for k, path in enumerate(chosen):
        (data / path.parent.name).mkdir(parents=True, exist_ok=True)
        (data / path.parent.name / f"slide{k % 3}_{k * 150}_0.png").symlink_to(path)
    result = run_cli(
        "check-data", str(data), "--duplicates", *AUDIT, "--out", str(tmp_path / "audit")
    )
    assert result.returncode == 0, result.stderr[-2000:]
    text = " ".join(result.stderr.split())
    assert "carry a slide id" in text and "3 slides" in text and "--group-by" in text


def test_embedding_similarity_alone_cannot_tell_copies_from_lookalikes(copies: Path) -> None:
    """The control for the verification step: without it, the same search chains almost everything
    together."""
    records = read_source(str(copies)).splits["all"]
    found = find_copies(records, AuditSettings("tf_efficientnet_lite0", str(LITE0), min_inliers=0))
    assert adjusted_rand_score(truth_of(copies, records.ids), found.clusters) < 0.5


def test_blockwise_search_equals_the_full_matrix(rng: np.random.Generator) -> None:
    vectors = rng.normal(size=(2500, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    found = neighbour_pairs(vectors, None, 3, 0.2)
    full = vectors @ vectors.T
    np.fill_diagonal(full, -np.inf)
    expected = set()
    for i, row in enumerate(full):
        for j in np.argsort(-row)[:3]:
            if row[j] >= 0.2:
                expected.add((min(i, j), max(i, j)))
    assert set(zip(found.left.tolist(), found.right.tolist(), strict=True)) == expected
    assert np.all(np.diff(found.similarity) <= 0)


@pytest.fixture(scope="module")
def leaky(copies: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/ and val/ folders with the copies dealt out at random: most sources on both sides, and
    one copy of each of three sources filed under another class (label errors)."""
    root = tmp_path_factory.mktemp("leaky") / "data"
    rng = np.random.default_rng(1)
    truth, mislabelled = read_truth(copies), set()
    for path in sorted(copies.rglob("*.jpeg")):
        split = "val" if rng.random() < 0.25 else "train"
        label, source = path.parent.name, truth[f"{path.parent.name}/{path.name}"]
        if label == "NEUTROPHIL" and len(mislabelled) < 3 and source not in mislabelled:
            label = "EOSINOPHIL"
            mislabelled.add(source)
        target = root / split / label / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(path)
    return root


def test_check_data_duplicates_reports_leaks_and_label_conflicts(
    leaky: Path, tmp_path: Path
) -> None:
    out = tmp_path / "audit"
    result = run_cli("check-data", str(leaky), "--duplicates", *AUDIT, "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    text = " ".join(result.stderr.split())
    crossing = int(text.split("clusters crossing splits: ")[1].split()[0])
    mixed = int(text.split("clusters with different labels: ")[1].split()[0])
    assert crossing >= 40 and mixed >= 1
    with open(out / "duplicates.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(list(leaky.rglob("*.jpeg"))) and {
        "id",
        "cluster",
        "split",
        "label",
    } <= set(rows[0])
    page = (out / "duplicates.html").read_text()
    assert (
        'id="crossing"' in page
        and 'id="mixed"' in page
        and page.count("data:image/jpeg;base64,") > 100
    )


def test_against_finds_the_sources_of_the_copies(copies: Path, tmp_path: Path) -> None:
    result = run_cli(
        "check-data",
        str(BLOOD_TEST),
        "--against",
        str(copies),
        *AUDIT,
        "--out",
        str(tmp_path / "a"),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    crossing = int(
        " ".join(result.stderr.split()).split("clusters crossing splits: ")[1].split()[0]
    )
    assert crossing >= 55  # 60 sources were copied; each original and its copies form one cluster


def test_audit_bad_inputs_are_one_line(copies: Path, tmp_path: Path) -> None:
    for threshold in ("0", "1.5", "-0.1"):
        assert_one_line_error(
            run_cli("check-data", str(copies), "--duplicates", "--threshold", threshold),
            "threshold",
        )
    missing = run_cli("check-data", str(copies), "--against", str(tmp_path / "nowhere"), *AUDIT)
    assert_one_line_error(missing, "nowhere")
    single = tmp_path / "single"
    for name in ("A", "B"):
        (single / name).mkdir(parents=True)
    shutil.copy(next(BLOOD_TEST.rglob("*.jpeg")), single / "A" / "x.jpeg")
    one = run_cli("check-data", str(single / "A"), "--duplicates", *AUDIT)
    assert_one_line_error(one)


def test_group_by_auto_keeps_every_source_on_one_side(copies: Path, tmp_path: Path) -> None:
    result = run_cli(*quick_train(copies, tmp_path, "auto", "--group-by", "auto"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "auto groups:" in result.stderr
    with open(tmp_path / "auto" / "split.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    truth = read_truth(copies)
    sides: dict[int, list[str]] = {}
    for row in rows:
        sides.setdefault(truth[row["id"]], []).append(row["split"])
        assert row["group"].startswith("copies-")
    # Copies the audit missed can land on the other side than the rest of their source: a few, not a leak.
    stray = sum(min(seen.count("train"), seen.count("val")) for seen in sides.values())
    assert stray <= 0.01 * len(rows), stray


def test_evaluate_finds_copies_in_the_training_data_and_gives_intervals(
    copies: Path, tmp_path: Path
) -> None:
    """A run trained on copies, evaluated on their originals: the overlap is found and warned about."""
    trained = run_cli(*quick_train(copies, tmp_path, "leaky"))
    assert trained.returncode == 0, trained.stderr[-2000:]
    result = run_cli("evaluate", str(tmp_path / "leaky"), "--data", str(BLOOD_TEST))
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((tmp_path / "leaky" / "eval" / "test_simple" / "metrics.json").read_text())
    overlap = metrics["overlap_with_training"]
    # 80% of the copies trained; their 60 sources are among the 71 images
    assert overlap["share"] > 0.6
    assert any("near-copy" in warning for warning in metrics["warnings"])
    assert "near-copy" in result.stderr and "metrics_without_overlap" in result.stderr
    assert metrics["metrics_without_overlap"]["n"] == metrics["n"] - overlap["n"]
    low, high = metrics["ci95"]["accuracy"]
    assert low <= metrics["accuracy"] <= high and high - low > 0.05
    report = (tmp_path / "leaky" / "eval" / "test_simple" / "report.html").read_text()
    assert 'id="warnings"' in report and "95% CI" in report

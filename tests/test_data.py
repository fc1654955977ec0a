"""Data sources, image reading, checks and splits on the real shared data."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import BLOOD, BLOOD_GROUPS, BREAST, CLASSES, blood_files, link_class_folders
from histoclass.config import DataConfig
from histoclass.data.checks import check_source, scan_records
from histoclass.data.images import open_rgb, resize_square
from histoclass.data.inputs import file_identities, list_images
from histoclass.data.sources import cache_root, read_source
from histoclass.data.splits import groups_from_pattern, split_train_val
from histoclass.errors import HistoclassError


def test_class_folders_detects_classes_and_counts(blood_subset: Path) -> None:
    source = read_source(str(blood_subset))
    assert source.classes == CLASSES
    assert list(source.splits) == ["all"]
    records = source.splits["all"]
    assert records.class_counts(4).tolist() == [150] * 4
    assert records.ids[0].startswith("EOSINOPHIL/")
    assert records.load(0, 48).shape == (48, 48, 3)


def test_presplit_folders_are_used_as_splits(tmp_path: Path) -> None:
    link_class_folders(tmp_path / "train", blood_files(10))
    link_class_folders(tmp_path / "validation", blood_files(4, offset=1))
    link_class_folders(tmp_path / "test", {"MONOCYTE": blood_files(3, offset=2)["MONOCYTE"]})
    source = read_source(str(tmp_path))
    assert set(source.splits) == {"train", "val", "test"}
    assert len(source.splits["val"]) == 16
    assert source.splits["test"].labels.tolist() == [CLASSES.index("MONOCYTE")] * 3


def test_csv_route_ids_without_extension(tmp_path: Path) -> None:
    images = tmp_path / "train"
    images.mkdir()
    rows = []
    for label, paths in blood_files(6).items():
        for path in paths:
            image_id = f"{label[:3]}{path.stem}"
            shutil.copy(path, images / f"{image_id}.jpeg")
            rows.append({"id": image_id, "label": label, "patient": path.stem.split("_")[1]})
    with open(tmp_path / "train_labels.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", "label", "patient"])
        writer.writeheader()
        writer.writerows([*rows, {"id": "no-such-image", "label": "MONOCYTE", "patient": "0"}])
    config = DataConfig(image_dir=str(images), group_column="patient")
    source = read_source(str(tmp_path / "train_labels.csv"), config)
    assert source.classes == CLASSES
    assert len(source.splits["all"]) == 24
    assert source.missing == [("no-such-image", f"no image for this id in '{images}'")]
    assert source.splits["all"].groups[0] == rows[0]["patient"]
    with pytest.raises(HistoclassError, match="no column 'diagnosis'.*--label-column"):
        read_source(
            str(tmp_path / "train_labels.csv"),
            DataConfig(image_dir=str(images), label_column="diagnosis"),
        )


def test_npz_route_official_splits_and_label_shapes(tmp_path: Path) -> None:
    source = read_source(str(BREAST))
    assert {k: len(v) for k, v in source.splits.items()} == {"train": 546, "val": 78, "test": 156}
    assert source.classes == ["malignant", "normal, benign"]
    assert source.splits["train"].load(0, 32).shape == (32, 32, 3)
    with np.load(BREAST) as data:
        arrays = {key: data[key] for key in data.files}
    arrays = {k: (v.reshape(-1, 1) if k.endswith("labels") else v) for k, v in arrays.items()}
    np.savez(tmp_path / "custom.npz", **arrays)
    reread = read_source(str(tmp_path / "custom.npz"))
    assert reread.classes == ["0", "1"]
    assert np.array_equal(reread.splits["test"].labels, source.splits["test"].labels)


def test_medmnist_name_reads_the_local_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "medmnist").mkdir()
    shutil.copy(BREAST, tmp_path / "medmnist" / "breastmnist.npz")
    monkeypatch.setenv("HISTOCLASS_CACHE", str(tmp_path))
    source = read_source("medmnist:breastmnist")
    assert len(source.splits["train"]) == 546
    with pytest.raises(HistoclassError, match="unknown MedMNIST dataset 'nosuchmnist'"):
        read_source("medmnist:nosuchmnist")


def test_16bit_grayscale_and_tiff_become_8bit_rgb(tmp_path: Path) -> None:
    rgb = open_rgb(next((BLOOD / "LYMPHOCYTE").iterdir()))
    gray8 = np.asarray(rgb.convert("L"))
    Image.fromarray(gray8.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    Image.fromarray(gray8).save(tmp_path / "g8.tif")
    rgb.save(tmp_path / "rgb.bmp")
    for name in ("g16.png", "g8.tif"):
        loaded = np.asarray(open_rgb(tmp_path / name))
        assert loaded.shape == (*gray8.shape, 3) and loaded.dtype == np.uint8
        assert np.abs(loaded[:, :, 0].astype(int) - gray8).max() <= 1
    assert resize_square(open_rgb(tmp_path / "rgb.bmp"), 40).shape == (40, 40, 3)


def test_bad_files_are_reported_and_left_untouched(blood_with_bad_files: Path) -> None:
    before = {p: p.stat().st_size for p in blood_with_bad_files.rglob("_bad_*")}
    report = check_source(read_source(str(blood_with_bad_files)))
    reasons = {bad.id.split("/")[-1]: bad.reason for bad in report.bad}
    assert set(reasons) == {"_bad_truncated.jpeg", "_bad_empty.jpeg", "_bad_text.jpeg"}
    assert "empty" in reasons["_bad_empty.jpeg"]
    assert "unreadable" in reasons["_bad_truncated.jpeg"]
    assert report.counts["all"].tolist() == [150] * 4
    assert {p: p.stat().st_size for p in blood_with_bad_files.rglob("_bad_*")} == before


def test_group_split_keeps_every_group_on_one_side(blood_subset: Path) -> None:
    records = read_source(str(blood_subset)).splits["all"]
    groups = groups_from_pattern(records.ids, BLOOD_GROUPS)
    assert len(set(groups)) > 20
    train, val = split_train_val(records, 0.2, seed=1, groups=groups)
    assert not {groups[i] for i in train} & {groups[i] for i in val}
    assert 0.1 < len(val) / len(records) < 0.3
    assert set(records.labels[val]) == {0, 1, 2, 3}
    with pytest.raises(HistoclassError, match="does not match"):
        groups_from_pattern(records.ids, r"patient-(\d+)")


def test_stratified_split_is_seeded_and_balanced(blood_subset: Path) -> None:
    records = read_source(str(blood_subset)).splits["all"]
    train, val = split_train_val(records, 0.25, seed=3)
    again = split_train_val(records, 0.25, seed=3)
    assert np.array_equal(val, again[1]) and len(set(train) & set(val)) == 0
    assert set(np.bincount(records.labels[val]).tolist()) <= {37, 38}  # 25% of 150 per class


def test_missing_and_empty_inputs_raise_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(HistoclassError, match="no such file or folder"):
        read_source(str(tmp_path / "absent"))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    shutil.copy(next((BLOOD / "MONOCYTE").iterdir()), tmp_path / "a" / "x.jpeg")
    with pytest.raises(HistoclassError, match="class folder '.*/b' has no images"):
        read_source(str(tmp_path))


@pytest.mark.parametrize(("dtype", "scale"), [(np.int64, 1), (np.int32, 1), (np.uint16, 16)])
def test_wide_integer_npz_images_are_read_at_their_real_range(
    tmp_path: Path, dtype, scale: int
) -> None:
    """0-255 stored as int64/int32, and 12-bit data in uint16, are not divided by the type's maximum
    (black)."""
    with np.load(BREAST) as data:
        images, labels = data["train_images"][:40], data["train_labels"][:40]
    np.savez(tmp_path / "wide.npz", images=images.astype(dtype) * scale, labels=labels)
    read = read_source(str(tmp_path / "wide.npz")).splits["all"].array
    assert read.dtype == np.uint8
    assert np.abs(read.astype(int) - images.astype(int)).max() <= 1


def test_exif_orientation_is_applied_on_decoding(tmp_path: Path) -> None:
    """A camera's JPEG stored unturned with orientation 6 is decoded as it is meant to be seen
    (turned 90°)."""
    image = Image.open(sorted((BLOOD / "MONOCYTE").iterdir())[0]).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    image.save(tmp_path / "turned.jpg", exif=exif, quality=95)
    decoded = open_rgb(tmp_path / "turned.jpg")
    assert decoded.size == (image.height, image.width)
    expected = np.asarray(image.transpose(Image.Transpose.ROTATE_270), dtype=float)
    assert np.abs(np.asarray(decoded, dtype=float) - expected).mean() < 4


def test_webp_and_gif_are_found_in_folders_and_read(tmp_path: Path) -> None:
    image = Image.open(sorted((BLOOD / "LYMPHOCYTE").iterdir())[0]).convert("RGB")
    image.save(tmp_path / "cell.webp")
    image.save(tmp_path / "cell.gif")
    found = sorted(p.name for p in list_images(tmp_path))
    assert found == ["cell.gif", "cell.webp"]
    for name in found:
        assert resize_square(open_rgb(tmp_path / name), 32).shape == (32, 32, 3)


@pytest.mark.parametrize("separator", [";", "\t"])
def test_a_csv_with_another_separator_is_read(tmp_path: Path, separator: str) -> None:
    """A European spreadsheet's ``;`` (or a tab) separates the columns: read as such, not as one column."""
    images = link_class_folders(tmp_path / "images", blood_files(3))
    lines = ["id;label".replace(";", separator)]
    lines += [
        f"{label}/{p.name}{separator}{label}"
        for label, paths in blood_files(3).items()
        for p in paths
    ]
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    source = read_source(str(tmp_path / "labels.csv"), DataConfig(image_dir=str(images)))
    assert source.classes == CLASSES and len(source.splits["all"]) == 12


def test_an_empty_file_is_named_alike_by_check_data_and_prediction(tmp_path: Path) -> None:
    (tmp_path / "empty.jpeg").write_bytes(b"")
    with pytest.raises(OSError, match=r"empty file \(0 bytes\)"):
        open_rgb(tmp_path / "empty.jpeg")


def test_a_scan_is_read_back_until_a_file_changes(tmp_path: Path) -> None:
    """A second run over the same files reads the first one's scan; a file replaced since (here by
    a truncated copy: another size and time) is decoded again, and reported."""
    data = link_class_folders(tmp_path / "data", blood_files(5))
    first = scan_records(read_source(str(data)).splits["all"])
    kept = set((cache_root() / "scans").iterdir())
    assert kept and all(info.error is None for info in first)
    assert scan_records(read_source(str(data)).splits["all"]) == first
    assert set((cache_root() / "scans").iterdir()) == kept
    victim = read_source(str(data)).splits["all"].paths[0]
    real = victim.read_bytes()
    victim.unlink()
    victim.write_bytes(real[: len(real) // 3])
    again = scan_records(read_source(str(data)).splits["all"])
    assert again[0].error and again[1:] == first[1:]


def test_file_identities_resolve_links_as_the_full_path_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Folders resolved once give what resolving each file's whole path gives: linked files name their
    targets, files in a linked folder the real folder, relative paths with ``..`` the right file."""
    data = link_class_folders(tmp_path / "links", blood_files(2))
    (tmp_path / "real").mkdir()
    shutil.copy(next(data.rglob("*.jpeg")), tmp_path / "real" / "copy.jpeg")
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    monkeypatch.chdir(tmp_path)
    paths = [
        *sorted(data.rglob("*.jpeg")),
        Path("alias/copy.jpeg"),
        Path("links/../real/copy.jpeg"),
    ]
    identities = file_identities(paths)
    assert identities == [
        f"{os.path.realpath(p)}|{p.stat().st_size}|{p.stat().st_mtime_ns}" for p in paths
    ]
    assert str(BLOOD.resolve()) in identities[0] and identities[-2] == identities[-1]
    assert identities[-1].startswith(str((tmp_path / "real").resolve()))

"""Whole slides: real images on generated pyramidal TIFFs, read through OpenSlide and tiffslide, mapped."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from benchmarks.slides import TILE, cell_layout, write_slide
from PIL import Image

from conftest import BLOOD_TEST, SLIDE, run_cli
from histoclass.config import SlideConfig
from histoclass.slides import job, readers
from histoclass.slides.readers import open_slide

COLUMNS, ROWS = 8, 6
MPP = 0.5


@pytest.fixture(scope="module")
def layout():
    images = sorted(BLOOD_TEST.rglob("*.jpeg"))[:24]
    assert images
    return cell_layout(images, COLUMNS, ROWS, TILE)


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory, layout) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("slides")
    blank = cell_layout([], 1, 1, TILE)
    return {
        "svs": write_slide(
            folder / "cells.svs", layout, COLUMNS * TILE, ROWS * TILE, mpp=MPP, aperio=True
        ),
        "tiff": write_slide(
            folder / "cells.tif", layout, COLUMNS * TILE, ROWS * TILE, mpp=MPP, aperio=False
        ),
        "blank": write_slide(folder / "glass.svs", blank, 1024, 1024, mpp=MPP, aperio=True),
    }


def read_tiles(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def map_args(run: Path, slides: list[Path], out: Path) -> list[str]:
    """``histoclass slide`` over ``slides`` at the tests' resolution, tile size and batch."""
    flags = ["--mpp", str(MPP), "--tile-size", str(TILE), "--batch-size", "16"]
    return ["slide", str(run), *(str(slide) for slide in slides), "--out", str(out), *flags]


@pytest.fixture(scope="module")
def mapped(
    trained_run: Path, slides: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    out = tmp_path_factory.mktemp("mapped")
    result = run_cli(*map_args(trained_run, [slides["svs"]], out))
    assert result.returncode == 0, result.stderr
    return out


def test_both_readers_see_the_same_pyramid_and_pixels(slides: dict[str, Path], monkeypatch) -> None:
    for name in ("svs", "tiff"):
        via_openslide = open_slide(slides[name])
        # as where openslide is not installed
        monkeypatch.setattr(readers, "_openslide", lambda path: None)
        via_tiffslide = open_slide(slides[name])
        monkeypatch.undo()
        assert (via_openslide.reader, via_tiffslide.reader) == ("openslide", "tiffslide")
        assert via_openslide.level_dimensions == via_tiffslide.level_dimensions
        assert (
            via_openslide.level_downsamples == via_tiffslide.level_downsamples == [1.0, 4.0, 16.0]
        )
        assert via_openslide.mpp == via_tiffslide.mpp == MPP
        for level in (0, 1):
            a = via_openslide.read_through_reader(512, 256, level, 100, 80)
            b = via_tiffslide.read_through_reader(512, 256, level, 100, 80)
            assert a.shape == (80, 100, 3) and np.array_equal(a, b)


def test_tiles_decoded_straight_from_the_tiff_equal_the_readers(
    slides: dict[str, Path], monkeypatch
) -> None:
    rng = np.random.default_rng(0)
    for name in ("svs", "tiff"):
        for reader in ("openslide", "tiffslide"):
            if reader == "tiffslide":
                monkeypatch.setattr(readers, "_openslide", lambda path: None)
            slide = open_slide(slides[name])
            monkeypatch.undo()
            assert (
                slide.reader == reader
                and slide.chunks is not None
                and sorted(slide.chunks.levels) == [0, 1, 2]
            )
            for level, downsample in enumerate(slide.level_downsamples):
                width, height = slide.level_dimensions[level]
                for _ in range(25):  # inside, across tile edges, and past the slide's edges
                    x, y = (
                        int(rng.integers(-40, side + 40) * downsample) for side in (width, height)
                    )
                    w, h = (int(v) for v in rng.integers(1, 300, 2))
                    assert np.array_equal(
                        slide.read(x, y, level, w, h), slide.read_through_reader(x, y, level, w, h)
                    )
            slide.close()


def test_the_tissue_closing_is_scipys_binary_closing(slides: dict[str, Path]) -> None:
    from scipy import ndimage

    from histoclass.slides.tissue import _closed, _saturation

    thumbnail = open_slide(slides["svs"]).thumbnail(700)
    for mask in (_saturation(thumbnail) > 20, thumbnail.mean(axis=2) < 200):
        for side in (3, 7, 21):
            expected = ndimage.binary_closing(mask, structure=np.ones((side, side)), border_value=0)
            assert np.array_equal(_closed(mask, side), expected)


def test_background_is_left_out_and_tiles_land_on_the_right_cells(mapped: Path, layout) -> None:
    tiles = read_tiles(mapped / "cells" / "tiles.csv")
    cells = {(int(t["x"]) // TILE, int(t["y"]) // TILE) for t in tiles}
    tissue = {(c, r) for r in range(ROWS) for c in range(COLUMNS) if layout.tissue[r, c]}
    assert cells <= tissue  # no glass tile classified
    assert len(cells) >= 0.8 * len(tissue), (len(cells), len(tissue))
    assert all(int(t["x"]) % TILE == 0 and int(t["width"]) == TILE for t in tiles)


def test_tile_predictions_equal_predict_on_the_same_regions(
    mapped: Path, trained_run: Path, slides, tmp_path
) -> None:
    tiles = read_tiles(mapped / "cells" / "tiles.csv")[:6]
    slide = open_slide(slides["svs"])
    folder = tmp_path / "regions"
    folder.mkdir()
    for t in tiles:
        region = slide.read(int(t["x"]), int(t["y"]), 0, TILE, TILE)
        Image.fromarray(region).save(folder / f"{t['x']}_{t['y']}.png")
    out = tmp_path / "predictions.csv"
    assert (
        run_cli("predict", str(trained_run), str(folder), "--out", str(out), "--no-tta").returncode
        == 0
    )
    predicted = {Path(row["id"]).stem: row for row in read_tiles(out)}
    for t in tiles:
        row = predicted[f"{t['x']}_{t['y']}"]
        assert row["label"] == t["label"]
        for key in (k for k in t if k.startswith("prob_")):
            assert abs(float(row[key]) - float(t[key])) < 1e-4


def test_outputs_geojson_and_areas(mapped: Path) -> None:
    folder = mapped / "cells"
    summary = json.loads((folder / "summary.json").read_text())
    labels = [k for k in summary["classes"]]
    for name in (
        "thumbnail.png",
        "heatmap.png",
        "report.html",
        *(f"heatmap_{label}.png" for label in labels),
    ):
        assert (folder / name).stat().st_size > 0, name
    assert (mapped / "index.html").exists() and "cells" in (mapped / "index.csv").read_text()
    assert summary["level"] == 0 and summary["slide_mpp"] == MPP and summary["tiles"] > 0
    areas = [row["tissue_area_mm2"] for row in summary["classes"].values()]
    assert abs(sum(areas) - summary["tissue_area_mm2"]) < 1e-9
    assert sum(row["tiles"] for row in summary["classes"].values()) == summary["tiles"]
    collection = json.loads((folder / "tiles.geojson").read_text())
    assert (
        collection["type"] == "FeatureCollection"
        and len(collection["features"]) == summary["tiles"]
    )
    tiles = read_tiles(folder / "tiles.csv")
    for feature, tile in zip(collection["features"], tiles, strict=True):
        ring = feature["geometry"]["coordinates"][0]
        assert feature["type"] == "Feature" and feature["geometry"]["type"] == "Polygon"
        assert (
            ring[0] == ring[-1] and len(ring) == 5 and ring[0] == [int(tile["x"]), int(tile["y"])]
        )
        classification = feature["properties"]["classification"]
        assert classification["name"] == tile["label"] and len(classification["color"]) == 3
        assert set(feature["properties"]["measurements"]) == {f"prob_{label}" for label in labels}


def test_coarser_resolution_reads_a_coarser_level(
    trained_run: Path, slides, tmp_path: Path
) -> None:
    # 64-pixel tiles at 8x the slide's microns per pixel: 512 level-0 pixels, read at level 1 (4x)
    # as 128 pixels, the coarsest level that still has the model's input size (96)
    result = run_cli(
        "slide",
        str(trained_run),
        str(slides["tiff"]),
        "--out",
        str(tmp_path),
        "--mpp",
        str(8 * MPP),
        "--tile-size",
        str(TILE // 4),
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "cells" / "summary.json").read_text())
    assert (
        summary["level"] == 1
        and summary["tile_size_level0"] == 2 * TILE
        and summary["tile_mpp"] == 8 * MPP
    )
    assert summary["geometry"]["read_size"] == TILE // 2


def test_a_killed_run_resumes_from_its_tiles(
    mapped: Path, trained_run: Path, slides, tmp_path: Path
) -> None:
    done = mapped / "cells"
    summary = json.loads((done / "summary.json").read_text())
    lines = (done / "tiles.csv").read_text().splitlines()
    out = tmp_path / "cells"
    out.mkdir()
    half = len(lines) // 2
    # cut mid-line
    (out / "tiles.partial.csv").write_text("\n".join(lines[:half]) + "\n" + lines[half][:20])
    (out / "geometry.json").write_text(json.dumps(summary["geometry"]))
    result = run_cli(*map_args(trained_run, [slides["svs"]], tmp_path))
    assert result.returncode == 0, result.stderr
    assert f"{half - 1} tiles already mapped" in result.stderr
    assert (out / "tiles.csv").read_text().splitlines() == lines
    assert not (out / "tiles.partial.csv").exists()


def test_a_slide_without_tissue_says_so(trained_run: Path, slides, tmp_path: Path) -> None:
    result = run_cli(
        "slide", str(trained_run), str(slides["blank"]), "--out", str(tmp_path), "--level", "0"
    )
    assert result.returncode == 0, result.stderr
    assert "no tissue" in result.stderr
    assert json.loads((tmp_path / "glass" / "summary.json").read_text())["tiles"] == 0


def test_bad_slides_are_one_line(trained_run: Path, slides, tmp_path: Path) -> None:
    from test_cli import assert_one_line_error

    fake = tmp_path / "fake.svs"
    fake.write_text("not a slide")
    assert_one_line_error(
        run_cli("slide", str(trained_run), str(fake)), "fake.svs", "not a readable slide"
    )
    other = tmp_path / "notes.docx"
    other.write_text("x")
    assert_one_line_error(run_cli("slide", str(trained_run), str(other)), "not a slide format")
    flat = tmp_path / "flat.png"
    Image.fromarray(np.full((300, 300, 3), 200, np.uint8)).save(flat)
    assert_one_line_error(
        run_cli("slide", str(trained_run), str(flat), "--mpp", "0.5"), "no resolution", "--level"
    )


def test_the_python_api_maps_through_tiffslide(
    trained_run: Path, slides, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(readers, "_openslide", lambda path: None)
    config = SlideConfig(
        model=str(trained_run),
        slides=[str(slides["svs"])],
        out=str(tmp_path),
        level=0,
        tile_size=TILE,
        batch_size=16,
        engine="torch",
    )
    job.map_slides(config)
    summary = json.loads((tmp_path / "cells" / "summary.json").read_text())
    assert summary["reader"] == "tiffslide" and summary["tiles"] > 0


def test_slides_are_shared_between_torchrun_processes(
    mapped: Path, trained_run: Path, slides, tmp_path: Path
) -> None:
    second = tmp_path / "in" / "second.tif"
    second.parent.mkdir()
    second.symlink_to(slides["tiff"])
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        "29533",
        "-m",
        "histoclass",
        *map_args(trained_run, [slides["svs"], second], out),
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, result.stderr[-2000:]
    # rank 0 writes the index, after both ranks are done
    assert result.stderr.count("slide(s) mapped") == 1
    assert [row["slide"] for row in read_tiles(out / "index.csv")] == ["cells", "second"]
    assert (out / "cells" / "tiles.csv").read_text() == (mapped / "cells" / "tiles.csv").read_text()
    assert len(read_tiles(out / "second" / "tiles.csv")) == len(
        read_tiles(mapped / "cells" / "tiles.csv")
    )


def test_two_slides_with_one_name_are_refused(trained_run: Path, slides, tmp_path: Path) -> None:
    from test_cli import assert_one_line_error

    result = run_cli(
        "slide", str(trained_run), str(slides["svs"]), str(slides["tiff"]), "--out", str(tmp_path)
    )
    assert_one_line_error(result, "cells.svs", "cells.tif")


def test_an_aperio_slide_under_a_tif_name_keeps_its_resolution(tmp_path: Path) -> None:
    renamed = tmp_path / "small_HE.tif"
    shutil.copy(SLIDE, renamed)
    slide = open_slide(renamed)
    try:
        assert slide.mpp == pytest.approx(0.499, abs=1e-3)
    finally:
        slide.close()

"""The slide job: tile each slide at the model's resolution, classify the tissue tiles, write the map.

Tiles are read and decoded on threads a few batches ahead of the model (the same loader as ``predict``), and
every finished batch is appended to ``tiles.partial.csv``: memory stays flat in slide size, and a killed run
resumes where it stopped. Under ``torchrun``/``srun`` each process maps its share of the slides.
"""

from __future__ import annotations

import base64
import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from jinja2 import Environment, PackageLoader, select_autoescape
from PIL import Image

from histoclass.atomic import write_bytes, write_csv, write_json, write_pieces, write_text
from histoclass.config import SlideConfig
from histoclass.console import console
from histoclass.data.batches import iter_batches
from histoclass.data.images import resize_square
from histoclass.deploy import open_predictor
from histoclass.errors import HistoclassError
from histoclass.inference.predictor import Predictor
from histoclass.machine import launch
from histoclass.runs import SlideDir, SlideIndex
from histoclass.slides.grid import TileGrid, plan_grid, require_resolution
from histoclass.slides.maps import (
    class_colours,
    class_heatmap,
    geojson,
    label_heatmap,
    png_bytes,
    summarise,
)
from histoclass.slides.readers import Slide, find_slides, open_slide
from histoclass.slides.tissue import tissue_fractions, tissue_mask

__all__ = ["map_slide", "map_slides"]

#: The mask is computed where a tile spans at least this many thumbnail pixels (up to the cap).
_MASK_PIXELS_PER_TILE, _MASK_CAP = 8, 8192


@dataclass
class SlideTiles:
    """The tiles of one slide as records the batch loader decodes: region read, then resized like
    any image."""

    slide: Slide
    grid: TileGrid
    boxes: np.ndarray

    def __len__(self) -> int:
        return len(self.boxes)

    def load(self, i: int, size: int) -> np.ndarray:
        x, y = (int(v) for v in self.boxes[i, :2])
        region = self.slide.read(x, y, self.grid.level, self.grid.read_size, self.grid.read_size)
        return resize_square(Image.fromarray(region), size)


#: What a tile's row holds after its class probabilities when the slide is mapped with ``--shift``.
SHIFT_COLUMNS = ["shift_score", "unlike_training"]


def _columns(labels: list[str], shift: bool = False) -> list[str]:
    probabilities = [f"prob_{label}" for label in labels]
    return [
        "x",
        "y",
        "width",
        "height",
        "tissue",
        "label",
        "confidence",
        *probabilities,
        *SHIFT_COLUMNS * shift,
    ]


def _scores_shift(predictor: Predictor, config: SlideConfig) -> bool:
    """``--shift`` on a run that has a reference (one line when it has none)."""
    if config.shift and predictor.shift is None:
        raise HistoclassError(
            f"--shift: '{predictor.origin}' has no shift reference (train it again to get one)"
        )
    return config.shift


def _read_rows(path: Path, columns: list[str]) -> dict[tuple[int, int], list[str]]:
    """Finished tiles of a partial CSV by (x, y); a line cut short by a kill is dropped."""
    if not path.exists():
        return {}
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        if next(reader, None) != columns:
            return {}
        return {
            (int(row[0]), int(row[1])): row
            for row in reader
            if len(row) == len(columns) and row[-1]
        }


def _resume(out: SlideDir, geometry: dict, columns: list[str]) -> dict[tuple[int, int], list[str]]:
    """What an interrupted run of the same tiling already holds; anything else starts afresh."""
    if (
        out.geometry.exists()
        and out.partial_tiles.exists()
        and json.loads(out.geometry.read_text()) == geometry
    ):
        done = _read_rows(out.partial_tiles, columns)
        write_csv(out.partial_tiles, columns, done.values())  # without the line a kill cut short
        console.print(f"resuming '{out.root.name}': {len(done)} tiles already mapped")
        return done
    out.root.mkdir(parents=True, exist_ok=True)
    write_json(out.geometry, geometry)
    write_csv(out.partial_tiles, columns, [])
    return {}


def _stream(
    predictor: Predictor, tiles: SlideTiles, tissue: np.ndarray, out: SlideDir, config: SlideConfig
) -> tuple[list[str], float]:
    """Predict every tile, appending each batch to the partial CSV; returns the unreadable tiles' reasons and
    the tiles per second (reading, decoding and the model together)."""
    labels, errors = predictor.labels, []
    started, finished = time.perf_counter(), 0
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
    ]
    with (
        out.partial_tiles.open("a", newline="") as handle,
        Progress(*columns, TimeRemainingColumn(), console=console, transient=True) as progress,
    ):
        task = progress.add_task(tiles.slide.name, total=len(tiles))
        writer = csv.writer(handle)
        for batch in iter_batches(
            tiles, predictor.info.image_size, config.batch_size, config.threads
        ):
            if batch.indices:
                probabilities = predictor.predict_pixels(batch.pixels, config.tta)
                shift = (
                    _shift_cells(predictor, batch.pixels)
                    if config.shift
                    else [[]] * len(batch.indices)
                )
                for i, probs, extra in zip(batch.indices, probabilities, shift, strict=True):
                    x, y, w, h = (int(v) for v in tiles.boxes[i])
                    k = int(np.argmax(probs))
                    rates = [f"{p:.6f}" for p in probs]
                    writer.writerow(
                        [
                            x,
                            y,
                            w,
                            h,
                            f"{tissue[i]:.4f}",
                            labels[k],
                            f"{probs[k]:.6f}",
                            *rates,
                            *extra,
                        ]
                    )
                handle.flush()
            errors += [
                f"tile at {tiles.boxes[i, 0]},{tiles.boxes[i, 1]}: {why}"
                for i, why in batch.errors.items()
            ]
            finished += len(batch.indices) + len(batch.errors)
            speed = finished / max(time.perf_counter() - started, 1e-9)
            progress.update(
                task,
                advance=len(batch.indices) + len(batch.errors),
                description=f"{tiles.slide.name} {speed:.0f} tiles/s",
            )
    return errors, finished / max(time.perf_counter() - started, 1e-9)


def _shift_cells(predictor: Predictor, pixels: np.ndarray) -> list[list[str]]:
    """Each tile's shift score and whether it lies above the run's threshold, as CSV cells."""
    scores = predictor.shift_scores(pixels)
    unlike = predictor.shift.reference.unlike(scores)
    return [[f"{score:.4f}", int(flag)] for score, flag in zip(scores, unlike, strict=True)]


def _mask_thumbnail(slide: Slide, grid: TileGrid, longest: int) -> np.ndarray:
    wanted = _MASK_PIXELS_PER_TILE * max(slide.dimensions) / max(grid.size0, 1)
    return slide.thumbnail(int(min(_MASK_CAP, max(longest, wanted))))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _environment() -> Environment:
    return Environment(loader=PackageLoader("histoclass.slides"), autoescape=select_autoescape())


def _write_outputs(
    out: SlideDir,
    slide: Slide,
    grid: TileGrid,
    rows: list[list[str]],
    labels: list[str],
    facts: dict,
    longest: int,
) -> dict:
    """tiles.csv, summary.json, thumbnail, heatmaps, GeoJSON and report.html, each written atomically."""
    boxes = np.array([[int(v) for v in row[:4]] for row in rows], np.int64).reshape(-1, 4)
    tissue = np.array([float(row[4]) for row in rows])
    probabilities = np.array(
        [[float(v) for v in row[7 : 7 + len(labels)]] for row in rows]
    ).reshape(-1, len(labels))
    thumbnail = slide.thumbnail(longest)
    scale = slide.dimensions[0] / thumbnail.shape[1]
    predicted = probabilities.argmax(axis=1) if len(rows) else np.zeros(0, int)
    write_csv(out.tiles, _columns(labels, facts["geometry"].get("shift", False)), rows)
    summary = {**facts, **summarise(probabilities, tissue, labels, grid.step0, slide.mpp)}
    write_json(out.summary, summary)
    thumb_png = png_bytes(thumbnail)
    heatmap_png = png_bytes(label_heatmap(thumbnail, boxes, predicted, labels, scale))
    write_bytes(out.thumbnail, thumb_png)
    write_bytes(out.heatmap, heatmap_png)
    for k, label in enumerate(labels):
        write_bytes(
            out.class_heatmap(label),
            png_bytes(class_heatmap(thumbnail, boxes, probabilities[:, k], label, scale)),
        )
    write_pieces(out.geojson, geojson(boxes, probabilities, labels))
    shown = [(key, value) for key, value in facts.items() if key != "geometry"]
    html = (
        _environment()
        .get_template("slide.html.j2")
        .render(
            title=f"{slide.name}: tissue map",
            subtitle=f"{len(rows)} tissue tiles · model {facts['model']}",
            thumbnail=_b64(thumb_png),
            heatmap=_b64(heatmap_png),
            summary=summary,
            colours=class_colours(labels),
            facts=shown,
        )
    )
    write_text(out.report, html)
    return summary


def map_slide(predictor: Predictor, path: Path, index: SlideIndex, config: SlideConfig) -> dict:
    """Map one slide into ``index.slide(name)``; returns its summary (an unchanged finished map is kept)."""
    slide = open_slide(path)
    try:
        out = index.slide(slide.name)
        grid = plan_grid(
            slide, predictor.info, config.mpp, config.level, config.tile_size, config.overlap
        )
        geometry = {
            **grid.describe(),
            "slide": str(path.resolve()),
            "model": str(predictor.origin),
            "tta": config.tta,
            "labels": predictor.labels,
            "min_tissue": config.min_tissue,
            "tissue_filter": config.tissue_filter,
        }
        if _scores_shift(predictor, config):
            geometry["shift"] = True  # earlier maps (without the columns) are not resumed into
        if out.summary.exists() and not out.partial_tiles.exists():
            summary = json.loads(out.summary.read_text())
            if summary.get("geometry") == geometry:
                console.print(f"'{slide.name}' is already mapped with this model and tiling: kept")
                return summary
        boxes = grid.boxes()
        mask_thumb = _mask_thumbnail(slide, grid, config.thumbnail)
        tissue = tissue_fractions(
            tissue_mask(mask_thumb), boxes, slide.dimensions[0] / mask_thumb.shape[1]
        )
        keep = tissue >= config.min_tissue if config.tissue_filter else np.ones(len(boxes), bool)
        boxes, tissue = boxes[keep], tissue[keep]
        columns = _columns(predictor.labels, config.shift)
        done = _resume(out, geometry, columns)
        todo = (
            np.array([(int(x), int(y)) not in done for x, y in boxes[:, :2]], bool)
            if len(boxes)
            else keep[:0]
        )
        errors, speed = _stream(
            predictor, SlideTiles(slide, grid, boxes[todo]), tissue[todo], out, config
        )
        for error in errors:
            console.print(f"[yellow]{slide.name}: {error}[/]")
        finished = _read_rows(out.partial_tiles, columns)
        rows = [finished[(int(x), int(y))] for x, y in boxes[:, :2] if (int(x), int(y)) in finished]
        facts = {
            "slide": str(path),
            "reader": slide.reader,
            "dimensions": list(slide.dimensions),
            "slide_mpp": slide.mpp,
            "level": grid.level,
            "tile_mpp": grid.mpp,
            "tile_size_level0": grid.size0,
            "step_level0": grid.step0,
            "model": str(predictor.origin),
            "tta": config.tta,
            "min_tissue": config.min_tissue,
            "unreadable_tiles": len(errors),
            "tiles_per_second": round(speed, 1),
            "geometry": geometry,
        }
        summary = _write_outputs(out, slide, grid, rows, predictor.labels, facts, config.thumbnail)
        out.partial_tiles.unlink()
        out.geometry.unlink()
        if not rows:
            console.print(
                f"[yellow]'{slide.name}': no tissue found (no tile reached --min-tissue "
                f"{config.min_tissue})[/]"
            )
        return summary
    finally:
        slide.close()


def _wait_for_all(world: int) -> None:
    """Every process's slides are done before rank 0 writes the index (a torch.distributed barrier)."""
    if world <= 1:
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    dist.barrier()


def _write_index(index: SlideIndex, names: list[str], labels: list[str]) -> None:
    table, rows = [], []
    for name in names:
        out = index.slide(name)
        if not out.summary.exists():
            continue
        summary = json.loads(out.summary.read_text())
        shares = [100 * summary["classes"][label]["share"] for label in labels]
        area = summary["tissue_area_mm2"]
        rows.append(
            [
                name,
                summary["tiles"],
                "" if area is None else f"{area:.3f}",
                *(f"{s:.1f}" for s in shares),
            ]
        )
        table.append(
            {
                "name": name,
                "link": f"{out.root.name}/report.html",
                "tiles": summary["tiles"],
                "area": "—" if area is None else f"{area:.3f}",
                "shares": [f"{s:.1f}" for s in shares],
            }
        )
    write_csv(
        index.index_csv,
        ["slide", "tiles", "tissue_mm2", *(f"share_{label}" for label in labels)],
        rows,
    )
    html = (
        _environment()
        .get_template("slide.html.j2")
        .render(title="Slides", subtitle=f"{len(rows)} slides mapped", slides=table, labels=labels)
    )
    write_text(index.index_html, html)


def _check_names(paths: list[Path], index: SlideIndex) -> None:
    """Each slide's outputs go to ``--out/<name>``: two slides with one name would write over each other."""
    seen: dict[Path, Path] = {}
    for path in paths:
        folder = index.slide(path.stem).root
        if folder in seen:
            raise HistoclassError(
                f"'{seen[folder]}' and '{path}' would both write to '{folder}'; rename one, or map "
                "them separately"
            )
        seen[folder] = path


def map_slides(config: SlideConfig) -> Path:
    """Map every slide of ``config.slides`` with ``config.model`` into ``config.out``."""
    paths = find_slides(config.slides)
    # every slide is checked before the model loads: a bad one stops nothing half-way
    for path in paths:
        slide = open_slide(path, fast_reads=False)
        try:
            require_resolution(slide, config.mpp if config.level is None else None)
        finally:
            slide.close()
    index = SlideIndex(Path(config.out))
    _check_names(paths, index)
    predictor = open_predictor(config.model, config.engine, config.compile)
    if predictor.info.framing != "field":
        raise HistoclassError(
            f"'{config.model}' sees a square around one cell of each image (--framing "
            f"{predictor.info.framing}); map slides with a model trained on whole fields"
        )
    rank, world, _ = launch()
    for path in paths[rank::world]:
        map_slide(predictor, path, index, config)
    _wait_for_all(world)
    if rank == 0:
        _write_index(index, [p.stem for p in paths], predictor.labels)
        console.print(f"{len(paths)} slide(s) mapped -> [bold]{index.index_html}[/]")
    return index.root

"""The slides of one folder, as the viewer shows them: Deep Zoom pyramids, the model's map of each (read from
``histoclass slide``'s outputs, or computed in the background) and the make-up of a drawn region.

Only the folder's slide files are ever opened: a requested name is looked up in the folder's own
listing, never joined into a path.
"""

from __future__ import annotations

import csv
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.path import Path as Polygon

from histoclass.config import SlideConfig
from histoclass.errors import HistoclassError
from histoclass.inference.predictor import Predictor
from histoclass.runs import SlideDir, SlideIndex
from histoclass.slides.deepzoom import DeepZoom
from histoclass.slides.job import SHIFT_COLUMNS, map_slide
from histoclass.slides.maps import class_colours, geojson, summarise
from histoclass.slides.readers import SLIDE_SUFFIXES, Slide, open_slide

__all__ = ["MapState", "SlideLibrary", "SlideNotFound"]


class SlideNotFound(HistoclassError):
    """A name that is not one of the folder's slides (answered 404)."""


@dataclass
class MapState:
    """Where the background map of one slide stands."""

    status: str = "none"  # none | running | done | failed
    error: str = ""
    thread: threading.Thread | None = field(default=None, repr=False)


@dataclass
class SlideMap:
    """A finished map: level-0 tile boxes (N x 4), class probabilities and tissue shares."""

    boxes: np.ndarray
    probabilities: np.ndarray
    tissue: np.ndarray
    step0: int
    #: Each tile's shift score and whether it is unlike the training images (maps made with ``--shift``).
    shift: np.ndarray | None = None
    unlike: np.ndarray | None = None


class SlideLibrary:
    """The slides under ``folder``; maps live in ``maps`` (the folder ``histoclass slide --out`` writes)."""

    def __init__(
        self, folder: Path, maps: Path, predictor: Predictor, settings: SlideConfig
    ) -> None:
        self.folder, self.index, self.predictor, self.settings = (
            folder.resolve(),
            SlideIndex(maps),
            predictor,
            settings,
        )
        self._open: dict[str, tuple[Slide, threading.Lock]] = {}
        self._states: dict[str, MapState] = {}
        self._lock = threading.Lock()

    def names(self) -> dict[str, Path]:
        """Slide name (its path inside the folder, with ``/``) -> file, for every slide file in the
        folder (links the folder's owner put there included): requests name one of these, and
        nothing else is opened."""
        files = sorted(
            p for p in self.folder.rglob("*") if p.is_file() and p.suffix.lower() in SLIDE_SUFFIXES
        )
        return {p.relative_to(self.folder).as_posix(): p for p in files}

    def path(self, name: str) -> Path:
        found = self.names().get(name)
        if found is None:
            raise SlideNotFound(
                f"no slide '{name}' in the served folder; GET /api/slides lists them"
            )
        return found

    def _slide(self, name: str) -> tuple[Slide, threading.Lock]:
        with self._lock:
            if name not in self._open:
                self._open[name] = (open_slide(self.path(name)), threading.Lock())
            return self._open[name]

    def describe(self, name: str) -> dict:
        slide, _ = self._slide(name)
        return {
            "name": name,
            "dimensions": list(slide.dimensions),
            "mpp": slide.mpp,
            "levels": len(slide.level_dimensions),
            "map": self.state(name).status,
        }

    def dzi(self, name: str) -> str:
        return DeepZoom(self._slide(name)[0]).dzi()

    def tile(self, name: str, level: int, column: int, row: int) -> bytes:
        slide, lock = self._slide(name)
        with lock:  # one reader per slide handle at a time; slides are read in parallel
            return DeepZoom(slide).tile_jpeg(level, column, row)

    # -- maps ---------------------------------------------------------------------------------------

    def _out(self, name: str) -> SlideDir:
        """Where the slide's map lives: ``MAPS/<file name without extension>``, as ``histoclass
        slide`` writes it; a name that two slides share in the folder's sub-folders gets its path
        instead."""
        stem = Path(name).stem
        shared = sum(Path(other).stem == stem for other in self.names()) > 1
        return self.index.slide(str(Path(name).with_suffix("")) if shared else stem)

    def state(self, name: str) -> MapState:
        state = self._states.setdefault(name, MapState())
        if state.status in ("none", "done"):
            state.status = "done" if self._matching_map(name) else "none"
        return state

    def _matching_map(self, name: str) -> bool:
        """A finished map of this slide by the served model (``histoclass slide``'s, or one computed here)."""
        out = self._out(name)
        if not (out.summary.is_file() and out.tiles.is_file() and not out.partial_tiles.exists()):
            return False
        made_by = json.loads(out.summary.read_text()).get("model", "")
        with out.tiles.open(newline="") as handle:
            header = next(csv.reader(handle), [])
        same_model = Path(made_by).resolve() == Path(self.predictor.origin).resolve()
        labels = self.predictor.labels
        return same_model and header[7 : 7 + len(labels)] == [f"prob_{label}" for label in labels]

    def start_map(self, name: str) -> MapState:
        """Map the slide in the background unless a map exists or is being made."""
        path, state = self.path(name), self.state(name)
        if state.status in ("running", "done"):
            return state

        def work() -> None:
            try:
                map_slide(self.predictor, path, self.index, self.settings)
                state.status = "done"
            except Exception as error:  # any failure is shown on the page, the server goes on
                state.status, state.error = (
                    "failed",
                    str(error).splitlines()[0][:300] if str(error) else repr(error),
                )

        state.status, state.error = "running", ""
        state.thread = threading.Thread(target=work, name=f"map {name}", daemon=True)
        state.thread.start()
        return state

    def progress(self, name: str) -> int:
        """Tiles mapped so far by a running map."""
        partial = self._out(name).partial_tiles
        if not partial.is_file():
            return 0
        with partial.open(newline="") as handle:
            return max(0, sum(1 for _ in handle) - 1)

    def slide_map(self, name: str) -> SlideMap:
        if self.state(name).status != "done":
            raise SlideNotFound(f"'{name}' has no map yet; POST /api/slides/{name}/map starts one")
        out, labels = self._out(name), self.predictor.labels
        with out.tiles.open(newline="") as handle:
            header, *rows = list(csv.reader(handle))
        end = 7 + len(labels)
        boxes = np.array([[int(v) for v in row[:4]] for row in rows], np.int64).reshape(-1, 4)
        tissue = np.array([float(row[4]) for row in rows])
        probabilities = np.array([[float(v) for v in row[7:end]] for row in rows]).reshape(
            -1, len(labels)
        )
        step0 = int(json.loads(out.summary.read_text())["step_level0"])
        found = SlideMap(boxes, probabilities, tissue, step0)
        if header[end:] == SHIFT_COLUMNS:
            found.shift = np.array([float(row[end]) for row in rows])
            found.unlike = np.array([row[end + 1] == "1" for row in rows])
        return found

    def map_json(self, name: str) -> dict:
        """Everything the overlay draws: the tile grid, each tile's probabilities and prediction set."""
        found, labels = self.slide_map(name), self.predictor.labels
        sets = (
            self.predictor.prediction_sets(found.probabilities)
            if len(found.probabilities)
            else None
        )

        def tile(i: int) -> list:
            """[x, y, width, height, tissue, probabilities, prediction set or None, [shift, unlike]
            or None]."""
            members = None if sets is None else [labels[k] for k in np.flatnonzero(sets[i])]
            shift = (
                None
                if found.shift is None
                else [round(float(found.shift[i]), 4), bool(found.unlike[i])]
            )
            probabilities = [round(float(p), 4) for p in found.probabilities[i]]
            return [
                *found.boxes[i].tolist(),
                round(float(found.tissue[i]), 4),
                probabilities,
                members,
                shift,
            ]

        colours = [list(c) for c in class_colours(labels)]
        return {
            "labels": labels,
            "colours": colours,
            "step": found.step0,
            "tiles": [tile(i) for i in range(len(found.boxes))],
        }

    def region(self, name: str, polygon: list[list[float]]) -> tuple[dict, SlideMap, np.ndarray]:
        """The tiles whose centres lie inside ``polygon`` (level-0 pixels): their tissue area and classes."""
        if len(polygon) < 3:
            raise HistoclassError("a region needs at least 3 points (a rectangle: its 4 corners)")
        found = self.slide_map(name)
        centres = found.boxes[:, :2] + found.boxes[:, 2:] / 2
        inside = (
            Polygon(np.asarray(polygon, float)).contains_points(centres)
            if len(centres)
            else np.zeros(0, bool)
        )
        slide, _ = self._slide(name)
        labels = self.predictor.labels
        summary = summarise(
            found.probabilities[inside], found.tissue[inside], labels, found.step0, slide.mpp
        )
        return summary, found, inside

    def region_geojson(self, name: str, polygon: list[list[float]]) -> str:
        """The region and the tiles inside it as one QuPath GeoJSON FeatureCollection."""
        _, found, inside = self.region(name, polygon)
        ring = [[float(x), float(y)] for x, y in [*polygon, polygon[0]]]
        region = {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {"objectType": "annotation", "name": "region"},
        }
        labels = self.predictor.labels
        return "".join(geojson(found.boxes[inside], found.probabilities[inside], labels, [region]))

    def close(self) -> None:
        for slide, _ in self._open.values():
            slide.close()

"""What a mapped slide shows: heatmaps over the thumbnail, QuPath GeoJSON, and the per-class summary."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Sequence

import matplotlib
import numpy as np
from PIL import Image, ImageDraw

__all__ = ["class_colours", "class_heatmap", "geojson", "label_heatmap", "png_bytes", "summarise"]

#: Tableau's ten colours, then evenly spaced hues: distinct for the first ten classes, as QuPath's
#: defaults are.
_TABLEAU = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
]
_ALPHA = 0.5
_BAND = 256  # thumbnail rows blended at once


def class_colours(labels: Sequence[str]) -> list[tuple[int, int, int]]:
    """One RGB colour per class, stable in class order."""
    colours = list(_TABLEAU)
    cmap = matplotlib.colormaps["hsv"]
    for k in range(len(labels) - len(colours)):
        colours.append(tuple(int(255 * c) for c in cmap(k / max(1, len(labels) - 10))[:3]))
    return colours[: len(labels)]


def _tile_pixels(
    boxes: np.ndarray, scale: float, shape: tuple[int, int]
) -> list[tuple[int, int, int, int]]:
    """Each level-0 box as (x0, y0, x1, y1) on a thumbnail ``scale`` times smaller (at least one pixel)."""
    height, width = shape
    out = []
    for x, y, w, h in boxes:
        x0, y0 = min(int(x / scale), width - 1), min(int(y / scale), height - 1)
        out.append(
            (
                x0,
                y0,
                max(x0 + 1, min(width, round((x + w) / scale))),
                max(y0 + 1, min(height, round((y + h) / scale))),
            )
        )
    return out


def _paint(
    thumbnail: np.ndarray, boxes: np.ndarray, colours: np.ndarray, scale: float
) -> np.ndarray:
    """The thumbnail with each tile blended with its colour (N x 3 uint8), a band of rows at a time: a 16k
    thumbnail would need gigabytes as one float image."""
    colour = np.zeros_like(thumbnail)
    painted = np.zeros(thumbnail.shape[:2], bool)
    for (x0, y0, x1, y1), c in zip(
        _tile_pixels(boxes, scale, thumbnail.shape[:2]), colours, strict=True
    ):
        colour[y0:y1, x0:x1] = c
        painted[y0:y1, x0:x1] = True
    out = thumbnail.copy()
    for top in range(0, out.shape[0], _BAND):
        rows, mask = out[top : top + _BAND], painted[top : top + _BAND]
        blended = (1 - _ALPHA) * rows[mask].astype(np.float32) + _ALPHA * colour[top : top + _BAND][
            mask
        ]
        rows[mask] = blended.round().astype(np.uint8)
    return out


def _with_legend(image: np.ndarray, entries: list[tuple[str, tuple[int, int, int]]]) -> Image.Image:
    """``image`` above a legend strip: a swatch and a name per entry."""
    canvas = Image.fromarray(image)
    row = 18
    legend = Image.new("RGB", (canvas.width, row * len(entries) + 8), "white")
    draw = ImageDraw.Draw(legend)
    for k, (name, colour) in enumerate(entries):
        top = 4 + k * row
        draw.rectangle((6, top, 20, top + 12), fill=colour, outline=(0, 0, 0))
        draw.text((26, top), name, fill=(0, 0, 0))
    out = Image.new("RGB", (canvas.width, canvas.height + legend.height), "white")
    out.paste(canvas, (0, 0))
    out.paste(legend, (0, canvas.height))
    return out


def label_heatmap(
    thumbnail: np.ndarray,
    boxes: np.ndarray,
    predicted: np.ndarray,
    labels: Sequence[str],
    scale: float,
) -> Image.Image:
    """Each tile in its predicted class's colour over the thumbnail, with a legend."""
    colours = np.array(class_colours(labels), np.uint8)
    painted = _paint(thumbnail, boxes, colours[predicted] if len(predicted) else colours[:0], scale)
    return _with_legend(painted, list(zip(labels, class_colours(labels), strict=True)))


def class_heatmap(
    thumbnail: np.ndarray, boxes: np.ndarray, probability: np.ndarray, label: str, scale: float
) -> Image.Image:
    """Each tile coloured by P(``label``) (viridis, 0 to 1) over a greyed thumbnail, with a legend."""
    grey = np.repeat(
        (thumbnail.sum(axis=2, dtype=np.uint16, keepdims=True) // 3).astype(np.uint8), 3, axis=2
    )
    cmap = matplotlib.colormaps["viridis"]
    colours = (np.asarray(cmap(probability))[:, :3] * 255).round().astype(np.uint8)
    stops = [
        (f"P({label}) = {v:.1f}", tuple(int(255 * c) for c in cmap(v)[:3])) for v in (0.0, 0.5, 1.0)
    ]
    return _with_legend(_paint(grey, boxes, colours, scale), stops)


def png_bytes(image: Image.Image | np.ndarray) -> bytes:
    image = image if isinstance(image, Image.Image) else Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # a slide's maps are large: encode fast
    return buffer.getvalue()


def geojson(
    boxes: np.ndarray,
    probabilities: np.ndarray,
    labels: Sequence[str],
    annotations: Sequence[dict] = (),
) -> Iterator[str]:
    """A FeatureCollection of tile polygons in level-0 pixels, classified and measured as QuPath imports them,
    as text one feature a line: a slide's hundred thousand tiles never sit in memory as one document.
    ``annotations``: features put before the tiles (a drawn region, say)."""
    colours = class_colours(labels)
    yield '{"type": "FeatureCollection", "features": [\n'
    for i, feature in enumerate(annotations):
        yield ("," if i else "") + json.dumps(feature) + "\n"
    for i, ((x, y, w, h), probs) in enumerate(
        zip(boxes.tolist(), probabilities, strict=True), start=len(annotations)
    ):
        k = int(np.argmax(probs))
        ring = [[x, y], [x + w, y], [x + w, y + h], [x, y + h], [x, y]]
        feature = {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {
                "objectType": "tile",
                "classification": {"name": labels[k], "color": list(colours[k])},
                "measurements": {
                    f"prob_{label}": round(float(p), 6)
                    for label, p in zip(labels, probs, strict=True)
                },
            },
        }
        yield ("," if i else "") + json.dumps(feature) + "\n"
    yield "]}\n"


def summarise(
    probabilities: np.ndarray,
    tissue: np.ndarray,
    labels: Sequence[str],
    step0: int,
    mpp: float | None,
) -> dict:
    """Tiles, tissue area and mean probability per class. A tile's area is its grid step (overlaps counted
    once) times its tissue share, so the class areas add up to the tissue area."""
    predicted = probabilities.argmax(axis=1) if len(probabilities) else np.zeros(0, int)
    pixel_area = float(step0) ** 2 * tissue
    mm2 = (mpp / 1000.0) ** 2 if mpp else None
    classes = {}
    for k, label in enumerate(labels):
        chosen = predicted == k
        area = float(pixel_area[chosen].sum())
        classes[label] = {
            "tiles": int(chosen.sum()),
            "tissue_area_px": area,
            "tissue_area_mm2": area * mm2 if mm2 else None,
            "share": float(chosen.mean()) if len(chosen) else 0.0,
            "mean_probability": float(probabilities[:, k].mean()) if len(probabilities) else 0.0,
        }
    total = float(pixel_area.sum())
    return {
        "tiles": len(probabilities),
        "tissue_area_px": total,
        "tissue_area_mm2": total * mm2 if mm2 else None,
        "classes": classes,
    }

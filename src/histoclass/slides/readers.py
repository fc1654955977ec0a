"""Opening a slide: OpenSlide (``openslide-python`` + ``openslide-bin``), tiffslide where OpenSlide is absent,
and plain large images as single-level slides. Every reader answers RGB uint8 arrays in level-0 coordinates.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from histoclass.errors import HistoclassError
from histoclass.slides.chunks import TiffChunks, open_chunks

__all__ = [
    "PLAIN_SUFFIXES",
    "SLIDE_SUFFIXES",
    "Slide",
    "find_slides",
    "has_slide_reader",
    "open_slide",
]

#: What OpenSlide or tiffslide read; .tif/.tiff that are not pyramids fall back to the plain reader.
SLIDE_SUFFIXES = {
    ".svs",
    ".tif",
    ".tiff",
    ".ndpi",
    ".vms",
    ".vmu",
    ".scn",
    ".mrxs",
    ".bif",
    ".svslide",
    ".dcm",
}
PLAIN_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
_EXTRA = "pip install 'histoclass[slides]'"


@dataclass
class Slide:
    """One open slide: its pyramid, resolution and a reader of regions."""

    path: Path
    handle: Any
    reader: str
    level_dimensions: list[tuple[int, int]]
    level_downsamples: list[float]
    mpp: float | None
    chunks: TiffChunks | None = None

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.level_dimensions[0]

    def read(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        """uint8 H x W x 3 pixels at ``level`` whose top-left corner is level-0 pixel (x, y);
        outside the slide and transparent pixels read as white, as the glass does. Decoded straight
        from the TIFF's tiles where that was checked to give the reader's pixels (``chunks``), five
        times faster."""
        if (
            self.chunks is not None
            and (region := self.chunks.read(x, y, level, width, height)) is not None
        ):
            return region
        return self.read_through_reader(x, y, level, width, height)

    def read_through_reader(
        self, x: int, y: int, level: int, width: int, height: int
    ) -> np.ndarray:
        """The region as OpenSlide, tiffslide or Pillow paints it."""
        if self.reader == "image":
            return _on_white(self.handle.crop((x, y, x + width, y + height)))
        if self.reader == "tiffslide":
            return self._tiffslide_region(x, y, level, width, height)
        return _on_white(self.handle.read_region((x, y), level, (width, height)))

    def _tiffslide_region(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        """tiffslide pads outside the level with black: the part inside it, on white glass as
        OpenSlide shows."""
        downsample = self.level_downsamples[level]
        left, top = int(x / downsample), int(y / downsample)  # as tiffslide places a level-0 corner
        level_width, level_height = self.level_dimensions[level]
        out = np.full((height, width, 3), 255, np.uint8)
        x0, y0 = max(left, 0), max(top, 0)
        x1, y1 = min(left + width, level_width), min(top + height, level_height)
        if x1 > x0 and y1 > y0:
            inside = self.handle.read_region(
                (x, y), level, (width, height), as_array=True, padding=False
            )
            out[y0 - top : y1 - top, x0 - left : x1 - left] = _on_white(inside)
        return out

    def thumbnail(self, longest: int) -> np.ndarray:
        """The whole slide with its longer side ``longest`` pixels (read from the smallest fitting level)."""
        width, height = self.dimensions
        scale = longest / max(width, height)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        if self.reader == "image":
            return _on_white(self.handle.resize(size, Image.Resampling.BOX))
        return _on_white(self.handle.get_thumbnail(size).resize(size, Image.Resampling.BOX))

    def close(self) -> None:
        if self.chunks is not None:
            self.chunks.close()
        self.handle.close()


def _on_white(region: Image.Image | np.ndarray) -> np.ndarray:
    image = region if isinstance(region, Image.Image) else Image.fromarray(np.asarray(region))
    # a third of the cost of all bands
    if image.mode == "RGBA" and image.getchannel("A").getextrema()[0] == 255:
        # opaque (inside the scanned area): no blend
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    if image.mode in {"RGBA", "LA", "PA"} or "transparency" in image.info:
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, image.convert("RGBA"))
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _mpp(properties: Any, prefix: str) -> float | None:
    values = [properties.get(f"{prefix}.mpp-x"), properties.get(f"{prefix}.mpp-y")]
    try:
        numbers = [float(v) for v in values if v not in (None, "")]
    except ValueError:
        return None
    return float(np.mean(numbers)) if numbers and all(n > 0 for n in numbers) else None


def _pyramid(path: Path, module: Any, cls: str, prefix: str) -> Slide | None:
    opener = getattr(module, cls)
    if not opener.detect_format(str(path)):
        return None
    handle = opener(str(path))
    return Slide(
        path,
        handle,
        prefix,
        [tuple(d) for d in handle.level_dimensions],
        [float(d) for d in handle.level_downsamples],
        _mpp(handle.properties, prefix),
    )


def _openslide(path: Path) -> Slide | None:
    if importlib.util.find_spec("openslide") is None:
        return None
    try:
        import openslide
    except OSError:  # openslide-python without its library (no openslide-bin, no system package)
        return None
    try:
        return _pyramid(path, openslide, "OpenSlide", "openslide")
    except openslide.OpenSlideError:
        return None


def _tiffslide(path: Path) -> Slide | None:
    if importlib.util.find_spec("tiffslide") is None:
        return None
    import tiffslide

    try:
        slide = _pyramid(path, tiffslide, "TiffSlide", "tiffslide")
    except Exception:  # tiffslide raises tifffile's and zarr's own errors on files it cannot read
        return None
    if (
        slide is not None
        and len(slide.level_dimensions) == 1
        and path.suffix.lower() in PLAIN_SUFFIXES
    ):
        slide.close()  # a flat TIFF reads faster and identically as a plain image
        return None
    return slide


@contextlib.contextmanager
def _large_images() -> Iterator[None]:
    """Slides are large by design: Pillow's decompression-bomb guard is for untrusted uploads."""
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def _plain(path: Path) -> Slide | None:
    if path.suffix.lower() not in PLAIN_SUFFIXES:
        return None
    with _large_images():
        try:
            image = Image.open(path)
            image.load()
        except (OSError, Image.UnidentifiedImageError, ValueError):
            return None
    mpp = _tiff_mpp(image)
    return Slide(path, image, "image", [image.size], [1.0], mpp)


def _tiff_mpp(image: Image.Image) -> float | None:
    """Microns per pixel from an Aperio description (``MPP = 0.4990``: an .svs under any name), TIFF
    resolution tags (unit 3: centimetre) or a PNG/JPEG's DPI."""
    tags = getattr(image, "tag_v2", None)
    aperio = (
        re.search(r"\|\s*MPP\s*=\s*([0-9.]+)", str(tags.get(270, ""))) if tags is not None else None
    )
    if aperio:
        return float(aperio.group(1))
    if tags is not None and tags.get(296) == 3 and tags.get(282):
        return 1e4 / float(tags[282])
    dpi = image.info.get("dpi")
    # ordinary photos say 72 or 300 dpi, which says nothing of a microscope
    if dpi and float(dpi[0]) > 1000:
        return 25400.0 / float(dpi[0])
    return None


def open_slide(path: str | Path, fast_reads: bool = True) -> Slide:
    """The slide at ``path`` through OpenSlide, else tiffslide, else as a plain image; one line when
    none can. ``fast_reads``: check the TIFF's tiles against the reader for direct reads (about 20
    ms; not needed to look at the metadata)."""
    path = Path(path)
    if not path.is_file():
        raise HistoclassError(f"no such slide '{path}'; pass slide files or folders of slides")
    suffix = path.suffix.lower()
    if suffix not in SLIDE_SUFFIXES | PLAIN_SUFFIXES:
        known = " ".join(sorted(SLIDE_SUFFIXES | PLAIN_SUFFIXES))
        raise HistoclassError(f"'{path.name}' is not a slide format histoclass reads ({known})")
    slide = _openslide(path) or _tiffslide(path) or _plain(path)
    if slide is not None:
        if fast_reads and slide.reader != "image":
            slide.chunks = open_chunks(
                path, slide.level_dimensions, slide.level_downsamples, slide.read_through_reader
            )
        return slide
    if suffix in SLIDE_SUFFIXES - PLAIN_SUFFIXES and not has_slide_reader():
        raise HistoclassError(f"reading {suffix} slides needs OpenSlide or tiffslide: {_EXTRA}")
    raise HistoclassError(
        f"'{path}' is not a readable slide or image (damaged, or not what its name says)"
    )


def has_slide_reader() -> bool:
    """Whether OpenSlide or tiffslide can be imported here (plain images need neither)."""
    for name in ("openslide", "tiffslide"):
        try:
            importlib.import_module(name)
        except (ImportError, OSError):  # OSError: openslide-python without its library
            continue
        return True
    return False


def find_slides(inputs: list[str]) -> list[Path]:
    """Slide files given directly, and the slides inside given folders (recursive, sorted)."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SLIDE_SUFFIXES
            )
        else:
            found.append(path)
    if not found:
        raise HistoclassError(
            f"no slides in {', '.join(inputs)}; pass .svs/.tif/.ndpi/... files or their folders"
        )
    return found

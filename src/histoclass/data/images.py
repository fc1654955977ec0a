"""Reading one image as 8-bit RGB, framing and resizing it: the single preprocessing path for training and
inference.

Imports only numpy, Pillow and SciPy, so an ONNX deployment without torch preprocesses exactly as training
did.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from histoclass.console import console
from histoclass.data.framing import Framing, frame

__all__ = [
    "EMPTY_FILE",
    "IMAGE_EXTENSIONS",
    "RESIZE_METHOD",
    "array_to_rgb",
    "is_image_file",
    "load_resized",
    "open_rgb",
    "resize_square",
    "unreadable_reason",
]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".gif"})
#: How an empty (0-byte) file is named everywhere.
EMPTY_FILE = "empty file (0 bytes)"
#: EXIF's orientation tag: phones and some microscope cameras store pixels turned and say so here.
_ORIENTATION = 0x0112
#: How every path resizes: Pillow bilinear straight to size x size (no crop), after JPEG DCT scaling.
RESIZE_METHOD = "pillow-bilinear-stretch"


def is_image_file(path: Path) -> bool:
    """True for files with a supported image extension that are not hidden."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def array_to_rgb(array: np.ndarray) -> np.ndarray:
    """Any 2-D or 3-D image array (8/16-bit, float, gray, RGBA) -> uint8 HxWx3.

    Integer images are scaled by their type's full range, so a 16-bit image keeps its relative intensities.
    """
    if array.dtype == np.uint8:
        out = array
    elif np.issubdtype(array.dtype, np.integer):
        out = (
            (array.astype(np.float64) * (255.0 / np.iinfo(array.dtype).max))
            .round()
            .astype(np.uint8)
        )
    else:
        peak = 1.0 if float(np.nanmax(array)) <= 1.0 else 255.0
        out = (np.clip(np.nan_to_num(array), 0, peak) * (255.0 / peak)).round().astype(np.uint8)
    if out.ndim == 2:
        out = np.repeat(out[:, :, None], 3, axis=2)
    elif out.shape[2] == 1:
        out = np.repeat(out, 3, axis=2)
    elif out.shape[2] >= 4:
        out = out[:, :, :3]
    return np.ascontiguousarray(out)


def _pil_to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in {"I;16", "I;16B", "I;16L", "I", "F"}:
        array = np.asarray(image)
        if image.mode.startswith("I;16"):
            array = array.astype(np.uint16)
        elif image.mode == "I":
            array = array.astype(np.uint16) if array.max() > 255 else array.astype(np.uint8)
        return Image.fromarray(array_to_rgb(array))
    return image.convert("RGB")


def _read_with_tifffile(path: Path) -> Image.Image:
    """Multi-channel 16-bit TIFFs that Pillow cannot open (common from microscopes)."""
    try:
        import tifffile
    except ImportError as error:
        raise OSError("cannot read this TIFF with Pillow; pip install tifffile") from error
    return Image.fromarray(array_to_rgb(tifffile.imread(path)))


def open_rgb(source: str | Path | bytes, size_hint: int | None = None) -> Image.Image:
    """Decode an image file (or its bytes) fully to RGB; raises OSError/ValueError on bad data.

    ``size_hint`` lets JPEG decoding scale down in the DCT (much faster) while staying >= the target size.
    """
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    if (
        not isinstance(source, bytes)
        and Path(source).is_file()
        and Path(source).stat().st_size == 0
    ):
        raise OSError(EMPTY_FILE)  # the words check-data uses too
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", Image.DecompressionBombWarning)
            image = Image.open(stream)
        if caught:  # Pillow's guard against untrusted files: said once, in our words
            width, height = image.size
            console.print(
                f"[yellow]note:[/] {_name(source)} is {width}x{height} pixels ({width * height / 1e6:.0f} MP)"
            )
    except Image.UnidentifiedImageError:
        if isinstance(source, bytes) or Path(source).suffix.lower() not in {".tif", ".tiff"}:
            raise
        return _read_with_tifffile(Path(source))
    if size_hint and image.format == "JPEG":
        image.draft("RGB", (size_hint, size_hint))
    image.load()
    if image.getexif().get(_ORIENTATION, 1) != 1:  # the pixels as the camera meant them to be seen
        image = ImageOps.exif_transpose(image)
    return _pil_to_rgb(image)


def _name(source: str | Path | bytes) -> str:
    return "an uploaded image" if isinstance(source, bytes) else f"'{source}'"


def resize_square(image: Image.Image, size: int, framing: Framing = "field") -> np.ndarray:
    """Frame, then resize to ``size`` x ``size`` (stretching, as the seeds' Keras generators did) -> uint8
    HxWx3."""
    image = frame(image, framing)
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.array(image, dtype=np.uint8)


def load_resized(source: str | Path | bytes, size: int, framing: Framing = "field") -> np.ndarray:
    """Decode (DCT-scaled when JPEG and the whole field is kept), frame and resize to ``size`` x ``size``:
    uint8 HxWx3, as every path sees it."""
    return resize_square(open_rgb(source, size if framing == "field" else None), size, framing)


def unreadable_reason(error: Exception) -> str:
    """The one-line reason a file could not be decoded, as reports and prediction CSVs give it."""
    return f"unreadable: {str(error).splitlines()[0] if str(error) else type(error).__name__}"

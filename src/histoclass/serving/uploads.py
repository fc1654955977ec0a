"""Uploaded bytes -> an RGB image, with limits checked before any pixel is decoded.

Every rejection is an :class:`UploadRejected` carrying the HTTP status: 413 too large, 415 not an image,
422 empty or damaged. Nothing is written to disk.
"""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path

from PIL import Image

from histoclass.data.images import EMPTY_FILE, IMAGE_EXTENSIONS, open_rgb

__all__ = ["UploadRejected", "decode_upload", "kept_name"]

#: Leading bytes of the formats we read: a file that starts like one but does not open is damaged, not foreign.
_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG", b"II*\x00", b"MM\x00*", b"BM")


class UploadRejected(Exception):
    """One upload that cannot be classified, and the status code that says why."""

    def __init__(self, status: int, filename: str, message: str) -> None:
        super().__init__(message)
        self.status, self.filename, self.message = status, filename, message

    def as_dict(self) -> dict:
        return {"filename": self.filename, "status": self.status, "error": self.message}


def kept_name(filename: str, unique: str) -> str:
    """A safe, bounded file name for a kept upload: ``unique`` + the upload's name cut to letters, digits,
    dots, dashes and underscores (at most 80 characters, its extension kept)."""
    base = Path(filename).name
    stem, suffix = Path(base).stem, Path(base).suffix[:10]
    clean = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._")[: 80 - len(suffix)] or "upload"
    return f"{unique}-{clean}{re.sub(r'[^A-Za-z0-9.]+', '', suffix)}"


def decode_upload(
    filename: str, data: bytes, max_bytes: int, max_pixels: int, size_hint: int | None = None, size: int | None = None
) -> Image.Image:
    """Check size, type and pixel count, then decode fully (as every other path does, with the same
    ``size_hint``); raises :class:`UploadRejected`. ``size``: the upload's real size, when only the first
    ``max_bytes + 1`` bytes were read."""
    if not data:
        raise UploadRejected(422, filename, EMPTY_FILE)
    if len(data) > max_bytes:
        actual = max(size or 0, len(data))
        raise UploadRejected(413, filename, f"file is {actual / 1e6:.1f} MB; the limit is {max_bytes / 1e6:g} MB")
    try:
        with Image.open(io.BytesIO(data)) as probe:
            width, height = probe.size
    except Image.DecompressionBombError as error:
        raise UploadRejected(413, filename, f"image has too many pixels ({error})") from None
    except (Image.UnidentifiedImageError, OSError):
        if data.startswith(_SIGNATURES):
            raise UploadRejected(422, filename, "damaged image (its header is cut off or corrupt)") from None
        readable = ", ".join(sorted(extension[1:] for extension in IMAGE_EXTENSIONS))
        raise UploadRejected(415, filename, f"not an image this server reads ({readable})") from None
    if width * height > max_pixels:
        raise UploadRejected(
            413, filename, f"image is {width}x{height} pixels; the limit is {max_pixels / 1e6:.0f} megapixels"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return open_rgb(data, size_hint)
    except Exception as error:  # truncated or corrupt data surfaces as many exception types
        raise UploadRejected(422, filename, f"damaged image ({str(error).splitlines()[0][:120]})") from None

"""Uploaded bytes -> an RGB image, with limits checked before any pixel is decoded.

Every rejection is an :class:`UploadRejected` carrying the HTTP status: 413 too large, 415 not an image,
422 empty or damaged. Nothing is written to disk.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image

from histoclass.data.images import open_rgb

__all__ = ["UploadRejected", "decode_upload"]

#: Leading bytes of the formats we read: a file that starts like one but does not open is damaged, not foreign.
_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG", b"II*\x00", b"MM\x00*", b"BM")


class UploadRejected(Exception):
    """One upload that cannot be classified, and the status code that says why."""

    def __init__(self, status: int, filename: str, message: str) -> None:
        super().__init__(message)
        self.status, self.filename, self.message = status, filename, message

    def as_dict(self) -> dict:
        return {"filename": self.filename, "status": self.status, "error": self.message}


def decode_upload(
    filename: str, data: bytes, max_bytes: int, max_pixels: int, size_hint: int | None = None
) -> Image.Image:
    """Check size, type and pixel count, then decode fully (as every other path does, with the same
    ``size_hint``); raises :class:`UploadRejected`."""
    if not data:
        raise UploadRejected(422, filename, "empty file (0 bytes)")
    if len(data) > max_bytes:
        raise UploadRejected(413, filename, f"file is {len(data) / 1e6:.1f} MB; the limit is {max_bytes / 1e6:.0f} MB")
    try:
        with Image.open(io.BytesIO(data)) as probe:
            width, height = probe.size
    except Image.DecompressionBombError as error:
        raise UploadRejected(413, filename, f"image has too many pixels ({error})") from None
    except (Image.UnidentifiedImageError, OSError):
        if data.startswith(_SIGNATURES):
            raise UploadRejected(422, filename, "damaged image (its header is cut off or corrupt)") from None
        raise UploadRejected(415, filename, "not an image this server reads (jpeg, png, tif, bmp)") from None
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

"""Uploaded bytes -> a resized RGB array, with limits checked before any pixel is decoded.

Every rejection is an :class:`UploadRejected` carrying the HTTP status: 413 too large, 415 not an image,
422 empty or damaged. Nothing is written to disk. Full decodes share one :class:`DecodeBudget` per worker, so
that many requests of large images at once cost a bounded amount of memory, handed back when they are done.
"""

from __future__ import annotations

import asyncio
import io
import re
import warnings
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from histoclass.data.framing import Framing
from histoclass.data.images import EMPTY_FILE, IMAGE_EXTENSIONS, open_rgb, resize_square
from histoclass.heap import give_back_freed_memory

__all__ = [
    "DecodeBudget",
    "UploadRejected",
    "UploadsRejected",
    "checked_pixels",
    "decode_resized",
    "kept_name",
]

#: Leading bytes of the formats we read: a file that starts like one but does not open is damaged,
#: not foreign.
_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG", b"II*\x00", b"MM\x00*", b"BM", b"RIFF", b"GIF8")


class UploadRejected(Exception):
    """One upload that cannot be classified, and the status code that says why."""

    def __init__(self, status: int, filename: str, message: str) -> None:
        super().__init__(message)
        self.status, self.filename, self.message = status, filename, message

    def as_dict(self) -> dict:
        return {"filename": self.filename, "status": self.status, "error": self.message}


class UploadsRejected(Exception):
    """The refused uploads of one request (or the request itself, as ``(request)``): answered together."""

    def __init__(self, errors: list[UploadRejected]) -> None:
        super().__init__(errors[0].message)
        self.errors = errors


def kept_name(filename: str, unique: str) -> str:
    """A safe, bounded file name for a kept upload: ``unique`` + the upload's name cut to letters, digits,
    dots, dashes and underscores (at most 80 characters, its extension kept)."""
    base = Path(filename).name
    stem, suffix = Path(base).stem, Path(base).suffix[:10]
    clean = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._")[: 80 - len(suffix)] or "upload"
    return f"{unique}-{clean}{re.sub(r'[^A-Za-z0-9.]+', '', suffix)}"


def checked_pixels(
    filename: str, data: bytes | None, size: int, max_bytes: int, max_pixels: int
) -> int:
    """The image's pixel count, read from its header only, once size and type are checked; raises
    :class:`UploadRejected`. ``data`` is ``None`` for a file that went past ``max_bytes`` (``size`` bytes)."""
    if data is None or size > max_bytes:
        raise UploadRejected(
            413, filename, f"file is {size / 1e6:.1f} MB; the limit is {max_bytes / 1e6:g} MB"
        )
    if not data:
        raise UploadRejected(422, filename, EMPTY_FILE)
    try:
        with warnings.catch_warnings():
            # the limit below says it
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as probe:
                width, height = probe.size
    except Image.DecompressionBombError as error:
        raise UploadRejected(413, filename, f"image has too many pixels ({error})") from None
    except (Image.UnidentifiedImageError, OSError):
        if data.startswith(_SIGNATURES):
            raise UploadRejected(
                422, filename, "damaged image (its header is cut off or corrupt)"
            ) from None
        readable = ", ".join(sorted(extension[1:] for extension in IMAGE_EXTENSIONS))
        raise UploadRejected(
            415, filename, f"not an image this server reads ({readable})"
        ) from None
    if width * height > max_pixels:
        raise UploadRejected(
            413,
            filename,
            f"image is {width}x{height} pixels; the limit is {max_pixels / 1e6:.0f} megapixels",
        )
    return width * height


def decode_resized(filename: str, data: bytes, size: int, framing: Framing = "field") -> np.ndarray:
    """Decode fully (as every other path does, DCT-scaled for JPEG) and resize to ``size``: the large decoded
    image lives only inside this call. Raises :class:`UploadRejected` (422) on damaged data."""
    try:
        with warnings.catch_warnings():
            # checked_pixels has bounded it
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            hint = size if framing == "field" else None  # a cell is a part of the image
            return resize_square(open_rgb(bytes(data), hint), size, framing)
    except Exception as error:  # truncated or corrupt data surfaces as many exception types
        raise UploadRejected(
            422, filename, f"damaged image ({str(error).splitlines()[0][:120]})"
        ) from None


class DecodeBudget:
    """At most ``pixels`` decoded at once across a worker's requests (an image larger than the budget waits
    until it has the budget to itself); once idle after large decodes, freed heap goes back to the system."""

    #: Decodes this large leave glibc's arenas holding memory that ``malloc_trim`` returns.
    LARGE = 4_000_000

    def __init__(self, pixels: int) -> None:
        self.capacity = self.free = pixels
        self._since_trim = 0
        self._changed = asyncio.Condition()

    @asynccontextmanager
    async def hold(self, pixels: int):
        share = min(pixels, self.capacity)
        async with self._changed:
            await self._changed.wait_for(lambda: self.free >= share)
            self.free -= share
        try:
            yield
        finally:
            async with self._changed:
                self.free += share
                self._since_trim += pixels
                self._changed.notify_all()
                idle = self.free == self.capacity and self._since_trim >= self.LARGE
                if idle:
                    self._since_trim = 0
            if idle:
                give_back_freed_memory()

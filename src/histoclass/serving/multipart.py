"""A multipart request body read as it streams in: files stay in memory, each held to its limit as it arrives.

Starlette's form parser spools a file over 1 MB to a temporary file and checks sizes only once the whole body
is read. Here a file past ``max_bytes`` keeps only its byte count (its size is named in the refusal) and
nothing touches the disk; the whole body is capped by the guard before it starts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from histoclass.serving.uploads import UploadRejected, UploadsRejected

__all__ = ["Upload", "multipart_body", "read_uploads"]

#: One part's header line: a 5,000-character file name is legal, a megabyte of header is not.
MAX_HEADER_BYTES = 64 * 1024


@dataclass
class Upload:
    """One file of the request: its name as the client sent it, its bytes (``None`` once past the limit)."""

    filename: str
    data: bytearray | None = field(default_factory=bytearray)
    size: int = 0


class _Parts:
    """python-multipart's callbacks, collecting the files of one field."""

    def __init__(self, wanted: str, max_bytes: int, max_files: int) -> None:
        self.wanted, self.max_bytes, self.max_files = wanted, max_bytes, max_files
        self.uploads: list[Upload] = []
        self.current: Upload | None = None
        self._name, self._value, self._disposition = b"", b"", b""

    def on_part_begin(self) -> None:
        self.current, self._disposition = None, b""

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        if self._name.lower() == b"content-disposition":
            self._disposition = self._value
        self._name, self._value = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if (
            options.get(b"name", b"").decode("utf-8", "replace") != self.wanted
            or b"filename" not in options
        ):
            return  # other form fields are not ours to read
        if len(self.uploads) == self.max_files:
            message = f"more than {self.max_files} files; the limit is {self.max_files} a request"
            raise UploadsRejected([UploadRejected(413, "(request)", message)])
        self.current = Upload(options[b"filename"].decode("utf-8", "replace") or "upload")
        self.uploads.append(self.current)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        upload = self.current
        if upload is None:
            return
        upload.size += end - start
        if upload.data is not None and upload.size > self.max_bytes:
            upload.data = None  # past the limit: only counted from here on
        elif upload.data is not None:
            upload.data += data[start:end]

    def callbacks(self) -> dict:
        names = (
            "part_begin",
            "header_field",
            "header_value",
            "header_end",
            "headers_finished",
            "part_data",
        )
        return {f"on_{name}": getattr(self, f"on_{name}") for name in names}


def _request_error(status: int, message: str) -> UploadsRejected:
    return UploadsRejected([UploadRejected(status, "(request)", message)])


async def read_uploads(
    content_type: str | None,
    body: AsyncIterator[bytes],
    wanted: str,
    max_bytes: int,
    max_files: int,
) -> list[Upload]:
    """The files sent in field ``wanted`` of a ``multipart/form-data`` body; raises :class:`UploadsRejected`
    (415 not multipart, 400 malformed, 413 too many files, 422 no file)."""
    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data" or b"boundary" not in options:
        raise _request_error(
            415,
            f"send the images as multipart/form-data in the field '{wanted}' (curl -F {wanted}=@cell.jpg)",
        )
    parts = _Parts(wanted, max_bytes, max_files)
    try:
        parser = MultipartParser(
            options[b"boundary"], parts.callbacks(), max_header_size=MAX_HEADER_BYTES
        )
        async for chunk in body:
            parser.write(chunk)
        parser.finalize()
    except (FormParserError, ValueError) as error:
        raise _request_error(
            400, f"malformed multipart body ({str(error).splitlines()[0][:120]})"
        ) from None
    if not parts.uploads:
        raise _request_error(422, f"no file in the field '{wanted}' (curl -F {wanted}=@cell.jpg)")
    return parts.uploads


def multipart_body(wanted: str, many: bool) -> dict:
    """The OpenAPI request body of a route that reads its files with :func:`read_uploads` (for ``/docs``)."""
    binary = {"type": "string", "format": "binary"}
    schema = {"type": "array", "items": binary} if many else binary
    form = {"type": "object", "properties": {wanted: schema}, "required": [wanted]}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": form}}}}

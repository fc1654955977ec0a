"""Finding images: recursive folder listings, CSVs of ids beside an image folder, and prediction inputs.

One reader for ``train`` (labels CSVs, class folders) and ``predict`` (files, folders, CSVs of ids).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from pathlib import Path

from histoclass.data.images import is_image_file
from histoclass.errors import HistoclassError

__all__ = [
    "collect_inputs",
    "file_identities",
    "file_identity",
    "find_image",
    "index_images",
    "list_images",
    "read_csv_rows",
]


def file_identity(path: str | Path) -> str:
    """What a file's content is taken to be: the file's own path (links resolved, so a folder of
    symlinks shares what its targets cached), size and modification time."""
    return file_identities([path])[0]


def file_identities(paths: Iterable[str | Path]) -> list[str]:
    """``file_identity`` of each path, each folder resolved once: resolving every file's full path
    costs a system call per folder above it, the most of a check of 10k cached files."""
    folders: dict[str, str] = {}
    identities = []
    for path in map(os.fspath, paths):
        stat = os.stat(path)
        folder, name = os.path.split(path)
        if os.path.islink(path):
            real = os.path.realpath(path)
        else:
            if folder not in folders:
                folders[folder] = os.path.realpath(folder or ".")
            real = os.path.join(folders[folder], name)
        identities.append(f"{real}|{stat.st_size}|{stat.st_mtime_ns}")
    return identities


def list_images(folder: Path) -> list[Path]:
    """Every image file below ``folder`` (recursive, hidden files skipped), sorted."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p))


def index_images(folder: Path) -> dict[str, Path]:
    """Map both the relative path and the relative path without extension to each image below ``folder``."""
    index: dict[str, Path] = {}
    for dirpath, _, files in os.walk(folder):
        for name in files:
            path = Path(dirpath, name)
            if is_image_file(path):
                relative = path.relative_to(folder)
                index.setdefault(relative.as_posix(), path)
                index.setdefault(relative.with_suffix("").as_posix(), path)
    return index


def find_image(index: dict[str, Path], image_id: str) -> Path | None:
    """The image an id names, with or without its extension."""
    return index.get(image_id) or index.get(Path(image_id).with_suffix("").as_posix())


def read_csv_rows(path: Path, columns: dict[str, str]) -> list[dict[str, str]]:
    """Rows of a UTF-8 CSV that must have ``columns`` (flag -> column name), each cell filled and stripped."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle, dialect=_dialect(handle))
            present = reader.fieldnames or []
            for flag, column in columns.items():
                if column not in present:
                    raise HistoclassError(
                        f"CSV '{path}' has no column '{column}' (columns: {', '.join(present) or 'none'}); "
                        f"pass {flag} NAME"
                    )
            return [_checked_row(path, reader.line_num, row, columns.values()) for row in reader]
    except UnicodeDecodeError as error:
        raise HistoclassError(
            f"CSV '{path}' is not UTF-8 text (byte 0x{error.object[error.start]:02x} at offset "
            f"{error.start}); "
            "save it as UTF-8"
        ) from None
    except csv.Error as error:
        raise HistoclassError(f"CSV '{path}' is not a readable CSV file ({error})") from None


def _dialect(handle) -> type[csv.Dialect] | str:
    """Commas, or the separator the header line uses (``;`` from European spreadsheets, tabs)."""
    header = handle.readline()
    handle.seek(0)
    try:
        return csv.Sniffer().sniff(header, delimiters=",;\t|")
    except csv.Error:  # one column: nothing to tell
        return "excel"


def _checked_row(path: Path, line: int, row: dict, columns: Iterable[str]) -> dict[str, str]:
    for column in columns:
        value = row.get(column)
        if value is None or not value.strip():
            raise HistoclassError(
                f"CSV '{path}' line {line}: no value in column '{column}'; fill it in or remove the row"
            )
    return {key: (value or "").strip() for key, value in row.items() if key is not None}


def _csv_ids(
    path: Path, image_dir: str | None, id_column: str
) -> tuple[list[str], list[Path | None]]:
    folder = Path(image_dir) if image_dir else path.parent
    if not folder.is_dir():
        raise HistoclassError(
            f"--image-dir: no such folder '{folder}'; pass the folder holding the images"
        )
    ids = [row[id_column] for row in read_csv_rows(path, {"--id-column": id_column})]
    index = index_images(folder)
    return ids, [find_image(index, image_id) for image_id in ids]


def collect_inputs(
    inputs: list[str], image_dir: str | None = None, id_column: str = "id"
) -> tuple[list[str], list[Path | None]]:
    """Ids and paths for image files, folders (ids relative to the folder) and CSVs of ids (None:
    not found)."""
    ids: list[str] = []
    paths: list[Path | None] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = list_images(path)
            ids += [p.relative_to(path).as_posix() for p in found]
            paths += found
        elif path.suffix.lower() == ".csv" and path.is_file():
            csv_ids, csv_paths = _csv_ids(path, image_dir, id_column)
            ids += csv_ids
            paths += csv_paths
        elif path.is_file():
            ids.append(item)
            paths.append(path)
        else:
            raise HistoclassError(f"no such image, folder or CSV '{item}'")
    if not ids:
        raise HistoclassError(f"no images found in {', '.join(inputs)} (jpeg, png, tif, bmp)")
    return ids, paths

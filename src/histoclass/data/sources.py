"""Data sources: a class-folder tree, a labels CSV beside an image folder, a MedMNIST-style .npz,
medmnist:NAME.

``read_source`` picks the reader by what ``--data`` points at, through a registry (no if-chain over kinds).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from histoclass.config import DataConfig
from histoclass.console import console
from histoclass.data.inputs import find_image, index_images, list_images, read_csv_rows
from histoclass.data.records import DataSource, ImageRecords
from histoclass.errors import HistoclassError
from histoclass.registry import MatchRegistry

__all__ = [
    "READERS",
    "SPLIT_FOLDERS",
    "cache_root",
    "medmnist_cache_dir",
    "read_source",
    "register_source",
]

#: Sub-folder names that mark a pre-split dataset, and the split each one is.
SPLIT_FOLDERS = {
    "train": "train",
    "val": "val",
    "validation": "val",
    "valid": "val",
    "test": "test",
}

Reader = Callable[[str, DataConfig], DataSource]
#: Readers for the ``--data`` values their predicate accepts; the first match wins.
READERS: MatchRegistry[str, Reader] = MatchRegistry()
register_source = READERS.register


def read_source(spec: str, config: DataConfig | None = None) -> DataSource:
    """Read the dataset ``spec`` names (a path or ``medmnist:NAME``) into a :class:`DataSource`."""
    reader = READERS.first(spec)
    if reader is not None:
        return reader(spec, config or DataConfig())
    raise HistoclassError(
        f"--data: no such file or folder '{spec}'; pass a class-folder dataset, a labels CSV "
        "(with --image-dir), an .npz file or medmnist:NAME"
    )


def _natural_key(text: str) -> tuple:
    return tuple(int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text))


# ---------------------------------------------------------------- class folders
def _class_folder_records(root: Path, classes: list[str], base: Path) -> ImageRecords:
    ids, paths, labels = [], [], []
    for index, name in enumerate(classes):
        folder = root / name
        found = list_images(folder) if folder.is_dir() else []
        if not found:
            raise HistoclassError(
                f"class folder '{folder}' has no images (jpeg, png, tif, bmp); add images or "
                "remove the folder"
            )
        paths += found
        ids += [p.relative_to(base).as_posix() for p in found]
        labels += [index] * len(found)
    return ImageRecords(ids=ids, labels=np.asarray(labels, dtype=np.int64), paths=paths)


def _subfolders(folder: Path) -> list[str]:
    return sorted(
        (p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=_natural_key,
    )


@register_source(lambda spec: Path(spec).is_dir())
def read_class_folders(spec: str, config: DataConfig) -> DataSource:
    """One sub-folder per class; ``train/``, ``val/`` (``validation/``, ``valid/``) and ``test/``
    are splits."""
    root = Path(spec)
    names = _subfolders(root)
    split_dirs = {SPLIT_FOLDERS[n.lower()]: root / n for n in names if n.lower() in SPLIT_FOLDERS}
    if split_dirs and "train" in split_dirs:
        classes = _subfolders(split_dirs["train"])
        layout = {split: folder for split, folder in split_dirs.items()}
    else:
        classes, layout = names, {"all": root}
    if len(classes) < 2:
        raise HistoclassError(
            f"--data: '{root}' needs one sub-folder per class (at least 2); found {len(classes)}"
        )
    splits = {}
    for split, folder in layout.items():
        extra = set(_subfolders(folder)) - set(classes)
        if extra:
            raise HistoclassError(
                f"'{folder}' has classes not in train/: {', '.join(sorted(extra))}"
            )
        present = [c for c in classes if (folder / c).is_dir()] if split != "train" else classes
        records = _class_folder_records(folder, present, root)
        remap = np.asarray([classes.index(c) for c in present])
        splits[split] = ImageRecords(
            ids=records.ids, labels=remap[records.labels], paths=records.paths
        )
    return DataSource(name=root.name, classes=classes, splits=splits, kind="folder")


# ---------------------------------------------------------------- CSV + image folder
def _unique_rows(
    path: Path, rows: list[dict[str, str]], config: DataConfig
) -> list[dict[str, str]]:
    """One row per id: exact repeats are kept once (and said so); an id with two labels is an error."""
    first: dict[str, dict[str, str]] = {}
    repeated, conflicting = [], []
    for row in rows:
        image_id = row[config.id_column]
        seen = first.setdefault(image_id, row)
        if seen is not row:
            same = seen[config.label_column] == row[config.label_column]
            (repeated if same else conflicting).append(image_id)
    if conflicting:
        names = ", ".join(sorted(set(conflicting))[:10])
        raise HistoclassError(
            f"CSV '{path}': {len(set(conflicting))} id(s) have two different labels ({names}); "
            "keep one row per image"
        )
    if repeated:
        from histoclass.console import console

        names = ", ".join(sorted(set(repeated))[:5])
        console.print(
            f"[yellow]CSV '{path}': {len(repeated)} repeated row(s) kept once ({names})[/]"
        )
    return list(first.values())


@register_source(lambda spec: spec.lower().endswith(".csv") and Path(spec).is_file())
def read_labels_csv(spec: str, config: DataConfig) -> DataSource:
    """``id,label`` rows with images ``<image_dir>/<id>[.ext]`` (Kaggle's Histopathologic Cancer
    Detection)."""
    path = Path(spec)
    folder = Path(config.image_dir) if config.image_dir else path.parent
    if not folder.is_dir():
        raise HistoclassError(
            f"--image-dir: no such folder '{folder}'; pass the folder holding the images"
        )
    wanted = {"--id-column": config.id_column, "--label-column": config.label_column}
    if config.group_column:
        wanted["--group-column"] = config.group_column
    rows = _unique_rows(path, read_csv_rows(path, wanted), config)
    if not rows:
        raise HistoclassError(f"CSV '{path}' has no rows")
    index = index_images(folder)
    classes = sorted({row[config.label_column] for row in rows}, key=_natural_key)
    ids, paths, labels, groups, missing = [], [], [], [], []
    for row in rows:
        image_id = row[config.id_column]
        found = find_image(index, image_id)
        if found is None:
            missing.append((image_id, f"no image for this id in '{folder}'"))
            continue
        ids.append(image_id)
        paths.append(found)
        labels.append(classes.index(row[config.label_column]))
        if config.group_column:
            groups.append(row[config.group_column])
    if not ids:
        raise HistoclassError(
            f"--image-dir: none of the ids in '{path}' has an image in '{folder}'"
        )
    records = ImageRecords(
        ids=ids, labels=np.asarray(labels, dtype=np.int64), paths=paths, groups=groups or None
    )
    return DataSource(
        name=path.stem, classes=classes, splits={"all": records}, kind="csv", missing=missing
    )


# ---------------------------------------------------------------- .npz and MedMNIST
def _medmnist_class_names(flag: str) -> list[str] | None:
    try:
        from medmnist import INFO
    except ImportError:
        return None
    info = INFO.get(flag)
    if info is None:
        return None
    labels = info["label"]
    return [labels[str(i)] for i in range(len(labels))]


def _npz_array(data: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    try:
        array = data[key]
    except ValueError:  # object arrays need pickle, which is never allowed
        raise HistoclassError(
            f"--data: '{path}': {key} is an object array; save plain numeric arrays"
        ) from None
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise HistoclassError(
            f"--data: '{path}': {key} holds {array.dtype} values; save numeric arrays"
        )
    return array


def _npz_split(
    data: np.lib.npyio.NpzFile, prefix: str, path: Path
) -> tuple[ImageRecords, list[tuple[str, str]]]:
    """One split's records, and the ids whose label is not a class index (reported, left out)."""
    images, labels = (
        _npz_array(data, f"{prefix}images", path),
        _npz_array(data, f"{prefix}labels", path),
    )
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise HistoclassError(
            f"'{path}': {prefix}labels has shape {labels.shape}; only single-label data (N,) or "
            "(N,1) is supported"
        )
    if images.ndim not in (3, 4) or len(images) != len(labels):
        raise HistoclassError(
            f"'{path}': {prefix}images must be (N,H,W) or (N,H,W,C) matching its labels"
        )
    name = prefix.rstrip("_") or "all"
    ids = [f"{name}/{i}" for i in range(len(labels))]
    valid = (labels >= 0) & (labels == np.round(labels))
    rejected = [
        (ids[i], f"label {labels[i]} is not a class index (0, 1, ...)")
        for i in np.flatnonzero(~valid)
    ]
    records = ImageRecords(
        ids=ids, labels=np.where(valid, labels, -1).astype(np.int64), array=images
    )
    return (records.subset(np.flatnonzero(valid)) if rejected else records), rejected


def _eight_bit(splits: dict[str, ImageRecords], path: Path) -> dict[str, ImageRecords]:
    """Integer images wider than uint8 as 8-bit, scaled by the bit depth their values use (0-255
    stored as int64 stay as they are; 12-bit data in uint16 is scaled from 0-4095), never by the
    type's full range, which turns them black. Said on the console; negative values are refused."""
    arrays = [r.array for r in splits.values() if r.array is not None and len(r)]
    if all(a.dtype == np.uint8 or not np.issubdtype(a.dtype, np.integer) for a in arrays):
        return splits
    low, peak = min(int(a.min()) for a in arrays), max(int(a.max()) for a in arrays)
    if low < 0:
        raise HistoclassError(
            f"--data: '{path}': images hold negative values ({low}); save unsigned pixel values"
        )
    bits = max(8, peak.bit_length())
    full = (1 << bits) - 1
    console.print(
        f"[yellow]{path.name}: images stored as {arrays[0].dtype} with values 0-{peak}: read as {bits}-bit "
        f"(0-{full} scaled to 0-255)[/]"
    )
    return {
        name: replace(
            records,
            array=(records.array.astype(np.float64) * (255.0 / full)).round().astype(np.uint8),
        )
        if records.array is not None
        else records
        for name, records in splits.items()
    }


def read_npz_file(path: Path, flag: str | None = None) -> DataSource:
    """Read a MedMNIST-style archive: ``{train,val,test}_images`` and ``_labels``, or
    ``images``/``labels``."""
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise HistoclassError(
            f"--data: '{path}' is not a readable .npz archive ({error})"
        ) from None
    with data:
        prefixes = [p for p in ("train_", "val_", "test_") if f"{p}images" in data.files]
        if not prefixes and "images" in data.files:
            prefixes = [""]
        if not prefixes or any(f"{p}labels" not in data.files for p in prefixes):
            raise HistoclassError(
                f"--data: '{path}' needs train_images/train_labels (and val_*, test_*) or "
                "images/labels arrays; "
                f"it has {', '.join(data.files)}"
            )
        read = {(p.rstrip("_") or "all"): _npz_split(data, p, path) for p in prefixes}
    splits = _eight_bit({name: records for name, (records, _) in read.items()}, path)
    rejected = [item for _, bad in read.values() for item in bad]
    if not any(len(r) for r in splits.values()):
        raise HistoclassError(f"--data: '{path}' has no image with a valid label")
    num_classes = int(max(r.labels.max() for r in splits.values() if len(r))) + 1
    names = _medmnist_class_names(flag or path.stem.split("_")[0])
    classes = names if names and len(names) >= num_classes else [str(i) for i in range(num_classes)]
    return DataSource(name=path.stem, classes=classes, splits=splits, kind="npz", missing=rejected)


@register_source(lambda spec: spec.lower().endswith(".npz") and Path(spec).is_file())
def read_npz(spec: str, config: DataConfig) -> DataSource:
    """A MedMNIST-style ``.npz`` file."""
    return read_npz_file(Path(spec))


def cache_root() -> Path:
    """histoclass's cache folder: ``$HISTOCLASS_CACHE``, else ``~/.cache/histoclass``."""
    return Path(os.environ.get("HISTOCLASS_CACHE") or Path.home() / ".cache" / "histoclass")


def medmnist_cache_dir() -> Path:
    """Where ``medmnist:NAME`` archives are kept (``$HISTOCLASS_CACHE/medmnist``)."""
    return cache_root() / "medmnist"


@register_source(lambda spec: spec.lower().startswith("medmnist:"))
def read_medmnist(spec: str, config: DataConfig) -> DataSource:
    """``medmnist:NAME`` or ``medmnist:NAME@SIZE``: the cached archive, downloaded by ``medmnist``
    if absent."""
    flag, _, size_text = spec.split(":", 1)[1].strip().lower().partition("@")
    size = int(size_text) if size_text.isdigit() else 28
    try:
        import medmnist
    except ImportError:
        raise HistoclassError(
            "medmnist:NAME needs the medmnist package; pip install medmnist"
        ) from None
    if flag not in medmnist.INFO:
        known = ", ".join(sorted(k for k in medmnist.INFO if not k.endswith("3d")))
        raise HistoclassError(f"--data: unknown MedMNIST dataset '{flag}'; choose one of {known}")
    cache = medmnist_cache_dir()
    path = cache / (f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz")
    if not path.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        dataset_class = getattr(medmnist, medmnist.INFO[flag]["python_class"])
        try:
            dataset_class(split="train", download=True, root=str(cache), size=size)
        except Exception as error:  # the package raises bare RuntimeError/URLError variants
            raise HistoclassError(
                f"medmnist:{flag}: download failed ({type(error).__name__}); when offline, put {path.name} "
                f"in {cache} or pass --data PATH.npz"
            ) from None
    return read_npz_file(path, flag)

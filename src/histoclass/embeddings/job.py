"""``histoclass embed``: every image's embedding, written as .npz, .npy (+ an id table) or .parquet.

Read from and added to the same on-disk cache as probes, so embedding a dataset a probe has seen is instant.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from histoclass.atomic import atomic_path, write_text
from histoclass.config import DataConfig, EmbedConfig
from histoclass.console import console
from histoclass.data.inputs import list_images
from histoclass.data.records import ImageRecords
from histoclass.data.sources import read_source
from histoclass.embeddings.compute import embed_records
from histoclass.embeddings.extractors import create_extractor
from histoclass.errors import HistoclassError
from histoclass.models.factory import check_model_name
from histoclass.models.foundation import FOUNDATION_MODELS
from histoclass.runs import ModelInfo, RunDir

__all__ = ["EmbeddingTable", "embed"]


@dataclass
class EmbeddingTable:
    """Features (N x D, or N x 8 x D for all views) with each image's id, label and split."""

    features: np.ndarray
    ids: list[str]
    labels: list[str]
    splits: list[str]


def _records(config: EmbedConfig) -> tuple[ImageRecords, list[str], list[str]]:
    """Every image of ``config.data`` with label and split names; a plain folder of images has neither."""
    path = Path(config.data)
    if path.is_dir() and not any(child.is_dir() for child in path.iterdir()):
        files = list_images(path)
        ids = [str(file.relative_to(path)) for file in files]
        records = ImageRecords(
            ids=ids, labels=np.zeros(len(ids), np.int64), paths=[str(f) for f in files]
        )
        return records, [""] * len(ids), ["all"] * len(ids)
    given = {key: getattr(config, key) for key in ("image_dir", "id_column", "label_column")}
    source = read_source(
        config.data, DataConfig(path=config.data, **{k: v for k, v in given.items() if v})
    )
    parts = [(name, records) for name, records in source.splits.items() if len(records)]
    records = ImageRecords.concatenate([records for _, records in parts])
    labels = [source.classes[k] for _, part in parts for k in part.labels]
    splits = [name for name, part in parts for _ in range(len(part))]
    return records, labels, splits


def _image_size(config: EmbedConfig) -> int:
    """The flag, else the run's size, else the foundation model's own, else 224."""
    if config.image_size:
        return config.image_size
    run = RunDir(Path(config.model))
    if run.is_trained():
        return ModelInfo.load(run.model_info).image_size
    spec = FOUNDATION_MODELS.get(config.model)
    return spec.image_size if spec else 224


def _write(table: EmbeddingTable, out: Path) -> None:
    """One file, written atomically in the format its suffix names (.npy gets an id table beside it)."""
    if out.suffix == ".parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise HistoclassError(
                "--out .parquet needs pyarrow: pip install pyarrow (or write .npz)"
            ) from None
        flat = table.features.reshape(len(table.ids), -1).astype(np.float32)
        vectors = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])
        columns = {
            "id": table.ids,
            "label": table.labels,
            "split": table.splits,
            "embedding": vectors,
        }
        with atomic_path(out) as tmp:
            pq.write_table(pa.table(columns), tmp)
        return
    if out.suffix == ".npy":
        with atomic_path(out) as tmp, open(tmp, "wb") as handle:
            np.save(handle, table.features)
        buffer = io.StringIO()
        rows = zip(range(len(table.ids)), table.ids, table.labels, table.splits, strict=True)
        csv.writer(buffer).writerows([("row", "id", "label", "split"), *rows])
        write_text(out.with_suffix(".csv"), buffer.getvalue())
        return
    with atomic_path(out) as tmp, open(tmp, "wb") as handle:
        np.savez(
            handle,
            features=table.features,
            ids=np.asarray(table.ids),
            labels=np.asarray(table.labels),
            splits=np.asarray(table.splits),
        )


def embed(config: EmbedConfig) -> EmbeddingTable:
    """Embed every readable image of ``config.data`` with ``config.model``; unreadable ones are
    listed, not fatal."""
    out = Path(config.out)
    if not out.parent.is_dir():
        raise HistoclassError(
            f"--out: folder '{out.parent}' does not exist; create it or write elsewhere"
        )
    run = RunDir(Path(config.model))
    trained = run.is_trained()
    if not trained:
        check_model_name(config.model)
    records, labels, splits = _records(config)
    if trained:  # the images as the run's model sees them
        records = records.framed(ModelInfo.load(run.model_info).framing)
    if not len(records):
        raise HistoclassError(f"'{config.data}' has no images to embed")
    extractor = create_extractor(config.model, config.weights, _image_size(config), "pooled")
    embedded = embed_records(records, extractor, config.views, config.batch_size)
    keep = embedded.readable
    if embedded.errors:
        first = next(iter(embedded.errors.values()))
        console.print(
            f"[yellow]{len(embedded.errors)} unreadable image(s) left out (first: {first})[/]"
        )
    features = embedded.features[keep]
    table = EmbeddingTable(
        features=features[:, 0] if config.views != "all" else features,
        ids=[records.ids[i] for i in keep],
        labels=[labels[i] for i in keep],
        splits=[splits[i] for i in keep],
    )
    _write(table, out)
    console.print(f"{len(keep)} embeddings of size {features.shape[-1]} written to [bold]{out}[/]")
    return table

"""Finding copies: embed (the image and its half-turn), whiten, search neighbours, verify geometrically and by
the pixels, cluster."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

import numpy as np

from histoclass.atomic import write_json
from histoclass.audit.clusters import connected_clusters, exact_duplicates
from histoclass.audit.search import Pairs, neighbour_pairs, whitening
from histoclass.audit.verdicts import PairVerdicts
from histoclass.audit.verify import KeypointCache, verify_pairs
from histoclass.data.inputs import file_identity
from histoclass.data.records import ImageRecords
from histoclass.data.sources import cache_root
from histoclass.embeddings.compute import embed_records
from histoclass.embeddings.extractors import create_extractor
from histoclass.embeddings.store import image_keys
from histoclass.errors import HistoclassError

__all__ = ["AuditSettings", "Copies", "copies_in_reference", "find_copies"]

#: Changes whenever the way copies are found changes, so cached audits made the old way are not reused.
AUDIT_VERSION = 2


@dataclass(frozen=True)
class AuditSettings:
    """How copies are found: which backbone embeds, and how strict the search and the verification are."""

    model: str
    weights: str | None = None
    pretrained: bool = True
    image_size: int = 96
    threshold: float | None = None
    neighbours: int = 10
    min_inliers: int = 8
    batch_size: int = 64


@dataclass
class Copies:
    """A cluster number per record (singletons have their own), byte-identical groups, unreadable records."""

    clusters: np.ndarray
    exact: list[list[int]] = field(default_factory=list)
    unreadable: dict[int, str] = field(default_factory=dict)

    @property
    def sizes(self) -> np.ndarray:
        return np.bincount(self.clusters)

    def members(self, cluster: int) -> np.ndarray:
        return np.flatnonzero(self.clusters == cluster)


def _describe(records: ImageRecords, settings: AuditSettings):
    extractor = create_extractor(
        settings.model, settings.weights, settings.image_size, "multiscale", settings.pretrained
    )
    embedded = embed_records(
        records, extractor, views="half-turn", batch_size=settings.batch_size, what="Embedding"
    )
    return embedded.features[:, 0, :], embedded.errors


def _verdicts(settings: AuditSettings) -> PairVerdicts:
    """The pairs audits verified the same way before."""
    name = f"pairs-v{AUDIT_VERSION}-{settings.min_inliers}.npz"
    return PairVerdicts(cache_root() / "audits" / name)


def _verifier(
    left: KeypointCache, right: KeypointCache, settings: AuditSettings, verdicts: PairVerdicts
):
    """Verification of index pairs (left record, right record), reading verdicts already known."""
    if settings.min_inliers <= 0:
        return None
    # an audit within one set checks it against itself: its files are stat'ed once
    left_keys = image_keys(left.records)
    keys = (left_keys, left_keys if right is left else image_keys(right.records))

    def check(pairs: list[tuple[int, int]]) -> list[bool]:
        return verify_pairs(left, right, pairs, settings.min_inliers)

    return lambda pairs: verdicts.verify(keys, pairs, check)


def _cache_file(records: ImageRecords, settings: AuditSettings):
    """Where the audit of these files (by path, size and time) with these settings is kept."""
    weights = file_identity(settings.weights) if settings.weights else ""
    text = "\n".join([*image_keys(records), repr(asdict(settings)), weights, str(AUDIT_VERSION)])
    return cache_root() / "audits" / f"{hashlib.sha256(text.encode()).hexdigest()[:32]}.json"


def find_copies(records: ImageRecords, settings: AuditSettings) -> Copies:
    """Clusters of copies among ``records``; the same files audited the same way again (each trial of a study,
    a second run on the data) are read back from the cache."""
    if len(records) < 2:
        raise HistoclassError(f"an audit needs at least 2 images; found {len(records)}")
    cached = _cache_file(records, settings)
    if cached.is_file():
        found = json.loads(cached.read_text())
        unreadable = {int(i): reason for i, reason in found["unreadable"].items()}
        return Copies(np.asarray(found["clusters"], dtype=np.int64), found["exact"], unreadable)
    copies = _find_copies(records, settings)
    write_json(
        cached,
        {
            "clusters": copies.clusters.tolist(),
            "exact": copies.exact,
            "unreadable": copies.unreadable,
        },
    )
    return copies


def _find_copies(records: ImageRecords, settings: AuditSettings) -> Copies:
    features, errors = _describe(records, settings)
    readable = np.asarray([i for i in range(len(records)) if i not in errors], dtype=np.int64)
    pairs = Pairs(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
    if len(readable) >= 2:
        vectors = whitening(features[readable])(features[readable])
        found = neighbour_pairs(vectors, None, settings.neighbours, settings.threshold)
        pairs = Pairs(readable[found.left], readable[found.right], found.similarity)
    keypoints, verdicts = KeypointCache(records), _verdicts(settings)
    exact = exact_duplicates(records)
    clusters = connected_clusters(
        len(records), pairs, _verifier(keypoints, keypoints, settings, verdicts), exact
    )
    verdicts.save()
    return Copies(clusters, exact, errors)


def copies_in_reference(
    query: ImageRecords, reference: ImageRecords, settings: AuditSettings
) -> np.ndarray:
    """For each query record, the index of a verified copy of it among ``reference``, or -1."""
    query_features, query_errors = _describe(query, settings)
    reference_features, reference_errors = _describe(reference, settings)
    q_ok = np.asarray([i for i in range(len(query)) if i not in query_errors], dtype=np.int64)
    r_ok = np.asarray(
        [i for i in range(len(reference)) if i not in reference_errors], dtype=np.int64
    )
    match = np.full(len(query), -1, dtype=np.int64)
    if not len(q_ok) or not len(r_ok):
        return match
    whiten = whitening(np.concatenate([query_features[q_ok], reference_features[r_ok]]))
    query_vectors, reference_vectors = (
        whiten(query_features[q_ok]),
        whiten(reference_features[r_ok]),
    )
    found = neighbour_pairs(
        query_vectors, reference_vectors, settings.neighbours, settings.threshold
    )
    candidates = list(zip(q_ok[found.left].tolist(), r_ok[found.right].tolist(), strict=True))
    verdicts = _verdicts(settings)
    verify = _verifier(KeypointCache(query), KeypointCache(reference), settings, verdicts)
    # most similar first; a query once matched is not checked again
    for start in range(0, len(candidates), 256):
        todo = [(q, r) for q, r in candidates[start : start + 256] if match[q] < 0]
        accepted = verify(todo) if verify is not None else [True] * len(todo)
        for (q, r), ok in zip(todo, accepted, strict=True):
            if ok and match[q] < 0:
                match[q] = r
    verdicts.save()
    return match

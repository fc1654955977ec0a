"""Clusters of copies: connected components of the verified pairs, exact byte duplicates included."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable

import numpy as np

from histoclass.audit.search import Pairs
from histoclass.data.records import ImageRecords

__all__ = ["UnionFind", "connected_clusters", "exact_duplicates"]


class UnionFind:
    """Disjoint sets over ``n`` items (path halving, union by size)."""

    def __init__(self, n: int) -> None:
        self.parent = np.arange(n)
        self.size = np.ones(n, dtype=np.int64)

    def find(self, i: int) -> int:
        parent = self.parent
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = int(parent[i])
        return int(i)

    def union(self, a: int, b: int) -> None:
        a, b = self.find(a), self.find(b)
        if a != b:
            if self.size[a] < self.size[b]:
                a, b = b, a
            self.parent[b] = a
            self.size[a] += self.size[b]

    def labels(self) -> np.ndarray:
        """Cluster numbers 0, 1, ... by decreasing size (ties: by first member)."""
        roots = np.array([self.find(i) for i in range(len(self.parent))])
        unique, first, inverse, counts = np.unique(
            roots, return_index=True, return_inverse=True, return_counts=True
        )
        order = np.lexsort((first, -counts))
        rank = np.empty(len(unique), dtype=np.int64)
        rank[order] = np.arange(len(unique))
        return rank[inverse]


def exact_duplicates(records: ImageRecords) -> list[list[int]]:
    """Groups of records whose files (or arrays) are byte-for-byte identical."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i in range(len(records)):
        if records.paths is not None:
            try:
                data = records.paths[i].read_bytes()
            except OSError:
                continue
        else:
            data = np.ascontiguousarray(records.array[i]).tobytes()
        groups[hashlib.sha1(data).hexdigest()].append(i)
    return [members for members in groups.values() if len(members) > 1]


def connected_clusters(
    n: int,
    pairs: Pairs,
    verify: Callable[[list[tuple[int, int]]], list[bool]] | None,
    joined: list[list[int]] = (),
    chunk: int = 256,
) -> np.ndarray:
    """Cluster numbers of ``n`` items joined by ``joined`` groups and by the ``pairs`` that
    ``verify`` accepts.

    Pairs are taken most similar first, a chunk at a time; a pair whose two items are already in one cluster
    is not verified at all: it could not change the components, so most true copies cost nothing.
    """
    sets = UnionFind(n)
    for members in joined:
        for other in members[1:]:
            sets.union(members[0], other)
    candidates = list(zip(pairs.left.tolist(), pairs.right.tolist(), strict=True))
    for start in range(0, len(candidates), chunk):
        todo = [
            (a, b) for a, b in candidates[start : start + chunk] if sets.find(a) != sets.find(b)
        ]
        accepted = verify(todo) if verify is not None else [True] * len(todo)
        for (a, b), ok in zip(todo, accepted, strict=True):
            if ok:
                sets.union(a, b)
    return sets.labels()

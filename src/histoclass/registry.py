"""Registries filled by decorators, so choosing a head, backbone, exporter, data source or model backend is a
lookup, never an if-chain over names (timm's pattern)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

__all__ = ["MatchRegistry", "Registry"]

T = TypeVar("T")
V = TypeVar("V")


class Registry(Generic[T]):
    """Items by name; ``@registry.register("name")`` adds one."""

    def __init__(self) -> None:
        self.items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorate(item: T) -> T:
            self.items[name] = item
            return item

        return decorate

    def __contains__(self, name: object) -> bool:
        return name in self.items

    def __getitem__(self, name: str) -> T:
        return self.items[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.items)


class MatchRegistry(Generic[V, T]):
    """Items tried in registration order; the first whose predicate accepts the value wins."""

    def __init__(self) -> None:
        self.items: list[tuple[Callable[[V], bool], T]] = []

    def register(self, matches: Callable[[V], bool]) -> Callable[[T], T]:
        def decorate(item: T) -> T:
            self.items.append((matches, item))
            return item

        return decorate

    def first(self, value: V) -> T | None:
        return next((item for matches, item in self.items if matches(value)), None)

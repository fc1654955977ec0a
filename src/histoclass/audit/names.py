"""Whether image names carry a slide id: tiles named ``<slide>_<x>_<y>.png`` (or QuPath's ``<slide>
[x=..,y=..,w=..,h=..].png``) can be grouped by name, which is surer than any audit of their pixels."""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["NamedSlides", "named_slides", "slide_hint"]

#: A name, then two or more numbers (tile coordinates, optionally x/y-prefixed) just before the extension.
NUMBERED = r"([^/]*[^\W\d_][^/]*?)(?:[_ -]+[xXyY]?\d+){2,}\.\w+$"
#: QuPath's tile exports: ``name [x=..,y=..,w=..,h=..].ext``.
QUPATH = r"([^/]*[^\W\d_][^/]*?) ?\[x=\d+,y=\d+[^\]/]*\]\.\w+$"


@dataclass(frozen=True)
class NamedSlides:
    """The ``--group-by`` pattern that reads the slide id from every image's name, and what it finds."""

    pattern: str
    slides: int
    example: str


def named_slides(ids: list[str]) -> NamedSlides | None:
    """The pattern, when every name carries an id before tile coordinates and ids repeat (several
    tiles a slide)."""
    for pattern in (NUMBERED, QUPATH):
        regex = re.compile(pattern)
        found = [regex.search(image_id) for image_id in ids]
        if ids and all(found):
            slides = {match.group(1) for match in found}
            if 2 <= len(slides) <= len(ids) / 3:
                return NamedSlides(pattern, len(slides), found[0].group(1))
    return None


def slide_hint(ids: list[str]) -> str | None:
    """One line for the audit's output when the names carry a slide id, else None."""
    named = named_slides(ids)
    if named is None:
        return None
    return (
        f"the file names carry a slide id before tile coordinates ({named.slides} slides, e.g. "
        f"'{named.example}'): "
        f"tiles of one slide stay together with --group-by '{named.pattern}'"
    )

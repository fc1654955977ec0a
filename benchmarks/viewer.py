"""Deep Zoom tiles per second from `histoclass serve --slides` (one worker), against OpenSlide's own
DeepZoomGenerator rendering the same tiles in this process, measured in the same run.

    python -m benchmarks.viewer RUN [--slide ../shared/data/slides/small_HE.svs] [--clients 4] [--rounds 3]

Every tile of every Deep Zoom level is requested once a round (a viewer's cold cache: a pan and zoom
through the whole slide), in a shuffled order, by ``--clients`` threads on kept-alive connections.
The reference renders the same tiles with ``openslide.deepzoom.DeepZoomGenerator`` (same tile size
and overlap, JPEG quality 80), without HTTP: the ceiling of the slide library itself. The median
round is reported.
"""

from __future__ import annotations

import argparse
import http.client
import io
import random
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote, urlsplit

from benchmarks.serve import start_server

from histoclass.machine import cpu_name
from histoclass.slides.deepzoom import DeepZoom
from histoclass.slides.readers import open_slide

SLIDE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "slides" / "small_HE.svs"


def every_tile(deepzoom: DeepZoom) -> list[tuple[int, int, int]]:
    """(level, column, row) of every tile of every level."""
    tiles = []
    for level in range(deepzoom.top + 1):
        width, height = deepzoom.level_size(level)
        columns, rows = -(-width // deepzoom.tile), -(-height // deepzoom.tile)
        tiles += [(level, column, row) for column in range(columns) for row in range(rows)]
    return tiles


def served_round(url: str, name: str, tiles: list[tuple[int, int, int]], clients: int) -> float:
    """Tiles per second over HTTP, ``clients`` connections at once."""
    address = urlsplit(url)

    def client(index: int) -> None:
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=120)
        for level, column, row in tiles[index::clients]:
            connection.request(
                "GET", f"/api/slides/{quote(name)}_files/{level}/{column}_{row}.jpeg"
            )
            reply = connection.getresponse()
            assert reply.status == 200, reply.status
            reply.read()
        connection.close()

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    return len(tiles) / (time.perf_counter() - started)


def openslide_round(path: Path, tiles: list[tuple[int, int, int]]) -> float:
    """Tiles per second of OpenSlide's DeepZoomGenerator, in this process, one thread."""
    import openslide
    from openslide.deepzoom import DeepZoomGenerator

    generator = DeepZoomGenerator(openslide.OpenSlide(str(path)), tile_size=254, overlap=1)
    started = time.perf_counter()
    for level, column, row in tiles:
        generator.get_tile(level, (column, row)).save(io.BytesIO(), "JPEG", quality=80)
    return len(tiles) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", help="run directory")
    parser.add_argument("--slide", type=Path, default=SLIDE)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    slide = open_slide(args.slide)
    tiles = every_tile(DeepZoom(slide))
    slide.close()
    random.Random(0).shuffle(tiles)
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / args.slide.name).symlink_to(args.slide.resolve())
        process, url = start_server(
            args.model, "--slides", folder, "--slide-maps", str(Path(folder) / "maps")
        )
        try:
            served, reference = [], []
            for _ in range(args.rounds):
                served.append(served_round(url, args.slide.name, tiles, args.clients))
                reference.append(openslide_round(args.slide, tiles))
        finally:
            process.terminate()
            process.wait(timeout=60)
    ours, theirs = sorted(served)[len(served) // 2], sorted(reference)[len(reference) // 2]
    print(
        f"{args.slide.name}: {len(tiles)} Deep Zoom tiles a round, median of {args.rounds}; CPU: {cpu_name()}"
    )
    print("| path | tiles/s | vs OpenSlide DeepZoomGenerator |\n|---|---|---|")
    served_by = f"histoclass serve --slides, HTTP, one worker, {args.clients} clients"
    print(f"| {served_by} | {ours:.0f} | {ours / theirs:.2f}x |")
    print(f"| OpenSlide DeepZoomGenerator, in process, one thread | {theirs:.0f} | 1.00x |")


if __name__ == "__main__":
    main()

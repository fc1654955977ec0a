"""The slide viewer (``serve --slides``) on a real Aperio H&E slide: in real Chromium, the map computed on
demand lies over the Deep Zoom tiles where ``histoclass slide`` puts each class, hovering shows a tile's
probabilities, a drawn region's make-up is the tiles' own; and the folder's limits hold."""

from __future__ import annotations

import csv
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from benchmarks.serve import free_port, start_server

from conftest import SLIDE, run_cli
from histoclass.slides.maps import class_colours

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]


@pytest.fixture(scope="module")
def reference(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """``histoclass slide --shift``'s tiles of the slide: what the viewer's map must show."""
    out = tmp_path_factory.mktemp("slide-reference")
    result = run_cli(
        "slide", str(trained_run), str(SLIDE), "--out", str(out), "--no-tta", "--shift"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    with open(out / SLIDE.stem / "tiles.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    # H&E tissue under a blood-cell model: nearly every tile is flagged as unlike its training images.
    assert np.mean([row["unlike_training"] == "1" for row in rows]) > 0.9
    return rows


@pytest.fixture(scope="module")
def viewer(
    trained_run: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path]]:
    """A server over a folder with the slide (linked, as a lab's folder often is), a note and a damaged .svs;
    its maps folder starts empty."""
    root = tmp_path_factory.mktemp("viewer")
    folder = root / "slides"
    (folder / "case 1").mkdir(parents=True)
    (folder / "case 1" / SLIDE.name).symlink_to(SLIDE)
    (folder / "notes.txt").write_text("not a slide\n")
    (folder / "broken.svs").write_bytes(b"II*\x00" + b"\x00" * 500)
    options = ["--no-tta", "--slides", str(folder), "--slide-maps", str(root / "maps")]
    process, url = start_server(trained_run, *options)
    yield url, root
    process.terminate()
    process.wait(timeout=30)


def test_the_viewer_shows_the_map_where_the_slide_job_puts_it(
    viewer, reference: list[dict], tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    url, _ = viewer
    name = f"case 1/{SLIDE.name}"
    labels = [key.removeprefix("prob_") for key in reference[0] if key.startswith("prob_")]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS
        )
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        page.goto(f"{url}/slides?slide={name}")
        # mapped in the background, then shown
        page.wait_for_selector("body[data-map=shown]", timeout=180_000)
        assert "tissue tiles mapped" in page.inner_text("#map-status")
        # The map's tiles are the slide job's: same boxes, same class.
        shown = page.evaluate(
            "histoclassViewer.state.map.tiles.map(t => [t[0], t[1], t[5].indexOf(Math.max(...t[5]))])"
        )
        expected = {(int(row["x"]), int(row["y"])): labels.index(row["label"]) for row in reference}
        assert {(x, y): k for x, y, k in shown} == expected
        # Zoomed to full resolution: tiles come from the top Deep Zoom level.
        top = int(np.ceil(np.log2(max(2220, 2967))))
        with page.expect_request(lambda request: f"_files/{top}/" in request.url, timeout=60_000):
            page.evaluate("""() => { const v = histoclassViewer.viewer;
                v.viewport.zoomTo(v.world.getItemAt(0).imageToViewportZoom(1), null, true); }""")
        page.wait_for_function(
            "histoclassViewer.viewer.world.getItemAt(0).getFullyLoaded()", timeout=60_000
        )
        # At a tile's centre, under the pointer: its class, probabilities and the overlay's colour for it.
        colours = class_colours(labels)
        for row in reference[:: max(1, len(reference) // 5)][:5]:
            x, y = int(row["x"]) + int(row["width"]) / 2, int(row["y"]) + int(row["height"]) / 2
            page.evaluate(
                """([x, y]) => { const v = histoclassViewer.viewer;
                v.viewport.panTo(v.world.getItemAt(0).imageToViewportCoordinates(x, y), true); }""",
                [x, y],
            )
            screen = page.evaluate(
                """([x, y]) => { const v = histoclassViewer.viewer;
                const p = v.viewport.imageToViewerElementCoordinates(new OpenSeadragon.Point(x, y));
                const box = v.element.getBoundingClientRect(); return [box.left + p.x, box.top + p.y]; }""",
                [x, y],
            )
            page.mouse.move(*screen)
            page.wait_for_function(
                f"document.querySelector('#hover').dataset.tile === '{row['x']},{row['y']}'"
            )
            assert page.get_attribute("#hover", "data-label") == row["label"]
            # the page's engine and the slide job's agree to rounding (not always the third decimal)
            shown = dict(
                line.split("\t") for line in page.inner_text("#hover").splitlines() if "\t" in line
            )
            assert float(shown[row["label"]]) == pytest.approx(
                float(row["prob_" + row["label"]]), abs=2e-3
            )
            assert f"shift score {float(row['shift_score']):.3f}" in page.inner_text("#hover")
            pixel = page.evaluate(
                """([x, y]) => { const s = histoclassViewer.state, g = s.grid;
                const cx = Math.floor((x - g.x0) / s.map.step), cy = Math.floor((y - g.y0) / s.map.step);
                return Array.from(s.canvas.getContext('2d').getImageData(cx, cy, 1, 1).data); }""",
                [x, y],
            )
            assert tuple(pixel[:3]) == colours[labels.index(row["label"])] and pixel[3] == 255
        # A rectangle drawn with the mouse: its make-up is the count of the slide job's tiles inside it.
        page.evaluate("histoclassViewer.viewer.viewport.goHome(true)")
        page.click("#draw-rect")
        box = page.evaluate(
            "(() => { const b = histoclassViewer.viewer.element.getBoundingClientRect(); "
            "return [b.left, b.top, b.width, b.height]; })()"
        )
        start = (box[0] + box[2] * 0.3, box[1] + box[3] * 0.25)
        end = (box[0] + box[2] * 0.7, box[1] + box[3] * 0.7)
        page.mouse.move(*start)
        page.mouse.down()
        page.mouse.move(*end, steps=8)
        page.mouse.up()
        page.wait_for_selector("#region[data-tiles]")
        corners = page.evaluate(
            """(points) => points.map(([x, y]) => {
            const v = histoclassViewer.viewer, b = v.element.getBoundingClientRect();
            const point = new OpenSeadragon.Point(x - b.left, y - b.top);
            const p = v.viewport.viewerElementToImageCoordinates(point);
            return [p.x, p.y]; })""",
            [list(start), list(end)],
        )
        (x0, y0), (x1, y1) = corners
        inside = [
            row
            for row in reference
            if x0 <= int(row["x"]) + int(row["width"]) / 2 <= x1
            and y0 <= int(row["y"]) + int(row["height"]) / 2 <= y1
        ]
        assert inside, "the drawn rectangle should hold tissue tiles"
        assert int(page.get_attribute("#region", "data-tiles")) == len(inside)
        for label in labels:
            count = sum(row["label"] == label for row in inside)
            assert page.inner_text(f"#region tr[data-class='{label}'] td:nth-child(2)") == str(
                count
            )
        page.screenshot(path=str(tmp_path / "viewer.png"))
        browser.close()
    assert (tmp_path / "viewer.png").stat().st_size > 50_000


def test_regions_export_as_geojson_and_the_folder_limits_hold(viewer) -> None:
    url, _ = viewer
    base = f"{url}/api/slides"
    assert [s["name"] for s in httpx.get(base).json()["slides"]] == [
        "broken.svs",
        f"case 1/{SLIDE.name}",
    ]
    # the map the browser test asked for, or this test's own when it runs alone (one that exists is kept)
    assert httpx.post(f"{base}/case 1/{SLIDE.name}/map").status_code == 200
    for _ in range(600):
        status = httpx.get(f"{base}/case 1/{SLIDE.name}/map").json()["status"]
        if status != "running":
            break
        time.sleep(0.5)
    assert status == "done", status
    polygon = [[0, 0], [2220, 0], [2220, 1500], [0, 1500]]
    collection = httpx.post(
        f"{base}/case 1/{SLIDE.name}/region?format=geojson", json={"polygon": polygon}
    ).json()
    region, *tiles = collection["features"]
    assert (
        region["properties"]["objectType"] == "annotation"
        and len(region["geometry"]["coordinates"][0]) == 5
    )
    assert tiles and all(t["properties"]["classification"]["name"] for t in tiles)
    refusals = {
        "outside": httpx.get(f"{base}/..%2F..%2F..%2Fetc%2Fpasswd.dzi"),
        "not a slide": httpx.get(f"{base}/notes.txt.dzi"),
        "damaged": httpx.get(f"{base}/broken.svs.dzi"),
        "no such tile": httpx.get(f"{base}/case 1/{SLIDE.name}_files/3/99_99.jpeg"),
        "two points": httpx.post(
            f"{base}/case 1/{SLIDE.name}/region", json={"polygon": [[0, 0], [1, 1]]}
        ),
    }
    for case, reply in refusals.items():
        assert reply.status_code in (404, 422), (case, reply.status_code)
        detail = reply.json()["detail"]
        assert isinstance(detail, str) and "\n" not in detail and "Traceback" not in detail, (
            case,
            detail,
        )
    assert (
        refusals["damaged"].status_code == 422
        and "broken.svs" in refusals["damaged"].json()["detail"]
    )
    assert "no slide" in refusals["outside"].json()["detail"]


def test_serving_slides_without_a_slide_reader_is_one_line(
    trained_run: Path, tmp_path: Path
) -> None:
    """As where neither OpenSlide nor tiffslide is installed: one line naming the extra, exit 2."""
    block = (
        "import sys\nsys.modules['openslide'] = None\nsys.modules['tiffslide'] = None\n"
        "from histoclass.cli import main\nsys.argv[0] = 'histoclass'\nmain()\n"
    )
    port = str(free_port())
    command = [
        sys.executable,
        "-c",
        block,
        "serve",
        str(trained_run),
        "--slides",
        str(tmp_path),
        "--port",
        port,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "histoclass[slides]" in result.stderr, result.stderr[-2000:]
    assert len(result.stderr.strip().splitlines()) == 1
    workers = run_cli(
        "serve",
        str(trained_run),
        "--slides",
        str(tmp_path),
        "--port",
        str(free_port()),
        "--workers",
        "2",
    )
    assert (
        workers.returncode == 2
        and "--workers 1" in workers.stderr
        and len(workers.stderr.strip().splitlines()) == 1
    )

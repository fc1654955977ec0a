"""The web app and REST API through a real uvicorn server on 127.0.0.1, and the page in real Chromium."""

from __future__ import annotations

import csv
import io
import os
import socket
import struct
import subprocess
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest
from benchmarks.serve import start_server

from conftest import BLOOD_TEST, CLASSES, run_cli

TEST_IMAGES = sorted(BLOOD_TEST.rglob("*.jpeg"))


@pytest.fixture(scope="module")
def server(trained_run: Path) -> Iterator[tuple[subprocess.Popen, str]]:
    process, url = start_server(trained_run, "--max-file-mb", "1")
    yield process, url
    process.terminate()
    process.wait(timeout=30)


def upload(
    url: str, files: list[tuple[str, bytes]], endpoint: str = "predict", **kwargs
) -> httpx.Response:
    field = "files" if endpoint == "predict" else "file"
    payload = [(field, (name, data, "application/octet-stream")) for name, data in files]
    return httpx.post(f"{url}/api/{endpoint}", files=payload, timeout=120, **kwargs)


def test_api_labels_agree_with_histoclass_predict(
    server, trained_run: Path, tmp_path: Path
) -> None:
    _, url = server
    chosen = TEST_IMAGES[::4]
    response = upload(url, [(p.name, p.read_bytes()) for p in chosen])
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["filename"] for r in results] == [p.name for p in chosen]
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-6 for r in results)
    folder = tmp_path / "images"
    folder.mkdir()
    for path in chosen:
        (folder / path.name).symlink_to(path)
    out = tmp_path / "p.csv"
    assert run_cli("predict", str(trained_run), str(folder), "--out", str(out)).returncode == 0
    with open(out, newline="") as handle:
        expected = {row["id"]: row["label"] for row in csv.DictReader(handle)}
    assert {r["filename"]: r["label"] for r in results} == expected


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header(width: int, height: int) -> bytes:
    """A small PNG file whose header claims ``width`` x ``height``: a decompression bomb."""
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    data = png_chunk(b"IDAT", zlib.compress(b"\0" * 4096))
    return b"\x89PNG\r\n\x1a\n" + header + data + png_chunk(b"IEND", b"")


def test_garbage_uploads_get_clear_4xx_and_the_server_survives(server) -> None:
    process, url = server
    real = TEST_IMAGES[0].read_bytes()
    cases = {
        "text renamed .png": ([("notes.png", b"just some text, not pixels\n")], 415),
        "zero bytes": ([("empty.jpeg", b"")], 422),
        "30000x30000 header": ([("bomb.png", png_header(30000, 30000))], 413),
        "truncated jpeg": ([("cut.jpeg", real[: len(real) // 2])], 422),
        "over the size limit": ([("big.png", b"\x89PNG" + b"\0" * 1_200_000)], 413),
        "200 files at once": ([(f"{i}.jpeg", real) for i in range(200)], 413),
    }
    for name, (files, status) in cases.items():
        response = upload(url, files)
        assert response.status_code == status, name
        assert response.json()["detail"], name
    assert upload(url, [("cut.jpeg", real[:500])], endpoint="explain").status_code == 422
    assert process.poll() is None
    assert upload(url, [("ok.jpeg", real)]).status_code == 200


def test_explain_returns_a_heatmap_png(server) -> None:
    _, url = server
    response = upload(url, [(TEST_IMAGES[3].name, TEST_IMAGES[3].read_bytes())], endpoint="explain")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    from PIL import Image

    image = Image.open(io.BytesIO(response.content))
    assert image.size == (96, 96) and response.headers["x-predicted-label"] in CLASSES


def test_200_concurrent_requests_from_20_clients(server) -> None:
    process, url = server
    server_process = psutil.Process(process.pid)
    payloads = [(p.name, p.read_bytes()) for p in TEST_IMAGES[:20]]
    upload(url, payloads[:2])
    before = server_process.memory_info().rss

    def client(index: int) -> list[int]:
        with httpx.Client(timeout=120) as session:
            return [
                session.post(
                    f"{url}/api/predict", files=[("files", payloads[(index + k) % 20])]
                ).status_code
                for k in range(10)
            ]

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=20) as pool:
        statuses = [s for batch in pool.map(client, range(20)) for s in batch]
    elapsed = time.perf_counter() - started
    after = server_process.memory_info().rss
    print(
        f"\n200 requests / 20 clients: {elapsed:.1f} s, {200 / elapsed:.0f} req/s; "
        f"server RSS {before / 2**20:.0f} -> {after / 2**20:.0f} MiB"
    )
    assert statuses == [200] * 200
    assert after - before < 200 * 2**20


#: A key that is not ASCII: what a header carries as UTF-8 bytes.
KEY = "clé-ünï"


@pytest.fixture(scope="module")
def keyed_server(
    trained_run: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[subprocess.Popen, str, Path]]:
    """A server behind an API key that takes at most 4 files of 20 MB a request, waits 2 s for a
    body's next part, and keeps what it accepts (in the folder it yields)."""
    kept = tmp_path_factory.mktemp("uploads") / "kept"
    options = ["--api-key", KEY, "--max-file-mb", "20", "--max-files", "4", "--body-timeout", "2"]
    process, url = start_server(trained_run, *options, "--keep-uploads", str(kept))
    yield process, url, kept
    process.terminate()
    process.wait(timeout=30)


def keyed(**headers: str) -> dict[str, dict]:
    """``upload``'s keyword for a request that carries the key (and ``headers``)."""
    return {"headers": {"X-API-Key": KEY.encode(), **headers}}


def test_api_key_guards_the_api_but_not_health_or_page(keyed_server) -> None:
    _, url, _ = keyed_server
    image = [(TEST_IMAGES[0].name, TEST_IMAGES[0].read_bytes())]
    assert upload(url, image).status_code == 401
    assert upload(url, image, **keyed()).status_code == 200
    assert upload(url, image, headers={"X-API-Key": "cle-uni"}).status_code == 401
    assert httpx.get(f"{url}/api/model").status_code == 401
    assert (
        httpx.get(f"{url}/").status_code == 200
        and httpx.get(f"{url}/static/app.js").status_code == 200
    )
    # The API's description and docs are behind the key too (issue 19); the docs page takes it
    # as a parameter.
    assert (
        httpx.get(f"{url}/openapi.json").status_code == 401
        and httpx.get(f"{url}/docs").status_code == 401
    )
    assert "/api/predict" in httpx.get(f"{url}/openapi.json", **keyed()).json()["paths"]
    docs = httpx.get(f"{url}/docs", params={"api_key": KEY})
    assert docs.status_code == 200 and "/docs-assets/swagger-ui-bundle.js" in docs.text
    assets = httpx.get(f"{url}/docs-assets/swagger-ui-bundle.js", params={"api_key": KEY})
    assert assets.status_code == 200


def test_page_in_chromium_uploads_two_images_and_shows_heatmaps(server, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    _, url = server
    chosen = [TEST_IMAGES[0], TEST_IMAGES[-1]]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
            ],
        )
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(url)
        page.wait_for_selector("#card dd")
        page.set_input_files("#file-input", [str(p) for p in chosen])
        page.wait_for_function(
            "document.querySelectorAll('.result img.heatmap.ready').length === 2", timeout=60_000
        )
        labels = page.eval_on_selector_all(".result", "cards => cards.map(c => c.dataset.label)")
        assert len(labels) == 2 and all(label in CLASSES for label in labels)
        assert page.locator(".result .bar").count() == 2 * len(CLASSES)
        assert page.is_visible(".result img.heatmap")
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        page.uncheck("#show-heatmap")
        assert not page.is_visible(".result img.heatmap")
        browser.close()
    assert (tmp_path / "page.png").stat().st_size > 20_000


def test_serving_an_onnx_export_predicts_and_declines_heatmaps(trained_run: Path) -> None:
    from histoclass.config import ExportConfig
    from histoclass.export.job import export

    model = export(ExportConfig(run=str(trained_run), format="onnx"))
    process, url = start_server(model)
    try:
        card = httpx.get(f"{url}/api/model").json()
        assert card["format"] == "onnx" and card["explain"] is False and card["labels"] == CLASSES
        image = [(TEST_IMAGES[5].name, TEST_IMAGES[5].read_bytes())]
        assert upload(url, image).json()["results"][0]["label"] in CLASSES
        refused = upload(url, image, endpoint="explain")
        assert refused.status_code == 409 and "run directory" in refused.json()["detail"]
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_answers_carry_prediction_sets_and_the_card_its_calibration(server) -> None:
    _, url = server
    card = httpx.get(f"{url}/api/model").json()
    assert card["set_coverage"] == 0.9 and card["temperature"] > 0
    results = upload(url, [(p.name, p.read_bytes()) for p in TEST_IMAGES[:12]]).json()["results"]
    for result in results:
        assert set(result["prediction_set"]) <= set(CLASSES) and result["set_size"] == len(
            result["prediction_set"]
        )
        assert result["uncertain"] == (result["set_size"] != 1)


def test_size_refusal_names_the_real_size(server) -> None:
    _, url = server
    refused = upload(url, [("big.png", b"\x89PNG" + b"\0" * 2_500_000)])
    assert refused.status_code == 413 and "2.5 MB" in refused.json()["detail"], refused.json()


def rss_mib(process: subprocess.Popen) -> float:
    return psutil.Process(process.pid).memory_info().rss / 2**20


def test_the_key_and_the_body_limit_are_checked_before_the_body_is_read(keyed_server) -> None:
    process, url, _ = keyed_server
    upload(url, [(TEST_IMAGES[0].name, TEST_IMAGES[0].read_bytes())], **keyed())
    before = rss_mib(process)
    blob = b"\xff\xd8\xff" + os.urandom(15_000_000)
    for _ in range(10):
        refused = upload(url, [("big.jpeg", blob)])
        assert refused.status_code == 401
    wrong = upload(url, [("big.jpeg", blob)], headers={"X-API-Key": (KEY + "-not").encode()})
    assert wrong.status_code == 401
    over = upload(url, [(f"{i}.jpeg", blob) for i in range(6)], **keyed())
    assert over.status_code == 413, over.text
    assert "the limit is 80 MB" in over.json()["detail"]  # --max-files x --max-file-mb
    # none of the 240 MB was buffered
    assert rss_mib(process) - before < 60, (before, rss_mib(process))


def test_kept_uploads_get_safe_bounded_names_and_refused_requests_keep_nothing(
    keyed_server,
) -> None:
    _, url, kept = keyed_server
    earlier = set(kept.iterdir()) if kept.is_dir() else set()
    real = TEST_IMAGES[0].read_bytes()
    long_name = "../" + "x" * 300 + ".jpeg"
    response = upload(url, [(long_name, real)], **keyed())
    assert response.status_code == 200 and response.json()["results"][0]["filename"] == long_name
    names = [p.name for p in set(kept.iterdir()) - earlier]
    assert (
        len(names) == 1
        and len(names[0]) <= 120
        and names[0].endswith(".jpeg")
        and "/" not in names[0]
    )
    refused = upload(url, [("good.jpeg", real), ("bad.jpeg", real[:100])], **keyed())
    assert refused.status_code == 422
    assert len(set(kept.iterdir()) - earlier) == 1  # the good file of a refused request is not kept
    assert httpx.get(f"{url}/api/health").status_code == 200  # the connection survived


def test_a_taken_port_is_one_line_and_nothing_claims_to_serve(trained_run: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("serve", str(trained_run), "--port", str(port))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "in use" in result.stderr and "Serving" not in result.stderr + result.stdout
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_memory_stays_flat_over_5000_requests(trained_run: Path) -> None:
    """5,000 predict and explain requests (one in 25: Grad-CAM costs ten predictions) from 20
    clients: RSS after the first 500 grows by under 10%."""
    # one view: memory, not the 8 views, is under test
    process, url = start_server(trained_run, "--no-tta")
    payloads = [(p.name, p.read_bytes()) for p in TEST_IMAGES[:20]]

    def client(index: int, count: int) -> list[int]:
        with httpx.Client(timeout=120) as session:
            statuses = []
            for k in range(count):
                name, data = payloads[(index + k) % 20]
                endpoint, field = ("explain", "file") if k % 25 == 0 else ("predict", "files")
                reply = session.post(f"{url}/api/{endpoint}", files=[(field, (name, data))])
                statuses.append(reply.status_code)
            return statuses

    try:
        with ThreadPoolExecutor(max_workers=20) as pool:
            warm = [s for batch in pool.map(lambda i: client(i, 25), range(20)) for s in batch]
            settled = rss_mib(process)
            rest = [s for batch in pool.map(lambda i: client(i, 225), range(20)) for s in batch]
        final = rss_mib(process)
        print(f"\nRSS after 500 requests {settled:.0f} MiB, after 5,000 {final:.0f} MiB")
        assert warm + rest == [200] * 5000
        assert final < 1.10 * settled, (settled, final)
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_docs_never_reflect_the_key_as_markup_and_answers_carry_the_shift_score(server) -> None:
    _, url = server
    attack = "</script><script>alert(1)</script>"
    docs = httpx.get(f"{url}/docs", params={"api_key": attack})
    assert docs.status_code == 200 and "<script>alert(1)" not in docs.text
    result = upload(url, [(TEST_IMAGES[0].name, TEST_IMAGES[0].read_bytes())]).json()["results"][0]
    assert result["shift_score"] >= 0 and isinstance(result["unlike_training"], bool)


def test_a_client_that_sends_no_body_is_dropped(keyed_server) -> None:
    _, url, _ = keyed_server
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=15) as client:
        head = (
            b"POST /api/predict HTTP/1.1\r\nHost: t\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 5000\r\n"
        )
        client.sendall(head + b"X-API-Key: " + KEY.encode() + b"\r\n\r\n")
        started = time.monotonic()
        answer = client.recv(4096)
    assert answer.startswith(b"HTTP/1.1 408") and time.monotonic() - started < 10, answer[:200]


def test_many_large_legal_images_are_decoded_within_a_budget_and_the_memory_comes_back(
    trained_run: Path, tmp_path: Path
) -> None:
    """8 requests of three 5000x5000 PNGs at once: every one answered, the decodes kept to the
    budget (two such images at a time), and the process back within 10% of where it started once
    they are done."""
    from PIL import Image

    cell = Image.open(TEST_IMAGES[0]).convert("RGB")
    big = Image.new("RGB", (5000, 5000))
    for x in range(0, 5000, cell.width):
        for y in range(0, 5000, cell.height):
            big.paste(cell, (x, y))
    buffer = io.BytesIO()
    big.save(buffer, "PNG", compress_level=1)
    png = buffer.getvalue()
    process, url = start_server(
        trained_run, "--no-tta", "--max-megapixels", "25", "--max-file-mb", "30"
    )
    try:
        assert upload(url, [("warm.png", png)]).status_code == 200
        start = peak = rss_mib(process)
        with ThreadPoolExecutor(max_workers=8) as pool:
            replies = [
                pool.submit(upload, url, [(f"{i}-{k}.png", png) for k in range(3)])
                for i in range(8)
            ]
            while not all(reply.done() for reply in replies):
                peak = max(peak, rss_mib(process))
                time.sleep(0.05)
        assert [reply.result().status_code for reply in replies] == [200] * 8
        time.sleep(1)
        after = rss_mib(process)
        print(f"\nRSS idle {start:.0f} MiB, peak {peak:.0f} MiB, after {after:.0f} MiB")
        assert peak - start < 600, (start, peak)  # 24 such decodes at once: 1.8 GB of RGB alone
        assert after < 1.10 * start, (start, after)
        over = upload(url, [(f"{k}.png", png) for k in range(13)])  # 325 MP: over the request's 300
        assert over.status_code == 413 and "megapixels in one request" in over.json()["detail"], (
            over.text
        )
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_every_refusal_has_the_documented_shape(server) -> None:
    """Raw bodies, a missing field, unknown paths and 5,000-character names: ``{"detail", "errors"}`` each."""
    _, url = server
    image = TEST_IMAGES[0].read_bytes()
    refusals = [
        httpx.post(f"{url}/api/predict", content=image, headers={"Content-Type": "image/jpeg"}),
        httpx.post(f"{url}/api/predict", content=b"files=x"),
        httpx.post(f"{url}/api/predict", files=[("other", ("a.jpeg", image))]),
        httpx.post(
            f"{url}/api/predict",
            content=b"--b\r\nbroken",
            headers={"Content-Type": "multipart/form-data"},
        ),
        httpx.get(f"{url}/api/nothing-here"),
        httpx.get(f"{url}/api/predict"),
    ]
    for reply in refusals:
        body = reply.json()
        assert reply.status_code in (404, 405, 415, 422), (reply.status_code, body)
        assert isinstance(body["detail"], str) and "\n" not in body["detail"], body
        assert body["errors"] and {"filename", "status", "error"} <= set(body["errors"][0]), body
    assert refusals[0].status_code == 415 and "multipart/form-data" in refusals[0].json()["detail"]
    long_name = "x" * 5000 + ".jpeg"
    answer = upload(url, [(long_name, image)])
    assert answer.status_code == 200 and answer.json()["results"][0]["filename"] == long_name
    damaged = upload(url, [(long_name, image[:50])])
    assert damaged.status_code == 422 and damaged.json()["errors"][0]["filename"] == long_name


def test_a_file_past_its_limit_is_counted_not_kept_as_the_body_streams_in() -> None:
    """A 45 MB file against a 20 MB limit is read in 64 kB chunks holding at most its limit, in memory (no
    file, no spool), and named with its real size; the file within the limit beside it arrives whole."""
    import asyncio
    import tracemalloc

    from histoclass.serving.multipart import read_uploads
    from histoclass.serving.uploads import UploadRejected, checked_pixels

    small = TEST_IMAGES[0].read_bytes()
    head = b'--b\r\nContent-Disposition: form-data; name="files"; filename="%s"\r\n\r\n'
    body = (
        head % b"big.png"
        + b"\0" * 45_000_000
        + b"\r\n"
        + head % b"cell.jpeg"
        + small
        + b"\r\n--b--\r\n"
    )

    async def chunks():
        for start in range(0, len(body), 65536):
            yield body[start : start + 65536]

    tracemalloc.start()
    uploads = asyncio.run(
        read_uploads("multipart/form-data; boundary=b", chunks(), "files", 20_000_000, 64)
    )
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 22e6, peak  # the 45 MB never held
    big, cell = uploads
    assert big.data is None and big.size == 45_000_000 and bytes(cell.data) == small
    with pytest.raises(UploadRejected, match="file is 45.0 MB; the limit is 20 MB"):
        checked_pixels(big.filename, big.data, big.size, 20_000_000, 50_000_000)

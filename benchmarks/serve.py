"""Requests per second of `histoclass serve` on each engine, against PyTorch's server measured in
the same run; with ``--memory``, the server's memory under many large legal images at once.

    python -m benchmarks.serve RUN --engines torch,auto --requests 200 --clients 20 --rounds 3 [--tta]
    python -m benchmarks.serve RUN --memory --clients 12 [--side 7000 --files 6]

Each engine gets its own server process (one uvicorn worker, as `histoclass serve` starts by
default). After a warm-up, ``--clients`` threads each send their share of ``--requests`` one-image
``POST /api/predict`` requests (real 320x240 blood-cell JPEGs, multipart bodies encoded beforehand)
back to back on kept-alive connections, so that the load generator, which shares the machine, takes
under a tenth of a core; the round's requests/s is requests over wall time, and every request's
latency is kept for the median and 95th percentile. Rounds alternate between the engines (A B A B
...) so that a drift of the machine's speed hits both; the median round is reported.
"""

from __future__ import annotations

import argparse
import http.client
import io
import socket
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import psutil

IMAGES = (
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bloodcells" / "test_simple"
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(model: str | Path, *options: str) -> tuple[subprocess.Popen, str]:
    """A `histoclass serve MODEL OPTIONS` process on a free port, once its health check answers."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "histoclass", "serve", str(model), "--port", str(port), *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/api/health", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.25)
    process.kill()
    raise RuntimeError(f"server did not start: {process.stdout.read()}")


def multipart(name: str, data: bytes) -> tuple[str, bytes]:
    """The content type and body of a one-image upload, encoded once so the clients only send bytes."""
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    )
    return (
        f"multipart/form-data; boundary={boundary}",
        head.encode() + data + f"\r\n--{boundary}--\r\n".encode(),
    )


def one_round(url: str, bodies: list[tuple[str, bytes]], requests: int, clients: int) -> dict:
    """``requests`` requests from ``clients`` threads on kept-alive ``http.client`` connections:
    requests/s, latency percentiles (ms) and the cores the clients used (httpx clients took 0.6 of a
    core at 250 requests/s, a third of this machine, and capped what they measured)."""
    address = urlsplit(url)

    def client(index: int) -> list[float]:
        latencies = []
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=300)
        try:
            for k in range(index, requests, clients):
                content_type, body = bodies[k % len(bodies)]
                started = time.perf_counter()
                connection.request(
                    "POST", "/api/predict", body=body, headers={"Content-Type": content_type}
                )
                response = connection.getresponse()
                response.read()
                if response.status != 200:
                    raise RuntimeError(f"status {response.status}")
                latencies.append(time.perf_counter() - started)
        finally:
            connection.close()
        return latencies

    cpu, started = time.process_time(), time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        latencies = [s for batch in pool.map(client, range(clients)) for s in batch]
    elapsed = time.perf_counter() - started
    return {
        "requests_per_s": len(latencies) / elapsed,
        "p50_ms": 1000 * float(np.percentile(latencies, 50)),
        "p95_ms": 1000 * float(np.percentile(latencies, 95)),
        "client_cores": (time.process_time() - cpu) / elapsed,
    }


def large_png(side: int) -> bytes:
    """A ``side`` x ``side`` PNG tiled from a real cell: legal under the default limits (a few MB, 49 MP)."""
    from PIL import Image

    cell = Image.open(sorted(IMAGES.rglob("*.jpeg"))[0]).convert("RGB")
    canvas = Image.new("RGB", (side, side))
    for x in range(0, side, cell.width):
        for y in range(0, side, cell.height):
            canvas.paste(cell, (x, y))
    buffer = io.BytesIO()
    canvas.save(buffer, "PNG")
    return buffer.getvalue()


def memory_round(model: str, clients: int, side: int, files: int) -> None:
    """Two requests of ``files`` large PNGs from each of ``clients`` threads at once: the server's resident
    memory idle, at its peak and a second after, and every answer's status."""
    png = large_png(side)
    process, url = start_server(model, "--no-tta")
    resident = psutil.Process(process.pid).memory_info

    def send(index: int) -> int:
        payload = [("files", (f"{index}-{k}.png", png)) for k in range(files)]
        return httpx.post(f"{url}/api/predict", files=payload, timeout=900).status_code

    try:
        send(0)
        idle = peak = resident().rss / 2**20
        with ThreadPoolExecutor(clients) as pool:
            replies = [pool.submit(send, index) for index in range(2 * clients)]
            while not all(reply.done() for reply in replies):
                peak = max(peak, resident().rss / 2**20)
                time.sleep(0.1)
        time.sleep(1)
        after = resident().rss / 2**20
    finally:
        process.terminate()
        process.wait(timeout=60)
    statuses = sorted({reply.result() for reply in replies})
    print(
        f"{2 * clients} requests of {files} {side}x{side} PNGs ({len(png) / 1e6:.1f} MB each), "
        f"{clients} at once"
    )
    print(
        f"statuses {statuses}; RSS idle {idle:.0f} MiB, peak {peak:.0f} MiB (+{peak - idle:.0f}), "
        f"after {after:.0f}"
    )
    print(f"after / idle {after / idle:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", help="run directory")
    parser.add_argument("--engines", default="torch,auto", help="the first is the baseline")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--tta", action="store_true", help="serve's default 8 views (off: one view per image)"
    )
    parser.add_argument(
        "--memory", action="store_true", help="measure memory under large images instead"
    )
    parser.add_argument("--side", type=int, default=7000, help="--memory: the PNGs' side in pixels")
    parser.add_argument("--files", type=int, default=6, help="--memory: PNGs a request")
    args = parser.parse_args()
    if args.memory:
        memory_round(args.model, args.clients, args.side, args.files)
        return
    bodies = [multipart(p.name, p.read_bytes()) for p in sorted(IMAGES.rglob("*.jpeg"))]
    engines = args.engines.split(",")
    servers = {
        engine: start_server(args.model, "--engine", engine, "--tta" if args.tta else "--no-tta")
        for engine in engines
    }
    rounds: dict[str, list[dict]] = {engine: [] for engine in engines}
    try:
        for _, url in servers.values():
            one_round(url, bodies, args.clients, args.clients)  # warm-up: first batches, allocator
        for _ in range(args.rounds):
            for engine, (_, url) in servers.items():
                rounds[engine].append(one_round(url, bodies, args.requests, args.clients))
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait(timeout=60)
    median = {
        engine: sorted(r, key=lambda x: x["requests_per_s"])[len(r) // 2]
        for engine, r in rounds.items()
    }
    baseline = median[engines[0]]["requests_per_s"]
    print(f"{args.requests} requests from {args.clients} clients, median of {args.rounds} rounds\n")
    print(
        "| engine | requests/s | vs " + engines[0] + " | p50 latency | p95 latency | client cores |"
    )
    print("|---|---|---|---|---|---|")
    for engine, result in median.items():
        print(
            f"| {engine} | {result['requests_per_s']:.0f} | {result['requests_per_s'] / baseline:.2f}x | "
            f"{result['p50_ms']:.0f} ms | {result['p95_ms']:.0f} ms | {result['client_cores']:.2f} |"
        )


if __name__ == "__main__":
    main()

"""Requests per second of `histoclass serve` on each engine, against PyTorch's server measured in the same run.

    python -m benchmarks.serve RUN --engines torch,auto --requests 200 --clients 20 --rounds 3 [--tta]

Each engine gets its own server process (one uvicorn worker, as `histoclass serve` starts by default). After a
warm-up, ``--clients`` threads each send their share of ``--requests`` one-image ``POST /api/predict`` requests
(real 320x240 blood-cell JPEGs, multipart bodies encoded beforehand) back to back on kept-alive connections, so
that the load generator, which shares the machine, takes under a tenth of a core; the round's requests/s is
requests over wall time, and every request's latency is kept for the median and 95th percentile. Rounds
alternate between the engines (A B A B ...) so that a drift of the machine's speed hits both; the median round
is reported.
"""

from __future__ import annotations

import argparse
import http.client
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

IMAGES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bloodcells" / "test_simple"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(model: str | Path, *options: str) -> tuple[subprocess.Popen, str]:
    """A `histoclass serve MODEL OPTIONS` process on a free port, once its health check answers."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "histoclass", "serve", str(model), "--port", str(port), *options],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
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
    return f"multipart/form-data; boundary={boundary}", head.encode() + data + f"\r\n--{boundary}--\r\n".encode()


def one_round(url: str, bodies: list[tuple[str, bytes]], requests: int, clients: int) -> dict:
    """``requests`` requests from ``clients`` threads on kept-alive ``http.client`` connections: requests/s,
    latency percentiles (ms) and the cores the clients used (httpx clients took 0.6 of a core at 250 requests/s,
    a third of this machine, and capped what they measured)."""
    address = urlsplit(url)

    def client(index: int) -> list[float]:
        latencies = []
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=300)
        try:
            for k in range(index, requests, clients):
                content_type, body = bodies[k % len(bodies)]
                started = time.perf_counter()
                connection.request("POST", "/api/predict", body=body, headers={"Content-Type": content_type})
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="run directory")
    parser.add_argument("--engines", default="torch,auto", help="the first is the baseline")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tta", action="store_true", help="serve's default 8 views (off: one view per image)")
    args = parser.parse_args()
    bodies = [multipart(p.name, p.read_bytes()) for p in sorted(IMAGES.rglob("*.jpeg"))]
    engines = args.engines.split(",")
    servers = {
        engine: start_server(args.model, "--engine", engine, "--tta" if args.tta else "--no-tta") for engine in engines
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
    median = {engine: sorted(r, key=lambda x: x["requests_per_s"])[len(r) // 2] for engine, r in rounds.items()}
    baseline = median[engines[0]]["requests_per_s"]
    print(f"{args.requests} requests from {args.clients} clients, median of {args.rounds} rounds\n")
    print("| engine | requests/s | vs " + engines[0] + " | p50 latency | p95 latency | client cores |")
    print("|---|---|---|---|---|---|")
    for engine, result in median.items():
        print(
            f"| {engine} | {result['requests_per_s']:.0f} | {result['requests_per_s'] / baseline:.2f}x | "
            f"{result['p50_ms']:.0f} ms | {result['p95_ms']:.0f} ms | {result['client_cores']:.2f} |"
        )


if __name__ == "__main__":
    main()

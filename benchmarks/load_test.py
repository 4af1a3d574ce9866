"""Load test of ``tailedcore serve``: concurrent clients posting real images for a while.

Starts ``tailedcore serve MODEL`` (a model file or an export folder) on a free local port, runs
``--clients`` threads that each post images of ``--images`` to /predict in a loop for
``--seconds``, samples the server's resident memory every second, and reports requests, failed
requests, throughput and latency percentiles.

    python benchmarks/load_test.py MODEL --images ../shared/data/real-ad/bottle/test/good \\
        --clients 16 --seconds 60 --json docs/load_test_serving.json
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model")
    parser.add_argument("--images", type=Path, required=True, help="folder of images to post")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--serve-option", action="append", default=[],
                        help="extra option for serve, repeatable (e.g. --serve-option=--search --serve-option=ivf)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    payloads = [(path.name, path.read_bytes()) for path in sorted(args.images.iterdir()) if path.is_file()]
    port = free_port()
    command = [str(Path(sys.executable).parent / "tailedcore"), "--quiet", "serve", args.model, "--port", str(port),
               *args.serve_option]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        else:
            raise SystemExit(f"serve did not start: {server.stderr.read().decode()[-500:]}")
        httpx.post(f"{base}/predict", files={"file": payloads[0]}, timeout=120)  # index built, warm
        latencies: list[float] = []
        failures: list[str] = []
        memory: list[float] = []
        stop = time.perf_counter() + args.seconds

        def client(offset: int) -> None:
            with httpx.Client(timeout=120) as session:
                index = offset
                while time.perf_counter() < stop:
                    name, data = payloads[index % len(payloads)]
                    started = time.perf_counter()
                    try:
                        answer = session.post(f"{base}/predict", files={"file": (name, data)})
                        if answer.status_code != 200:
                            failures.append(f"{answer.status_code} {answer.text[:100]}")
                    except httpx.HTTPError as error:
                        failures.append(repr(error))
                    latencies.append(time.perf_counter() - started)
                    index += args.clients

        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        while any(thread.is_alive() for thread in threads):
            memory.append(rss_mib(server.pid))
            time.sleep(1.0)
        elapsed = time.perf_counter() - started
    finally:
        server.terminate()
        server.wait(timeout=30)
    ms = 1000 * np.array(latencies)
    result = {"model": args.model, "serve_options": args.serve_option, "clients": args.clients, "seconds": elapsed,
              "requests": len(latencies),
              "failed": len(failures), "failures": failures[:5], "requests_per_second": len(latencies) / elapsed,
              "latency_ms": {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)),
                             "max": float(ms.max())},
              "server_rss_mib": {"first": memory[0], "last": memory[-1], "max": max(memory),
                                 "first_10s_mean": float(np.mean(memory[:10])),
                                 "last_10s_mean": float(np.mean(memory[-10:])), "per_second": memory}}
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

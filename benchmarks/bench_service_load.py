"""Load benchmark of ``segqc serve``: many concurrent clients on loopback, throughput and latency.

Starts ``segqc serve`` on 127.0.0.1 (a free port) with a bundle (``--model DIR``, or one trained here
with a small 64x64 config on synthetic data), sends ``--requests`` POST /v1/assess requests from
``--concurrency`` client threads (each with its own keep-alive connection), then prints a markdown
table: throughput, latency percentiles, non-2xx count (goal: 0), and the machine's load average.

Usage::

    python benchmarks/bench_service_load.py                      # trains a small bundle first
    python benchmarks/bench_service_load.py --model model --requests 1000 --concurrency 32
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def train_small_bundle(out: Path, size: int, n: int) -> float:
    """Train a bundle quickly (1 epoch each, narrow networks) on ``n`` synthetic images; returns seconds."""
    from segqc.config import PipelineConfig
    from segqc.data.dataset import SegData
    from segqc.data.synthetic import make_synthetic
    from segqc.training import train_bundle

    start = time.perf_counter()
    cfg = PipelineConfig(
        image_size=size, base_width=8, quality_width=8, seg_epochs=1, quality_epochs=1, device="cpu"
    )
    images, masks, ids = make_synthetic(n, size, seed=0)
    train_bundle(SegData(images, masks, ids), None, cfg, out, progress=False)
    return time.perf_counter() - start


def serve_command(model: Path, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "segqc",
        "serve",
        "--model",
        str(model),
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float) -> float:
    import httpx

    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"server exited early with code {proc.returncode}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"server did not answer /healthz within {timeout:.0f} s")


def make_payloads(count: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """Distinct PNG and JPEG images of assorted sizes (64 to 256 pixels a side)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        h, w = (int(v) for v in rng.integers(64, 257, 2))
        yy, xx = np.mgrid[:h, :w]
        blob = ((yy - h / 2) ** 2 / (h / 3) ** 2 + (xx - w / 2) ** 2 / (w / 3) ** 2) < 1
        rgb = np.clip(rng.normal(180, 20, (h, w, 3)) - 90 * blob[..., None], 0, 255).astype(np.uint8)
        fmt = "PNG" if i % 2 else "JPEG"
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format=fmt)
        out.append((f"img{i:03d}.{fmt.lower()}", buf.getvalue()))
    return out


def run_load(
    url: str, payloads: list[tuple[str, bytes]], total: int, concurrency: int, deadline_s: float
) -> dict:
    import httpx

    lock = threading.Lock()
    next_index = 0
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors: list[str] = []
    stop_at = time.monotonic() + deadline_s

    def worker() -> None:
        nonlocal next_index
        with httpx.Client(timeout=120) as client:
            while time.monotonic() < stop_at:
                with lock:
                    if next_index >= total:
                        return
                    i = next_index
                    next_index += 1
                name, data = payloads[i % len(payloads)]
                t0 = time.perf_counter()
                try:
                    response = client.post(f"{url}/v1/assess", files={"file": (name, data)})
                    response.read()
                    status = response.status_code
                except httpx.HTTPError as err:
                    with lock:
                        errors.append(f"{type(err).__name__}: {err}")
                    continue
                elapsed = time.perf_counter() - t0
                with lock:
                    latencies.append(elapsed)
                    statuses[status] = statuses.get(status, 0) + 1

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    lat = np.array(latencies) * 1000
    done = len(latencies)
    return {
        "requests_sent": next_index,
        "answered": done,
        "wall_s": wall,
        "throughput_rps": done / wall if wall else 0.0,
        "p50_ms": float(np.percentile(lat, 50)) if done else None,
        "p95_ms": float(np.percentile(lat, 95)) if done else None,
        "p99_ms": float(np.percentile(lat, 99)) if done else None,
        "max_ms": float(lat.max()) if done else None,
        "non_2xx": sum(n for s, n in statuses.items() if not 200 <= s < 300),
        "statuses": statuses,
        "client_errors": len(errors),
        "first_errors": errors[:3],
    }


def report(r: dict) -> str:
    """The results as markdown: one table row and notes on the setup and the machine."""

    def ms(key: str) -> str:
        return "-" if r[key] is None else f"{r[key]:.0f}"

    size = r["model_image_size"]
    load = ["/".join(f"{v:.2f}" for v in r[key]) for key in ("load_average_before", "load_average_after")]
    lines = [
        f"`{r['command']}`",
        "",
        "| requests | clients | throughput (req/s) | p50 (ms) | p95 (ms) | p99 (ms) | max (ms) | non-2xx "
        "| errors |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {r['answered']} | {r['concurrency']} | {r['throughput_rps']:.1f} | {ms('p50_ms')} "
        f"| {ms('p95_ms')} | {ms('p99_ms')} | {ms('max_ms')} | {r['non_2xx']} | {r['client_errors']} |",
        "",
        f"- model: {r['method']}, {size}x{size} input; uploads: 32 distinct PNG/JPEG images, 64-256 px",
        f"- statuses {r['statuses']}; wall {r['wall_s']:.1f} s; server startup {r['server_startup_s']:.1f} s"
        + (
            f"; bundle trained here in {r['bundle_trained_here_s']:.0f} s"
            if r["bundle_trained_here_s"]
            else ""
        ),
        f"- machine: {r['cpus']} CPUs, {r['machine']}, Python {r['python']}; load average (1/5/15 min) "
        f"before {load[0]}, after {load[1]}",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="Bundle folder; default: train a small one.")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=64, help="Model input size when training here.")
    parser.add_argument("--train-images", type=int, default=64, help="Synthetic images when training here.")
    parser.add_argument("--deadline", type=float, default=600.0, help="Stop sending after this many seconds.")
    parser.add_argument("--json", type=Path, default=None, help="Also write the results here.")
    args = parser.parse_args()
    import httpx

    with tempfile.TemporaryDirectory(prefix="segqc-bench-") as tmp:
        train_s = None
        model = args.model
        if model is None:
            model = Path(tmp) / "model"
            train_s = train_small_bundle(model, args.image_size, args.train_images)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log_path = Path(tmp) / "server.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(serve_command(model, port), stdout=log, stderr=log)
            try:
                startup_s = wait_healthy(url, proc, timeout=300)
                payloads = make_payloads(32)
                run_load(url, payloads, 16, min(args.concurrency, 16), 120)  # warm-up, not counted
                load_before = os.getloadavg()
                result = run_load(url, payloads, args.requests, args.concurrency, args.deadline)
                load_after = os.getloadavg()
                model_info = httpx.get(f"{url}/v1/model", timeout=10).json()
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        server_log = log_path.read_text(errors="replace")

    result.update(
        concurrency=args.concurrency,
        model_image_size=model_info["image_size"],
        method=model_info["method"],
        bundle_trained_here_s=train_s,
        server_startup_s=startup_s,
        load_average_before=load_before,
        load_average_after=load_after,
        cpus=os.cpu_count(),
        machine=f"{platform.machine()} {platform.system()} {platform.release()}",
        python=platform.python_version(),
        command=" ".join(["python", *sys.argv]),
    )
    print(report(result))
    if result["first_errors"]:
        print("first client errors:", *result["first_errors"], sep="\n  ")
    if "Traceback" in server_log:
        print("server log has a traceback:\n" + server_log[-3000:])
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if result["non_2xx"] or result["client_errors"] or result["answered"] < args.requests:
        sys.exit(1)


if __name__ == "__main__":
    main()

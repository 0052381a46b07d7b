"""Load benchmark of ``segqc serve``: many concurrent clients mixing good, bad and oversized uploads.

Starts ``segqc serve`` on 127.0.0.1 (a free port) with a bundle (``--model DIR``, or one trained here
with a small 64x64 config on synthetic data), then ``--concurrency`` client threads (each with its own
keep-alive connection) send POST /v1/assess for ``--duration`` seconds, cycling through a fixed mix:
good PNG/JPEG images (64-256 px a side), corrupt bytes behind a PNG signature, truncated JPEGs, text and
PDF files (wrong type), small PNGs that declare 6400x6400 = 41 M pixels (over ``--max-pixels``: 413
from the header, nothing decoded) and small PNGs that decode to 25 M pixels (within the limits: they
fill the pixel budget). It prints counts by kind and status, latency percentiles, and the server
process's peak RSS (``VmHWM`` in ``/proc/PID/status``) against a stated bound:

    RSS after warm-up + pixel budget x 40 bytes/pixel (segqc.service.budget.BYTES_PER_PIXEL) + 512 MiB

and the measured cost: (peak RSS - RSS after warm-up) / the most pixels the budget had in use at once
(``pixels_in_flight_peak`` from ``GET /v1/model``).

(the 512 MiB cover uploads in flight, answers and allocator slack). It exits 1 if any answer was a 5xx
other than 503 (the budget's "busy, retry"), a client error happened, or the bound did not hold.

Usage::

    python benchmarks/bench_service_load.py                      # trains a small bundle first
    python benchmarks/bench_service_load.py --model model --duration 120 --concurrency 32
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
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

MiB = 1024 * 1024
#: Memory per decoded pixel in flight (segqc.service.budget.BYTES_PER_PIXEL), and slack on top.
BYTES_PER_PIXEL = 40
SLACK = 512 * MiB
DEFAULT_PIXEL_BUDGET = 80_000_000


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


def serve_command(model: Path, port: int, pixel_budget: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "segqc",
        "serve",
        "--model",
        str(model),
        "--port",
        str(port),
        "--pixel-budget",
        str(pixel_budget),
        "--log-level",
        "warning",
    ]


def memory_kib(pid: int) -> dict[str, int]:
    """``VmRSS`` (now) and ``VmHWM`` (peak) of a process, in KiB, from ``/proc/PID/status`` (Linux)."""
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


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


def flat_png(width: int, height: int) -> bytes:
    """A valid RGB PNG of one colour: a few kB on the wire, ``width x height`` pixels once decoded."""
    row = b"\0" + b"\x80\x60\x50" * width
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return len(body).to_bytes(4, "big") + kind + body + crc.to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def make_mix(seed: int = 0) -> list[tuple[str, str, bytes]]:
    """The request cycle, ``(kind, file name, bytes)``: 40 requests, 29 good, 11 bad or big."""
    rng = np.random.default_rng(seed)
    good = [("good", name, data) for name, data in make_payloads(29, seed)]
    jpeg = good[0][2]
    bad = [
        ("corrupt", "corrupt1.png", b"\x89PNG\r\n\x1a\n" + rng.bytes(4000)),
        ("corrupt", "corrupt2.png", b"\x89PNG\r\n\x1a\n" + rng.bytes(20000)),
        ("corrupt", "cut.jpg", jpeg[: len(jpeg) // 2]),
        ("wrong-type", "notes.jpg", b"Patient notes: lesion on the left arm.\n" * 50),
        (
            "wrong-type",
            "report.pdf",
            b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n" + rng.bytes(2000),
        ),
        ("oversized", "bomb41M.png", flat_png(6400, 6400)),
        ("oversized", "bomb41M-b.png", flat_png(6400, 6400)),
        ("large", "large25M.png", flat_png(5000, 5000)),
        ("large", "large25M-b.png", flat_png(5000, 5000)),
        ("large", "large25M-c.png", flat_png(5000, 5000)),
        ("wrong-type", "empty.png", b""),
    ]
    mix = list(good)
    for n, item in enumerate(bad):  # spread the bad and big ones through the cycle
        mix.insert(2 + n * 4, item)
    return mix


def run_load(url: str, mix: list[tuple[str, str, bytes]], concurrency: int, duration_s: float) -> dict:
    """``concurrency`` clients send requests from ``mix`` (in turn) for ``duration_s`` seconds."""
    import httpx

    lock = threading.Lock()
    next_index = 0
    latencies: dict[str, list[float]] = {}
    statuses: dict[str, dict[int, int]] = {}
    errors: list[str] = []
    stop_at = time.monotonic() + duration_s

    def worker() -> None:
        nonlocal next_index
        with httpx.Client(timeout=120) as client:
            while time.monotonic() < stop_at:
                with lock:
                    kind, name, data = mix[next_index % len(mix)]
                    next_index += 1
                t0 = time.perf_counter()
                try:
                    response = client.post(f"{url}/v1/assess", files={"file": (name, data)})
                    response.read()
                    status = response.status_code
                except httpx.HTTPError as err:
                    with lock:
                        errors.append(f"{kind} {name}: {type(err).__name__}: {err}")
                    continue
                elapsed = time.perf_counter() - t0
                with lock:
                    latencies.setdefault(kind, []).append(elapsed)
                    by_status = statuses.setdefault(kind, {})
                    by_status[status] = by_status.get(status, 0) + 1

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start

    def pct(values: list[float]) -> dict[str, float | None]:
        lat = np.array(values) * 1000
        keys = {"p50_ms": 50, "p99_ms": 99, "max_ms": 100}
        return {k: float(np.percentile(lat, q)) if len(lat) else None for k, q in keys.items()}

    every = [v for values in latencies.values() for v in values]
    totals: dict[int, int] = {}
    for by_status in statuses.values():
        for status, n in by_status.items():
            totals[status] = totals.get(status, 0) + n
    return {
        "answered": len(every),
        "wall_s": wall,
        "throughput_rps": len(every) / wall if wall else 0.0,
        **pct(every),
        "by_kind": {kind: {"statuses": statuses[kind], **pct(latencies[kind])} for kind in sorted(statuses)},
        "statuses": dict(sorted(totals.items())),
        "server_errors": sum(n for s, n in totals.items() if s >= 500 and s != 503),
        "busy_503": totals.get(503, 0),
        "client_errors": len(errors),
        "first_errors": errors[:3],
    }


def report(r: dict) -> str:
    """The results as markdown: tables and notes on the setup and the machine."""

    def ms(d: dict, key: str) -> str:
        return "-" if d[key] is None else f"{d[key]:.0f}"

    size = r["model_image_size"]
    load = ["/".join(f"{v:.2f}" for v in r[key]) for key in ("load_average_before", "load_average_after")]
    mem = r["memory"]
    lines = [
        f"`{r['command']}`",
        "",
        "| answered | clients | duration (s) | throughput (req/s) | p50 (ms) | p99 (ms) | max (ms) | 5xx "
        "(not 503) | 503 | client errors | peak RSS (MiB) | bound (MiB) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {r['answered']} | {r['concurrency']} | {r['wall_s']:.0f} | {r['throughput_rps']:.1f} "
        f"| {ms(r, 'p50_ms')} | {ms(r, 'p99_ms')} | {ms(r, 'max_ms')} | {r['server_errors']} "
        f"| {r['busy_503']} | {r['client_errors']} | {mem['peak_rss_mib']:.0f} | {mem['bound_mib']:.0f} |",
        "",
        "| kind | statuses | p50 (ms) | p99 (ms) | max (ms) |",
        "|---|---|---:|---:|---:|",
        *(
            f"| {kind} | {d['statuses']} | {ms(d, 'p50_ms')} | {ms(d, 'p99_ms')} | {ms(d, 'max_ms')} |"
            for kind, d in r["by_kind"].items()
        ),
        "",
        f"- memory bound {'HELD' if mem['bound_held'] else 'BROKEN'}: peak RSS {mem['peak_rss_mib']:.0f} MiB "
        f"<= {mem['rss_after_warmup_mib']:.0f} MiB after warm-up + pixel budget {r['pixel_budget']:,} x "
        f"{BYTES_PER_PIXEL} B ({r['pixel_budget'] * BYTES_PER_PIXEL / MiB:.0f} MiB) + {SLACK // MiB} MiB "
        f"= {mem['bound_mib']:.0f} MiB; at most {mem['pixels_in_flight_peak']:,} pixels were in flight at "
        f"once: {mem['bytes_per_pixel_measured']:.1f} bytes of peak RSS growth per pixel in flight",
        f"- model: {r['method']}, {size}x{size} input; statuses {r['statuses']}; server startup "
        f"{r['server_startup_s']:.1f} s"
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
    parser.add_argument("--duration", type=float, default=60.0, help="Seconds of load.")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--pixel-budget", type=int, default=DEFAULT_PIXEL_BUDGET, help="Passed to serve.")
    parser.add_argument("--image-size", type=int, default=64, help="Model input size when training here.")
    parser.add_argument("--train-images", type=int, default=64, help="Synthetic images when training here.")
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
            proc = subprocess.Popen(serve_command(model, port, args.pixel_budget), stdout=log, stderr=log)
            try:
                startup_s = wait_healthy(url, proc, timeout=300)
                mix = make_mix()
                good = [m for m in mix if m[0] == "good"][:16]
                run_load(url, good, min(args.concurrency, 16), 5)  # warm-up on good images, not counted
                warm = memory_kib(proc.pid)
                load_before = os.getloadavg()
                result = run_load(url, mix, args.concurrency, args.duration)
                load_after = os.getloadavg()
                model_info = httpx.get(f"{url}/v1/model", timeout=10).json()
                healthy_after = httpx.get(f"{url}/healthz", timeout=10).status_code == 200
                end = memory_kib(proc.pid)
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        server_log = log_path.read_text(errors="replace")

    bound = warm["VmRSS"] * 1024 + args.pixel_budget * BYTES_PER_PIXEL + SLACK
    memory = {
        "rss_after_warmup_mib": warm["VmRSS"] / 1024,
        "peak_rss_mib": end["VmHWM"] / 1024,
        "rss_at_end_mib": end["VmRSS"] / 1024,
        "bound_mib": bound / MiB,
        "bound_held": end["VmHWM"] * 1024 <= bound,
        "pixels_in_flight_peak": model_info["service"]["pixels_in_flight_peak"],
    }
    grown = (end["VmHWM"] - warm["VmRSS"]) * 1024
    memory["bytes_per_pixel_measured"] = grown / max(memory["pixels_in_flight_peak"], 1)
    result.update(
        concurrency=args.concurrency,
        pixel_budget=args.pixel_budget,
        memory=memory,
        healthy_after=healthy_after,
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
    failed = (
        result["server_errors"] or result["client_errors"] or not memory["bound_held"] or not healthy_after
    )
    sys.exit(1 if failed or "Traceback" in server_log else 0)


if __name__ == "__main__":
    main()

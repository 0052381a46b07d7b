"""Shared helpers of ``bench_inference.py`` and ``bench_training.py``: timing, peak, machine, tables.

Timings on a shared machine are noisy, so every benchmark prints the 1-minute load average before
and after its run and takes the median of several repeats after a warm-up.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from segqc.utils import write_json

# Above this 1-minute load average (per the whole machine) the numbers are marked "taken under load".
QUIET_LOAD = 1.5
ENV_VARS = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MKL_NUM_THREADS", "KMP_BLOCKTIME")


def load1() -> float:
    """The 1-minute load average of the machine."""
    return os.getloadavg()[0]


def cpu_model() -> str:
    """The CPU model from /proc/cpuinfo (falls back to ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """What a reader needs to compare numbers: CPU, cores, threads, versions, date."""
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        # Thread settings in the environment change CPU timings a lot on a shared machine.
        "env": {k: os.environ[k] for k in ENV_VARS if k in os.environ},
    }


def time_call(fn: Callable[[], object], device: torch.device | None = None) -> tuple[float, float]:
    """Wall time and process CPU time (user + system, all threads) of one call, in seconds.

    CPU time is the load-robust twin of wall time: other jobs on a shared machine stretch the wall
    time of a call (the process waits for a core) but hardly its CPU time. With several threads it
    also counts the time threads spin while waiting for each other. CUDA is synchronised first.
    """
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(
    fn: Callable[[], object],
    *,
    repeats: int,
    warmup: int = 1,
    budget_s: float | None = None,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """Median wall and CPU time of ``fn`` over ``repeats`` calls after ``warmup`` untimed calls.

    Warm-up covers oneDNN kernel generation and allocator growth (a first call can be many times
    slower than the next, so it is never timed). With ``budget_s``, repeats stop early once the
    timed calls have taken that long (at least one is always timed), so one slow case (e.g. MC
    dropout at 224 px) cannot blow the run's wall-time budget.

    Returns:
        ``{"median_s", "min_s", "times_s", "cpu_median_s", "cpu_times_s"}``.
    """
    for _ in range(warmup):
        fn()
    runs: list[tuple[float, float]] = []
    while len(runs) < max(1, repeats) and not (budget_s is not None and sum(r[0] for r in runs) >= budget_s):
        runs.append(time_call(fn, device))
    return _summary(runs)


def measure_interleaved(
    fns: Sequence[Callable[[], object]], *, repeats: int, warmup: int = 1, device: torch.device | None = None
) -> list[dict[str, Any]]:
    """Like :func:`measure` for several variants at once, timed round-robin (A B C A B C ...).

    On a shared machine the load drifts during a run; interleaving spreads that drift evenly over
    the variants instead of penalising whichever happened to run during a busy minute.
    """
    for fn in fns:
        for _ in range(warmup):
            fn()
    runs: list[list[tuple[float, float]]] = [[] for _ in fns]
    for _ in range(max(1, repeats)):
        for fn, out in zip(fns, runs, strict=True):
            out.append(time_call(fn, device))
    return [_summary(r) for r in runs]


def _summary(runs: list[tuple[float, float]]) -> dict[str, Any]:
    times, cpu = [r[0] for r in runs], [r[1] for r in runs]
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "times_s": times,
        "cpu_median_s": statistics.median(cpu),
        "cpu_times_s": cpu,
    }


def matmul_peak(sizes: Sequence[int] = (2048, 4096), repeats: int = 3) -> dict[str, Any]:
    """The machine's own float32 matrix-multiply peak in GFLOP/s (2 n^3 / t for n x n x n products).

    Two libraries do float32 products in torch on a CPU, and they need not be equally fast: MKL
    (``torch.mm``) and oneDNN (convolutions), each with its own kernels. Both
    are timed on square products: ``torch.mm`` of two n x n matrices, and a 1 x 1 convolution of an
    n-channel channels_last image of n pixels to n channels, which oneDNN runs as the same n x n x n
    GEMM. The peak is the best of both over the sizes and repeats (after one warm-up each): the
    best, not the median, because the question is what the cores can do at all.

    ``cpu_gflops`` is the same best rate per second of process CPU time (see :func:`time_call`):
    the per-core peak when the products use every thread, robust to other jobs on the machine.

    Returns:
        ``{"gflops", "cpu_gflops", "mm_gflops": {n: best}, "onednn_gemm_gflops": {n: best}}``.
    """
    mm, gemm, cpu = {}, {}, 0.0
    with torch.inference_mode():
        for n in sizes:
            a, b, out = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)
            x = torch.randn(1, n, n, 1).contiguous(memory_format=torch.channels_last)
            w = torch.randn(n, n, 1, 1)
            for fn, rates in [
                (lambda a=a, b=b, out=out: torch.mm(a, b, out=out), mm),
                (lambda x=x, w=w: torch.nn.functional.conv2d(x, w), gemm),
            ]:
                fn()
                runs = [time_call(fn) for _ in range(repeats)]
                rates[n] = max(2 * n**3 / wall for wall, _ in runs) / 1e9
                cpu = max(cpu, *(2 * n**3 / max(c, 1e-9) / 1e9 for _, c in runs))
    return {
        "gflops": max(*mm.values(), *gemm.values()),
        "cpu_gflops": cpu,
        "mm_gflops": mm,
        "onednn_gemm_gflops": gemm,
    }


def load_note(before: float, after: float) -> str:
    """Whether other jobs shared the machine, judged from the 1-minute load averages.

    ``after`` includes this benchmark's own threads (up to ``torch.get_num_threads()`` of load),
    so that much is subtracted before comparing it with :data:`QUIET_LOAD`. ``before`` may still
    hold the tail of a previous run's load (the average decays over about a minute).
    """
    others_after = max(0.0, after - torch.get_num_threads())
    if max(before, others_after) < QUIET_LOAD:
        return f"quiet machine (1-min load average {before:.2f} before, {after:.2f} after incl. this run)"
    return (
        f"TAKEN UNDER LOAD: 1-min load average {before:.2f} before, {after:.2f} after (incl. this run's "
        f"{torch.get_num_threads()} threads) on {os.cpu_count()} cores; other jobs shared the CPU, so "
        "wall-clock numbers are pessimistic and noisy (compare the CPU-time columns)"
    )


def markdown_table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, seconds")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (median); default per mode")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=None, help="also write the numbers as JSON here")


def header(title: str, machine: dict[str, Any], before: float) -> str:
    return (
        f"# {title}\n\n"
        f"- command: `{machine['command']}`\n"
        f"- machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}, "
        f"{machine['torch_threads']} threads, Python {machine['python']}"
        f"{''.join(f', {k}={v}' for k, v in machine['env'].items())}\n"
        f"- date: {machine['date']}\n"
        f"- 1-min load average before: {before:.2f}\n"
    )


def finish(results: dict[str, Any], out: Path | None, before: float) -> None:
    """Print the load note and write the JSON (with the machine and both load averages)."""
    after = load1()
    results["load_before"], results["load_after"] = before, after
    results["load_note"] = load_note(before, after)
    print(f"\n- 1-min load average after: {after:.2f}\n- load note: {results['load_note']}")
    if out is not None:
        write_json(out, results)
        print(f"- numbers written to {out}")

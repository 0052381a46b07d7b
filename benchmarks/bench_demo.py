"""Wall time of the README's demo command on this machine (goal: at most 3 minutes on 2 CPU cores).

Usage: python benchmarks/bench_demo.py [--repeats 1] [--out /tmp/segqc-bench-demo]

Runs ``segqc demo`` in a fresh process (imports included, as a user would), then prints the wall
time, the machine, the load average before the run and the demo's headline results.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("/tmp/segqc-bench-demo"))
    args = parser.parse_args()
    times = []
    for _ in range(args.repeats):
        shutil.rmtree(args.out, ignore_errors=True)
        load = os.getloadavg()[0]
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "segqc", "demo", "--out", str(args.out), "--quiet"], check=True)
        times.append(time.perf_counter() - start)
        print(f"run {len(times)}: {times[-1]:.1f} s (1-min load average before: {load:.2f})")
    res = json.loads((args.out / "results.json").read_text())
    seg, rows = res["segmentation"], res["rows"]
    cpu = platform.processor() or platform.machine()
    print(f"\nmachine: {cpu}, {os.cpu_count()} cores, {platform.platform()}")
    print(f"demo wall time: best {min(times):.1f} s, worst {max(times):.1f} s over {len(times)} run(s)")
    print(f"segmentation mean Jaccard {seg['jaccard_mean']:.3f}, failures {seg['failure_rate']:.1%}")
    for row in rows:
        print(row["method"], {k: round(v, 3) if v is not None else None for k, v in row["metrics"].items()})


if __name__ == "__main__":
    main()

"""Run ``segqc experiment`` (by default ``--preset paper``) on one GPU machine within a time budget.

Usage::

    python benchmarks/paper_on_gpu.py --budget SECONDS --out OUT [--seeds 0,1,2,3,4] [--parallel N]
        [--preset paper|none] -- [more segqc experiment options, e.g. --data D --protocol P]

Each seed is an independent experiment process (``--seed-list S --out OUT/seeds/S``); up to
``--parallel`` of them share the GPU at once (small networks leave a large GPU mostly idle, so
several trainings side by side finish sooner than one after another). They share one cache of
finished units (``OUT/units``), so a rerun of the same command resumes every seed where it stopped
(a training cut off by the budget from its last finished epoch, ``OUT/units/.partial``).
Each process prints, after the first epoch of every training, how long that training will take, and
after every unit the time left by its own estimate; each is given the time left of ``--budget``
(less ``--margin`` for the final step) as its ``--time-budget`` and stops cleanly there.

When the processes are done, the seeds that finished are assembled into one table in ``OUT``
(``segqc experiment --seed-list <finished> --out OUT``: every unit is cached, so nothing is trained
again). ``OUT/gpu_run.json`` records each seed's status and time, the commands and the machine.
Exit status: 0 when every seed finished, 75 when some stopped at the budget (rerun to finish), 1 on
a failure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

TIME_BUDGET_EXIT = 75


def _relay(stream: Any, prefix: str, log: Path) -> None:
    """Copy a child's output line by line to our stderr (prefixed) and to its log file."""
    with open(log, "a", encoding="utf-8") as fh:
        for line in iter(stream.readline, ""):
            fh.write(line)
            fh.flush()
            sys.stderr.write(f"{prefix} {line}")
            sys.stderr.flush()


def experiment_command(
    preset: str, extra: list[str], seeds: list[int], out: Path, budget: float
) -> list[str]:
    cmd = [sys.executable, "-m", "segqc", "experiment"]
    if preset != "none":
        cmd += ["--preset", preset]
    seed_list = ",".join(str(s) for s in seeds)
    return [
        *cmd,
        *extra,
        "--seed-list",
        seed_list,
        "--out",
        str(out),
        "--time-budget",
        f"{max(budget, 1):.0f}",
    ]


def portable(cmd: list[str]) -> list[str]:
    """The command as recorded: ``python`` for this interpreter's path."""
    return ["python", *cmd[1:]]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    # Progress bars would fill the logs; the per-unit and first-epoch lines are kept (tqdm.write).
    env.setdefault("TQDM_DISABLE", "1")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, required=True, help="Seconds for the whole run.")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--parallel", type=int, default=5, help="Experiment processes at once.")
    ap.add_argument("--preset", default="paper", help="segqc experiment --preset, or none.")
    ap.add_argument("--margin", type=float, default=60.0, help="Seconds kept for assembling the table.")
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    deadline = time.monotonic() + args.budget
    start = time.perf_counter()
    out: Path = args.out
    (out / "units").mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)

    status: dict[int, dict[str, Any]] = {}
    waiting = list(seeds)
    running: dict[int, tuple[subprocess.Popen, threading.Thread, float]] = {}
    while waiting or running:
        while waiting and len(running) < max(1, args.parallel):
            seed = waiting.pop(0)
            folder = out / "seeds" / str(seed)
            folder.mkdir(parents=True, exist_ok=True)
            link = folder / "units"
            if not link.is_symlink():
                link.symlink_to(Path("..", "..", "units"))  # every seed's units in the shared cache
            left = deadline - time.monotonic() - args.margin
            cmd = experiment_command(args.preset, extra, [seed], folder, left)
            if left < 1:
                status[seed] = {"status": "not started (no time left)", "command": portable(cmd)}
                continue
            proc = subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=child_env(),
            )
            relay = threading.Thread(
                target=_relay, args=(proc.stdout, f"[seed {seed}]", out / "logs" / f"seed-{seed}.log")
            )
            relay.start()
            running[seed] = (proc, relay, time.perf_counter())
            status[seed] = {"status": "running", "command": portable(cmd)}
        for seed, (proc, relay, t0) in list(running.items()):
            rc = proc.poll()
            if rc is None:
                continue
            relay.join()
            del running[seed]
            state = {0: "finished", TIME_BUDGET_EXIT: "stopped at the budget"}.get(rc, "failed")
            status[seed].update(status=state, returncode=rc, seconds=round(time.perf_counter() - t0, 1))
            print(f"seed {seed}: {state} after {status[seed]['seconds']} s", file=sys.stderr, flush=True)
        time.sleep(1.0)

    finished = [s for s in seeds if status[s]["status"] == "finished"]
    record: dict[str, Any] = {
        "budget_s": args.budget,
        "seeds": {str(s): status[s] for s in seeds},
        "finished": finished,
        "machine": machine(),
    }
    rc = 0 if len(finished) == len(seeds) else TIME_BUDGET_EXIT
    if any(status[s]["status"] == "failed" for s in seeds):
        rc = 1
    if finished:
        left = deadline - time.monotonic()
        cmd = experiment_command(args.preset, extra, finished, out, max(left, 30.0))
        done = subprocess.run(cmd, env=child_env())
        record["assemble"] = {"command": portable(cmd), "returncode": done.returncode}
        if done.returncode != 0:
            rc = 1
    record["seconds"] = round(time.perf_counter() - start, 1)
    (out / "gpu_run.json").write_text(json.dumps(record, indent=2) + "\n")
    stopped = [s for s in seeds if s not in finished]
    print(
        f"{len(finished)} of {len(seeds)} seeds finished in {record['seconds']} s"
        + (f"; rerun the same command to resume seeds {stopped}" if stopped else ""),
        file=sys.stderr,
    )
    return rc


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"cpu_count": os.cpu_count()}
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["torch"] = torch.__version__
    except Exception:  # the record is informative only
        pass
    return info


if __name__ == "__main__":
    raise SystemExit(main())

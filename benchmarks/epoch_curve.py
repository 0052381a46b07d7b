"""How many epochs f needs: a validation curve on the training images, and the epoch count it picks.

Usage::

    python benchmarks/epoch_curve.py [--data DIR --protocol SPLIT] --image-size 64 --epochs 120 \\
        [--every 5] [--seed 0] [--device auto] [--time-budget SECONDS] --out DIR

Only the protocol's *training* images are used (no test image is looked at): a seeded 20 % of them
is held out (the same split ``segqc train`` holds out for its gate, :func:`segqc.calibration.hold_out`),
f (the ``msp`` method's network and loss, the library's own training loop) is trained on the rest for
``--epochs`` epochs, and every ``--every`` epochs the mean Jaccard of its masks on the held-out
images is recorded.

The rule that picks the epoch count (written once here, and in ``curve.json``): smooth the curve
with a moving mean over 3 evaluations, then take the first evaluated epoch whose smoothed Jaccard is
within ``--tolerance`` (default 0.005) of the best smoothed value. Later epochs change the held-out
Jaccard by less than that.

Writes ``curve.json`` (the curve, the rule, the chosen epochs, the command) and ``curve.png`` to
``--out``. With ``--time-budget`` a run that runs out of time writes the curve so far (marked
``"complete": false``) and picks nothing. A run that is stopped (budget, kill, end of a session)
resumes from its last finished epoch when rerun with the same arguments: f's training state is kept
in ``OUT/.partial/`` (:func:`segqc.checkpoint.resume_in`) and the curve so far in
``OUT/.partial/curve.json``; both go once ``curve.json`` is written with ``"complete": true``.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from segqc.calibration import hold_out
from segqc.checkpoint import PARTIAL, resume_in
from segqc.data.dataset import data_digest, to_input
from segqc.data.splits import load_train_test
from segqc.engine import TimeBudgetExceeded, time_budget
from segqc.experiment.report import portable_command
from segqc.metrics.segmentation import jaccard
from segqc.segmenter import Segmenter
from segqc.utils import resolve_device, versions, write_json

RULE = (
    "first evaluated epoch whose held-out Jaccard, smoothed by a moving mean over 3 evaluations, is "
    "within {tolerance} of the best smoothed value"
)


def choose_epochs(epochs: list[int], scores: list[float], tolerance: float) -> int:
    """The epoch count of :data:`RULE` for a curve ``scores`` evaluated at ``epochs``."""
    values = np.asarray(scores, dtype=np.float64)
    smooth = np.array([values[max(0, i - 1) : i + 2].mean() for i in range(len(values))])
    best = smooth.max()
    return int(epochs[int(np.argmax(smooth >= best - tolerance))])


def evaluated_epochs(every: int, epochs: int) -> set[int]:
    """The epochs at which the curve is evaluated: every ``every``-th, and the last."""
    return set(range(every, epochs + 1, every)) | {epochs}


def load_progress(path: Path, key: dict) -> dict[int, dict[str, float]]:
    """The curve points a stopped run with the same ``key`` recorded; none when the file is absent,
    another run's, or damaged (any point that is not an evaluated epoch with a finite score and time)."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(saved, dict) or saved.get("key") != key or not isinstance(saved.get("points"), list):
        return {}
    grid = evaluated_epochs(key["every"], key["epochs"])
    points = {}
    for p in saved["points"]:
        if not isinstance(p, dict) or type(p.get("epoch")) is not int or p["epoch"] not in grid:
            return {}
        values = [p.get("heldout_jaccard"), p.get("seconds")]
        if not all(type(v) in (int, float) and math.isfinite(v) and v >= 0 for v in values):
            return {}
        points[p["epoch"]] = p
    return points


def checkpointed_epochs(scratch: Path) -> int:
    """The epochs f's training state in ``scratch`` has done (0: none, or unreadable)."""
    try:
        from safetensors import safe_open

        with safe_open(str(scratch / "train-0.safetensors"), framework="pt") as fh:
            return int((fh.metadata() or {}).get("epochs_done", 0))
    except Exception:
        return 0


def heldout_jaccard(model: torch.nn.Module, images: np.ndarray, masks: np.ndarray, mean, std) -> float:
    """Mean Jaccard of ``model``'s argmax masks (eval mode, no dropout) on ``images``."""
    device = next(model.parameters()).device
    model.eval()
    preds = []
    with torch.inference_mode():
        for start in range(0, len(images), 64):
            x = to_input(torch.from_numpy(images[start : start + 64]).to(device), mean, std)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits = model(x)
            preds.append(logits[:, :2].argmax(1).cpu().numpy())
    model.train()
    return float(np.mean(jaccard(np.concatenate(preds), masks)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="Data folder (default: the embedded synthetic set).")
    ap.add_argument("--protocol", default=None)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=120)
    ap.add_argument("--every", type=int, default=5)
    ap.add_argument("--tolerance", type=float, default=0.005)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--time-budget", type=float, default=None)
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args(argv)

    train, _, info = load_train_test(args.data, args.protocol, size=args.image_size)
    fit_part, heldout = hold_out(train, args.seed)
    seg = Segmenter(method="msp", epochs=args.epochs, seed=args.seed, device=args.device, progress=False)
    scratch = args.out / PARTIAL
    key = {
        "benchmark": "epoch_curve",
        "data": data_digest(fit_part),
        "heldout": data_digest(heldout),
        "image_size": args.image_size,
        "seed": args.seed,
        "every": args.every,
        "epochs": args.epochs,  # f's learning-rate schedule: another --epochs is another training
    }
    # The curve so far, by epoch: a resumed run re-records the epochs its checkpoint lost.
    points = load_progress(scratch / "curve.json", key)
    evaluated = evaluated_epochs(args.every, args.epochs)
    if any(e not in points for e in evaluated if e <= checkpointed_epochs(scratch)):
        # f's checkpoint without the curve it went with (lost, damaged, another run's) would resume to
        # a curve with a gap: both start over
        shutil.rmtree(scratch, ignore_errors=True)
        points = {}
    started = time.perf_counter()
    block = None  # the resume_in block: the seconds f had trained in stopped runs, once resumed

    def trained_seconds() -> float:
        """f's training time so far, in this run and (from its checkpoint) the stopped ones."""
        return (0.0 if block is None else block.carried_seconds) + time.perf_counter() - started

    first = True

    def record(done: int, model: torch.nn.Module) -> None:
        nonlocal first
        if first:
            # f's first epoch in this run: the stopped run's points from here on are of a training state
            # f is not in (one it did not resume: damaged, another kind of device; or epochs lost)
            first = False
            for epoch in [e for e in points if e >= done]:
                del points[epoch]
        if done in evaluated:
            score = heldout_jaccard(model, heldout.images, heldout.masks, seg.mean_, seg.std_)
            points[done] = {"epoch": done, "heldout_jaccard": score, "seconds": trained_seconds()}
            write_json(scratch / "curve.json", {"key": key, "points": list(points.values())})
            print(f"epoch {done}: held-out Jaccard {score:.4f}", file=sys.stderr, flush=True)

    complete = True
    try:
        with time_budget(args.time_budget), resume_in(scratch, key=key) as block:
            seg.fit(fit_part, on_epoch=record)
    except TimeBudgetExceeded:
        complete = False
    curve = [points[e] for e in sorted(points) if e <= args.epochs]
    result = {
        "command": portable_command(["python", "benchmarks/epoch_curve.py", *(argv or sys.argv[1:])]),
        "data": {**info, "n_fit": len(fit_part), "n_heldout": len(heldout), "heldout_ids": list(heldout.ids)},
        "image_size": args.image_size,
        "epochs": args.epochs,
        "seed": args.seed,
        "device": str(resolve_device(args.device)),
        "curve": curve,
        "complete": complete,
        "rule": RULE.format(tolerance=args.tolerance),
        "chosen_epochs": None,
        "seconds": trained_seconds(),
        "versions": versions(),
    }
    if complete and curve:
        result["chosen_epochs"] = choose_epochs(
            [c["epoch"] for c in curve], [c["heldout_jaccard"] for c in curve], args.tolerance
        )
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "curve.json", result)
    if complete:
        shutil.rmtree(scratch, ignore_errors=True)
    if curve:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.plot([c["epoch"] for c in curve], [c["heldout_jaccard"] for c in curve], marker=".")
        if result["chosen_epochs"]:
            ax.axvline(
                result["chosen_epochs"], color="grey", ls="--", label=f"chosen: {result['chosen_epochs']}"
            )
            ax.legend(loc="lower right")
        ax.set(
            xlabel="epochs of f",
            ylabel="held-out Jaccard",
            title=f"f (msp), {args.image_size} px, {len(fit_part)} training images",
        )
        fig.tight_layout()
        fig.savefig(args.out / "curve.png", dpi=120)
        plt.close(fig)
    print(f"chosen epochs: {result['chosen_epochs']} ({'complete' if complete else 'stopped at the budget'})")
    return 0 if complete else 75


if __name__ == "__main__":
    raise SystemExit(main())

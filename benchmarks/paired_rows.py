"""Paired bootstrap difference between rows of two experiment runs on the same test images and seeds.

Usage::

    python benchmarks/paired_rows.py RESULTS_A.json:ROW_A RESULTS_B.json:ROW_B [--label-a A --label-b B]
        [--seeds 0,1,2]

Two rows that cannot share one experiment (e.g. ``mcdropout`` with two ``placement`` settings) are
compared with :func:`segqc.metrics.bootstrap.bootstrap_rows`, as ``segqc experiment`` compares a row
with its baseline: both runs must hold every seed's per-image values for the same test ids and
seeds and failure threshold; the same resampled images and seeds enter both sides. Prints a Markdown
table: each row's metrics with 95% intervals, and the difference A - B with its interval (``*``:
excludes zero).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from segqc.experiment.report import interval_cell
from segqc.metrics.bootstrap import bootstrap_rows
from segqc.report import TABLE_COLUMNS, format_value


def load_row(
    spec: str, seeds: list[int] | None = None
) -> tuple[list[str], list[int], float, np.ndarray, np.ndarray]:
    """Test ids, seeds, failure threshold and per-seed ``(predicted, true)`` Jaccard of
    ``RESULTS.json:ROW`` (only ``seeds``, in that order, if given)."""
    path, _, row = spec.rpartition(":")
    if not path or not row:
        sys.exit(f"error: {spec!r} is not RESULTS.json:ROW (e.g. runs/a/results.json:msp)")
    try:
        results = json.loads(Path(path).read_text())
        rows = results["per_image_by_row"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        sys.exit(f"error: {path}: not a results.json of segqc experiment ({type(err).__name__}: {err})")
    if not isinstance(rows, dict):
        sys.exit(f"error: {path}: not a results.json of segqc experiment (per_image_by_row is not an object)")
    if row not in rows:
        sys.exit(f"error: {path} has no row {row!r} (it has {', '.join(map(str, rows))})")
    if not isinstance(rows[row], dict) or "per_seed" not in rows[row]:
        sys.exit(f"error: {path} keeps one seed's per-image values only (written before per-seed values)")
    try:
        per_seed = {s["seed"]: s for s in rows[row]["per_seed"]}
        test_ids, threshold = list(results["data"]["test_ids"]), float(results["config"]["threshold"])
    except (KeyError, TypeError, ValueError) as err:
        sys.exit(f"error: {path}: its row {row!r} or its data is incomplete ({type(err).__name__}: {err})")
    if seeds is not None:
        absent = [s for s in seeds if s not in per_seed]
        if absent:
            sys.exit(f"error: {spec} has no seed {absent[0]} (it has {sorted(per_seed)})")
        per_seed = {s: per_seed[s] for s in seeds}
    try:
        predicted = np.array([s["predicted_jaccard"] for s in per_seed.values()], np.float64)
        true = np.array([s["true_jaccard"] for s in per_seed.values()], np.float64)
    except (KeyError, TypeError, ValueError) as err:
        sys.exit(f"error: {path}: the per-image values of row {row!r} are incomplete ({err})")
    if predicted.shape != (len(per_seed), len(test_ids)) or true.shape != predicted.shape:
        sys.exit(f"error: {path}: row {row!r} does not hold one value per test image and seed")
    return test_ids, list(per_seed), threshold, predicted, true


def cell(entry: dict, percent: bool, n_seeds: int, signed: bool = False) -> str:
    """``estimate [low, high]`` as the experiment's tables write them (with ``(k of n seeds)`` where a
    seed's metric is undefined); ``*``: the interval excludes zero."""
    if not signed:
        return f"{format_value(entry['estimate'], percent)} {interval_cell(entry, percent, n_seeds)}"
    return interval_cell(entry, percent, n_seeds, signed=True) + (" *" if entry.get("excludes_zero") else "")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--label-a", default="A")
    ap.add_argument("--label-b", default="B")
    ap.add_argument(
        "--seeds", default=None, help="Comma-separated seeds to compare (default: all; both runs need them)."
    )
    args = ap.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    except ValueError:
        ap.error(f"--seeds: expected comma-separated integers, got {args.seeds!r}")
    ids_a, seeds_a, threshold_a, p_a, t_a = load_row(args.a, seeds)
    ids_b, seeds_b, threshold_b, p_b, t_b = load_row(args.b, seeds)
    if ids_a != ids_b:
        sys.exit("error: the two rows are not on the same test images (the same ids in the same order)")
    if seeds_a != seeds_b:
        common = ",".join(str(x) for x in seeds_a if x in seeds_b)
        hint = f"; compare the common ones with --seeds {common}" if common else ""
        sys.exit(f"error: the two rows have different seeds ({seeds_a} and {seeds_b}){hint}")
    if threshold_a != threshold_b:
        sys.exit(f"error: the two runs have different failure thresholds ({threshold_a:g}, {threshold_b:g})")
    res = bootstrap_rows(
        {args.label_a: (p_a, t_a), args.label_b: (p_b, t_b)}, threshold=threshold_a, baseline=args.label_b
    )
    print(
        f"{len(ids_a)} test images, seeds {seeds_a}, threshold {threshold_a:g}; 95% intervals: "
        f"estimate ± t × se, se² = bootstrap variance over the test images ({res['n_resamples']} "
        "paired resamples) + seed-to-seed variance / seeds"
    )
    print()
    print("| | " + " | ".join(label for _, label, _ in TABLE_COLUMNS) + " |")
    print("|---" * (len(TABLE_COLUMNS) + 1) + "|")
    for name in (args.label_a, args.label_b):
        row = res["rows"][name]
        cells = " | ".join(cell(row[k], pct, len(seeds_a)) for k, _, pct in TABLE_COLUMNS)
        print(f"| {name} | {cells} |")
    diff = res["difference"][args.label_a]
    cells = " | ".join(cell(diff[k], pct, len(seeds_a), True) for k, _, pct in TABLE_COLUMNS)
    print(f"| {args.label_a} − {args.label_b} | {cells} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Paired bootstrap difference between rows of two experiment runs on the same test images and seeds.

Usage::

    python benchmarks/paired_rows.py RESULTS_A.json:ROW_A RESULTS_B.json:ROW_B [--label-a A --label-b B]

Two rows that cannot share one experiment (e.g. ``mcdropout`` with two ``placement`` settings) are
compared with :func:`segqc.metrics.bootstrap.bootstrap_rows`, as ``segqc experiment`` compares a row
with its baseline: both runs must hold every seed's per-image values for the same test ids and
seeds; the same resampled images and seeds enter both sides. Prints a Markdown table: each row's
metrics with 95% intervals, and the difference A - B with its interval (``*``: excludes zero).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from segqc.metrics import QUALITY_KEYS
from segqc.metrics.bootstrap import bootstrap_rows

PERCENT = {"detection_error", "auroc", "aupr_pass", "aupr_fail"}


def load_row(spec: str) -> tuple[list[str], list[int], np.ndarray, np.ndarray]:
    path, _, row = spec.rpartition(":")
    results = json.loads(Path(path).read_text())
    entry = results["per_image_by_row"][row]
    seeds = [s["seed"] for s in entry["per_seed"]]
    predicted = np.array([s["predicted_jaccard"] for s in entry["per_seed"]])
    true = np.array([s["true_jaccard"] for s in entry["per_seed"]])
    return results["data"]["test_ids"], seeds, predicted, true


def cell(entry: dict, key: str, sign: bool = False) -> str:
    scale, digits = (100, 1) if key in PERCENT else (1, 3)
    e, lo, hi = (entry[k] * scale for k in ("estimate", "low", "high"))
    f = f"{{:{'+' if sign else ''}.{digits}f}}"
    star = " *" if entry.get("excludes_zero") else ""
    return f"{f.format(e)} [{f.format(lo)}, {f.format(hi)}]{star}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--label-a", default="A")
    ap.add_argument("--label-b", default="B")
    args = ap.parse_args(argv)
    ids_a, seeds_a, p_a, t_a = load_row(args.a)
    ids_b, seeds_b, p_b, t_b = load_row(args.b)
    if ids_a != ids_b or seeds_a != seeds_b:
        sys.exit("error: the two rows are not on the same test images and seeds")
    res = bootstrap_rows({args.label_a: (p_a, t_a), args.label_b: (p_b, t_b)}, baseline=args.label_b)
    print(f"{len(ids_a)} test images, seeds {seeds_a}, {res['n_resamples']} paired bootstrap resamples")
    print()
    print("| | " + " | ".join(QUALITY_KEYS) + " |")
    print("|---" * (len(QUALITY_KEYS) + 1) + "|")
    for label in (args.label_a, args.label_b):
        print(f"| {label} | " + " | ".join(cell(res["rows"][label][k], k) for k in QUALITY_KEYS) + " |")
    diff = res["difference"][args.label_a]
    print(
        f"| {args.label_a} − {args.label_b} | "
        + " | ".join(cell(diff[k], k, True) for k in QUALITY_KEYS)
        + " |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""How well the fail-closed gate holds on labelled test images and on non-dermoscopy probes.

Usage::

    python benchmarks/bench_gate.py --model MODEL [--data DIR --protocol SPLIT] [--probe-size 224]
        [--out DIR]

For a model folder (a bundle or an ONNX export) and the test split of ``--data`` (default: the
embedded synthetic test set), through the library's own path (``segqc.assess.assess_images``):

- out-of-distribution referral: the share of the test images referred as out-of-distribution (target
  at most 2-3 %; the limit was set for ``alpha`` of held-out training images), and of the probe set
  of ``segqc.data.probes`` (target: every probe);
- the per-image lower bound of the Jaccard: its coverage (share of in-distribution test images whose
  true Jaccard is at or above it) against its stated confidence, and its mean gap below the truth;
- the referral rule: failure recall and referral rate on the test images, against the recall the
  threshold was chosen to guarantee (``threshold_rule``), and the reasons given;
- the cost of the gate's statistics, ms per image.

Writes ``gate.json`` and ``gate.md`` (the table) to ``--out``; prints the table.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

import numpy as np

from segqc.assess import assess_images
from segqc.data.probes import make_probes
from segqc.data.splits import load_train_test
from segqc.gate import OUT_OF_DISTRIBUTION
from segqc.metrics.segmentation import jaccard
from segqc.ood import image_features
from segqc.runtime import load_model
from segqc.utils import write_json


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--data", type=Path, default=None, help="data folder; default: embedded synthetic")
    parser.add_argument("--protocol", type=Path, default=None)
    parser.add_argument("--probe-size", type=int, default=224)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    model = load_model(args.model, device="cpu")
    config = model.config
    size = model.image_size
    seed = int((config.get("pipeline") or {}).get("seed", 0))
    _, test, info = load_train_test(args.data, args.protocol, size=size, seed=seed)
    if test is None or len(test) == 0:
        sys.exit("error: the data has no test split")

    results = assess_images(model, list(test.images), list(test.ids))
    true = np.array([float(jaccard(r.mask, test.masks[i])) for i, r in enumerate(results)])
    failure_jaccard = float(config.get("failure_jaccard") or 0.7)
    ood = np.array([OUT_OF_DISTRIBUTION in r.reason for r in results])
    referred = np.array([r.decision == "refer" for r in results])
    failed = true < failure_jaccard
    lower = np.array([np.nan if r.jaccard_lower is None else r.jaccard_lower for r in results])
    bounded = ~np.isnan(lower)
    reasons = collections.Counter(r.reason for r in results)
    # The same gate with the fixed threshold 0.7 instead of the model's own: what the rule costs.
    q = np.array([r.predicted_jaccard for r in results])
    unsafe = np.array([r.reason.startswith(("not finite", OUT_OF_DISTRIBUTION)) for r in results])
    referred_fixed = unsafe | (q < failure_jaccard)

    probes = make_probes(args.probe_size)
    probe_results = assess_images(model, list(probes.values()), list(probes))
    probe_rows = {r.id: {"decision": r.decision, "reason": r.reason, "predicted_jaccard": r.predicted_jaccard}
                  for r in probe_results}  # fmt: skip

    start = time.perf_counter()
    pred = model.segment(test.images[:64])
    seg_s = time.perf_counter() - start
    start = time.perf_counter()
    image_features(test.images[:64], pred.mask, pred.uncertainty)
    feature_s = time.perf_counter() - start

    gate = model.gate
    rule = config.get("threshold_rule") or {}
    report = {
        "model": {
            "path": args.model.name,
            "manifest_sha256": model.manifest_sha256,
            "method": model.method,
            "image_size": size,
            "threshold": model.threshold,
            "threshold_rule": rule.get("description"),
        },
        "data": {k: v for k, v in info.items() if not k.endswith("_ids")} | {"n_test": len(test)},
        "ood": {
            "alpha": gate.ood.alpha,
            "limit": gate.ood.limit,
            "calibration": gate.ood.calibration,
            "test_flagged": float(ood.mean()),
            "test_flagged_n": int(ood.sum()),
            "probes_flagged": float(np.mean([OUT_OF_DISTRIBUTION in r.reason for r in probe_results])),
            "probes_passed": int(sum(r.decision == "pass" for r in probe_results)),
            "probes": probe_rows,
        },
        "lower_bound": {
            "confidence": gate.conformal["confidence"],
            "margin": gate.conformal["margin"],
            "n_bounded": int(bounded.sum()),
            "coverage": float((true[bounded] >= lower[bounded]).mean()) if bounded.any() else None,
            "mean_gap": float((true[bounded] - lower[bounded]).mean()) if bounded.any() else None,
        },
        "referral": {
            "n_failures": int(failed.sum()),
            "failure_recall": float(referred[failed].mean()) if failed.any() else None,
            "referral_rate": float(referred.mean()),
            "pass_precision": float((~failed[~referred]).mean()) if (~referred).any() else None,
            "guaranteed_recall": rule.get("target_recall") if "confidence" in rule else None,
            "guarantee_confidence": rule.get("confidence"),
            "reasons": dict(reasons.most_common()),
            "fixed_threshold": {
                "threshold": failure_jaccard,
                "failure_recall": float(referred_fixed[failed].mean()) if failed.any() else None,
                "referral_rate": float(referred_fixed.mean()),
            },
        },
        "cost": {"features_ms_per_image": 1000 * feature_s / 64, "f_ms_per_image": 1000 * seg_s / 64},
        "fitness": gate.fitness,
    }
    table = render(report)
    print(table)
    if args.out:
        write_json(args.out / "gate.json", report)
        (args.out / "gate.md").write_text(table + "\n", encoding="utf-8")
    return 0


def render(report: dict) -> str:
    ood, bound, ref, model = report["ood"], report["lower_bound"], report["referral"], report["model"]
    lines = [
        f"Gate of `{model['path']}` ({model['method']}, {model['image_size']} px, threshold "
        f"{model['threshold']:g}) on {report['data']['n_test']} test images of "
        f"`{report['data'].get('source')}`",
        "",
        "| check | measured | target / stated |",
        "|---|---|---|",
        f"| test images referred as out-of-distribution | {_pct(ood['test_flagged'])} "
        f"({ood['test_flagged_n']}) "
        f"| <= 2-3 % (limit set for {ood['alpha']:.0%} of held-out training images) |",
        f"| non-dermoscopy probes referred as out-of-distribution | {_pct(ood['probes_flagged'])} "
        f"({len(ood['probes'])} probes, {ood['probes_passed']} passed) | 100 % |",
        f"| lower bound coverage (true Jaccard >= bound) | {_pct(bound['coverage'])} of {bound['n_bounded']} "
        f"| >= {bound['confidence']:.0%} (margin {bound['margin']:.3f}) |",
        f"| mean gap, true Jaccard - bound | {bound['mean_gap']:.3f} | |"
        if bound["mean_gap"] is not None else "| mean gap | n/a | |",
        f"| failure recall ({ref['n_failures']} failures) | {_pct(ref['failure_recall'])} | "
        + (f">= {ref['guaranteed_recall']:g} with probability {ref['guarantee_confidence']:g} |"
           if ref["guaranteed_recall"] is not None else "(no guarantee asked) |"),
        f"| referral rate | {_pct(ref['referral_rate'])} | |",
        f"| the same gate at the fixed threshold {ref['fixed_threshold']['threshold']:g}: failure recall, "
        f"referral rate | {_pct(ref['fixed_threshold']['failure_recall'])}, "
        f"{_pct(ref['fixed_threshold']['referral_rate'])} | |",
        f"| passed images that are not failures | {_pct(ref['pass_precision'])} | |",
        f"| cost of the gate's statistics | {report['cost']['features_ms_per_image']:.2f} ms/image "
        f"(f: {report['cost']['f_ms_per_image']:.1f} ms/image) | |",
        "",
        "Reasons: " + ", ".join(f"{k} {v}" for k, v in ref["reasons"].items()),
        "",
        "Probes: " + ", ".join(f"{k} ({v['reason']})" for k, v in ood["probes"].items()),
    ]  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

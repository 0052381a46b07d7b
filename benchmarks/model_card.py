"""The model card of a shipped model: its test metrics with intervals, generated, never typed.

Usage::

    python benchmarks/model_card.py --model src/segqc/models/isic2017 --name isic2017 \\
        --data ../shared/data/isic2017 --protocol ../shared/data/isic2017/split.json \\
        --train-command "segqc train ..." --doc docs/models/isic2017.md \
        [--target quality.auroc=0.92 ...] [--note "a limit the evaluation cannot see" ...]

Runs the model as a user gets it (``segqc.assess.assess_images``: each test image at the data's own
resolution, resized to the model's size and back) on the protocol's test images, and compares with
their expert masks at that resolution:

- segmentation: mean Jaccard and Dice of f's masks, failure rate (Jaccard < 0.7);
- quality prediction: every metric of Table 1 (RMSE, detection error, AUROC, AUPR-Pass/Fail, AURC,
  Spearman) of g's predicted Jaccard against the true one;
- the gate at the model's threshold: referral rate, failure recall (failures referred), failures that
  passed, share referred as out-of-distribution;

each with a 95% interval over the test images, the estimate +- 1.96 bootstrap standard errors (2000
resamples, seed 0; :func:`segqc.metrics.bootstrap.seed_image_interval`; the model is one trained
network, so there is no seed-to-seed spread in it). Writes the model folder's
``card.json`` (what ``segqc models`` shows), the Markdown card ``--doc`` and its calibration plot
(predicted against true Jaccard) beside it.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np

from segqc.assess import assess_images
from segqc.data.readers import find_pairs
from segqc.data.splits import load_train_test
from segqc.experiment.report import format_interval
from segqc.gate import OUT_OF_DISTRIBUTION
from segqc.metrics import QUALITY_KEYS, quality_metrics
from segqc.metrics.bootstrap import bootstrap_rows, resample_indices, seed_image_interval
from segqc.metrics.segmentation import jaccard
from segqc.report import TABLE_COLUMNS, format_value
from segqc.runtime import load_model
from segqc.utils import write_json

N_RESAMPLES, CONFIDENCE = 2000, 0.95
IN_PERCENT = {key for key, _, percent in TABLE_COLUMNS if percent}
LABELS = {
    "rmse": "RMSE of the predicted Jaccard",
    "detection_error": "Detection error (%)",
    "auroc": "Failure AUROC (%)",
    "aupr_pass": "AUPR-Pass (%)",
    "aupr_fail": "AUPR-Fail (%)",
    "aurc": "AURC (risk 1 - Jaccard)",
    "spearman": "Spearman's rho",
}

TEXT = {
    "title": "Quality control of dermoscopic lesion segmentation (ISIC 2017)",
    "intended_use": (
        "Flag likely failed automatic segmentations of skin lesions in dermoscopic images "
        "(Jaccard < 0.7 against an expert) so that a person reviews them; quality control of the "
        "segmentation, not a diagnosis of the lesion."
    ),
    "not_for": [
        "diagnosis or triage of skin lesions (melanoma or otherwise);",
        "clinical photographs, histology or any image that is not a dermoscopic lesion image "
        "(such inputs are referred as out-of-distribution, but that check is statistical);",
        "judging segmentations made by another model (g learned the errors of this f).",
    ],
    "limits": [
        "Trained on {n_train} ISIC 2017 training images (the rest held out for the gate), one seed. The ISIC "
        "archive comes mostly from fair-skinned patients and a limited number of clinical centres and "
        "dermatoscopes; how it does on other populations and devices is not measured.",
        "The guarantees of the gate (out-of-distribution limit, lower bound) hold on average over "
        "images like the held-out training images, not for each image (docs/safety.md).",
        "Images are resized to the model's square input size; lesions much smaller than a few pixels "
        "at that size are not segmented reliably.",
    ],
}


def interval(values: np.ndarray, stat: Any, draws: np.ndarray) -> dict[str, float]:
    """Estimate and interval of ``stat`` (a proportion) over the rows of ``draws`` (bootstrap indices),
    as the quality metrics' intervals are made."""
    reps = np.array([stat(values[d]) for d in draws])
    estimate = float(stat(values))
    one = seed_image_interval(estimate, reps, np.array([estimate]), CONFIDENCE, (0.0, 1.0))
    return {"estimate": estimate, "low": one["low"], "high": one["high"]}


def evaluate(model_dir: Path, data: str, protocol: str) -> dict[str, Any]:
    model = load_model(model_dir, device="cpu")
    _, test, info = load_train_test(data, protocol, size=224)
    if test is None:
        sys.exit("error: the protocol has no test list")
    results = assess_images(model, list(test.images), list(test.ids))
    true = np.array([float(jaccard(r.mask, m)) for r, m in zip(results, test.masks)])
    dice = 2 * true / (1 + true)
    q = np.array([r.predicted_jaccard for r in results], dtype=np.float64)
    referred = np.array([r.decision == "refer" for r in results])
    ood = np.array([OUT_OF_DISTRIBUTION in r.reason for r in results])
    failure = float(model.config.get("failure_jaccard") or 0.7)
    failed = true < failure
    draws = resample_indices(len(true), n_resamples=N_RESAMPLES, seed=0)  # the draws of the quality rows

    both = np.stack([referred, failed], 1)

    def recall(b: np.ndarray) -> float:  # failures referred, on one draw of (referred, failed) rows
        return float(b[b[:, 1], 0].mean()) if b[:, 1].any() else float("nan")

    quality = bootstrap_rows({"model": (q, true)}, threshold=failure, n_resamples=N_RESAMPLES, seed=0)
    lower = np.array([np.nan if r.jaccard_lower is None else r.jaccard_lower for r in results])
    bounded = ~np.isnan(lower)
    # The protocol's test images come from two official parts (validation, and training images never
    # trained on), which differ in how often f fails: report each, so no part hides behind the mean.
    pairs = find_pairs(data)
    part = np.array([pairs[i].image.parent.name for i in test.ids])
    by_part = {
        name: part_summary(true[sel], q[sel], referred[sel], lower[sel], failure)
        for name in sorted(set(part))
        for sel in [part == name]
    }
    return {
        "n_test": len(test),
        "data": {k: v for k, v in info.items() if not k.endswith("_ids")},
        "threshold": model.threshold,
        "failure_jaccard": failure,
        "segmentation": {
            "jaccard": interval(true, np.mean, draws),
            "dice": interval(dice, np.mean, draws),
            "failure_rate": interval(failed.astype(float), np.mean, draws),
        },
        "quality": quality["rows"]["model"],
        "gate": {
            "referral_rate": interval(referred.astype(float), np.mean, draws),
            "failure_recall": interval(both, recall, draws),
            "passed_failures": int((failed & ~referred).sum()),
            "n_failures": int(failed.sum()),
            "out_of_distribution_rate": float(ood.mean()),
        },
        "lower_bound": {
            "confidence": model.config.get("gate", {}).get("conformal", {}).get("confidence"),
            # Out-of-distribution and non-finite images get no bound (None): counted out, not as misses.
            "n_bounded": int(bounded.sum()),
            "coverage": interval(np.stack([true >= lower, bounded], 1), held_share, draws),
        },
        "by_part": by_part,
        "per_image": {"ids": list(test.ids), "true": true.tolist(), "predicted": q.tolist()},
    }


def part_summary(
    true: np.ndarray, predicted: np.ndarray, referred: np.ndarray, lower: np.ndarray, failure: float
) -> dict[str, float]:
    """The card's main numbers on one part of the test images (no intervals: the parts are small)."""
    failed = true < failure
    auroc = quality_metrics(predicted, true, failure)["auroc"] if 0 < failed.sum() < len(true) else np.nan
    return {
        "n": int(len(true)),
        "jaccard_mean": float(true.mean()),
        "failure_rate": float(failed.mean()),
        "auroc": float(auroc),
        "referral_rate": float(referred.mean()),
        "failure_recall": float(referred[failed].mean()) if failed.any() else float("nan"),
        "n_bounded": int((~np.isnan(lower)).sum()),
        "lower_bound_coverage": held_share(np.stack([true >= lower, ~np.isnan(lower)], 1)),
    }


def held_share(rows: np.ndarray) -> float:
    """Share of the images with a bound (column 1) whose bound held (column 0)."""
    rows = rows.astype(bool)
    return float(rows[rows[:, 1], 0].mean()) if rows[:, 1].any() else float("nan")


#: The card's metrics a target can be set on (all fractions; Spearman's rho in [-1, 1]).
TARGET_KEYS = (
    "segmentation.jaccard_mean", "segmentation.dice_mean", "segmentation.failure_rate", "quality.auroc",
    "quality.rmse", "quality.spearman", "referral.referral_rate", "referral.failure_recall",
)  # fmt: skip
_NUMBER = re.compile(r"-?(\d+(\.\d*)?|\.\d+)", re.ASCII)


def parse_targets(items: list[str]) -> dict[str, float]:
    """``KEY=VALUE`` targets, e.g. ``quality.auroc=0.92`` (checked before the evaluation runs)."""
    targets: dict[str, float] = {}
    for item in items:
        key, _, value = (x.strip() for x in item.partition("="))
        low = -1.0 if key == "quality.spearman" else 0.0
        if key not in TARGET_KEYS:
            raise SystemExit(
                f"error: --target {item!r}: unknown metric {key!r}; known: {', '.join(TARGET_KEYS)}"
            )
        if not _NUMBER.fullmatch(value) or not low <= float(value) <= 1.0:
            raise SystemExit(f"error: --target {item!r}: expected {key}=NUMBER in [{low:g}, 1] (a fraction)")
        if key in targets:
            raise SystemExit(f"error: --target {key} is given twice")
        targets[key] = float(value)
    return targets


#: Metrics where lower is better; a target for them is a ceiling.
LOWER_IS_BETTER = {"segmentation.failure_rate", "quality.rmse", "referral.referral_rate"}


def targets_limit(targets: dict[str, float], metrics: dict[str, float]) -> str:
    """Whether the model met the targets set for it, judged on the unrounded measured values."""
    parts, missed = [], 0
    for key, goal in targets.items():
        lower = key in LOWER_IS_BETTER
        value = metrics[key]
        met = value <= goal if lower else value >= goal  # False for NaN: an undefined metric misses
        missed += not met
        shown = f"{value:.4f}" if math.isfinite(value) else "undefined"
        parts.append(f"{key} {'<=' if lower else '>='} {goal:g}: {shown}, {'met' if met else 'missed'}")
    verdict = "It misses targets set for it" if missed else "It meets the targets set for it"
    return f"{verdict} (on the test images; {'; '.join(parts)})."


def operating_point(ev: dict[str, Any]) -> str:
    """The limit that the default threshold's measured referral and recall set."""
    gate = ev["gate"]
    return (
        f"At the default threshold ({ev['threshold']:g}) it refers "
        f"{fmt(gate['referral_rate'], True)}% of the test images and catches "
        f"{fmt(gate['failure_recall'], True)}% of the failures ({gate['passed_failures']} of "
        f"{gate['n_failures']} failures passed). A gate that must catch a stated share of failures is "
        "made from this model, without training, with `segqc recalibrate --model MODEL --data DATA "
        "--target-failure-recall R --confidence C` (or trained with those options of `segqc train`; "
        "docs/safety.md), at the cost of more referrals."
    )


def parts_limit(ev: dict[str, Any]) -> str:
    """The limit that the difference between the parts of the test set sets."""
    parts = ev["by_part"]
    confidence = ev["lower_bound"]["confidence"]
    each = "; ".join(
        f"{name} ({p['n']} images): {100 * p['failure_rate']:.1f}% failures, "
        f"{100 * p['failure_recall']:.1f}% of them referred, "
        f"bound held for {100 * p['lower_bound_coverage']:.1f}% of the {p['n_bounded']} with one"
        for name, p in parts.items()
    )
    return (
        "How often f fails, and how often the lower bound holds, depend on where the images come from "
        f"(stated confidence of the bound: {100 * confidence:.0f}%, on average over images like the held-out "
        f"training images): {each}."
    )


def fmt(entry: dict[str, float], percent: bool = False) -> str:
    """``estimate [low, high]`` as the experiment's tables write them."""
    return (
        f"{format_value(entry['estimate'], percent)} {format_interval(entry['low'], entry['high'], percent)}"
    )


def calibration_plot(true: np.ndarray, predicted: np.ndarray, threshold: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    ax.scatter(predicted, true, s=6, alpha=0.35, color="tab:blue", label="test images")
    edges = np.quantile(predicted, np.linspace(0, 1, 11))
    which = np.clip(np.searchsorted(edges, predicted, side="right") - 1, 0, 9)
    centres = [predicted[which == b].mean() for b in range(10) if (which == b).any()]
    means = [true[which == b].mean() for b in range(10) if (which == b).any()]
    ax.plot(centres, means, "o-", color="tab:orange", label="mean true Jaccard per decile")
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfect calibration")
    ax.axvline(threshold, color="tab:red", lw=1, ls=":", label=f"threshold {threshold:g}")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="predicted Jaccard (g)", ylabel="true Jaccard")
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--protocol", default=None)
    ap.add_argument("--train-command", required=True, help="The command that trained the model.")
    ap.add_argument("--doc", type=Path, required=True)
    ap.add_argument(
        "--target",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="A target set for the model, as a fraction, e.g. segmentation.jaccard_mean=0.80 or "
        f"quality.auroc=0.92; KEY one of {', '.join(TARGET_KEYS)} (for "
        f"{', '.join(sorted(LOWER_IS_BETTER))} a ceiling, else a floor). The card says whether each was "
        "met. Repeatable.",
    )
    ap.add_argument(
        "--note",
        action="append",
        default=[],
        help="A known limit the evaluation cannot see (e.g. how the setting was chosen). Repeatable.",
    )
    args = ap.parse_args(argv)
    targets = parse_targets(args.target)
    bundle = json.loads((args.model / "bundle.json").read_text())
    ev = evaluate(args.model, args.data, args.protocol)
    plot = args.doc.with_name(f"{args.name}-calibration.png")
    args.doc.parent.mkdir(parents=True, exist_ok=True)
    calibration_plot(
        np.array(ev["per_image"]["true"]), np.array(ev["per_image"]["predicted"]), ev["threshold"], plot
    )
    command = shlex.join(
        [
            "python", "benchmarks/model_card.py", "--model", args.model.as_posix(), "--name", args.name,
            "--data", args.data, *(["--protocol", args.protocol] if args.protocol else []),
            "--train-command", args.train_command, "--doc", args.doc.as_posix(),
            *(a for t in args.target for a in ("--target", t)),
            *(a for n in args.note for a in ("--note", n)),
        ]
    )  # fmt: skip
    pipeline = bundle["pipeline"]
    measured = {
        "segmentation.jaccard_mean": ev["segmentation"]["jaccard"]["estimate"],
        "segmentation.dice_mean": ev["segmentation"]["dice"]["estimate"],
        "segmentation.failure_rate": ev["segmentation"]["failure_rate"]["estimate"],
        **{f"quality.{k}": ev["quality"][k]["estimate"] for k in ("auroc", "rmse", "spearman")},
        "referral.threshold": ev["threshold"],
        "referral.referral_rate": ev["gate"]["referral_rate"]["estimate"],
        "referral.failure_recall": ev["gate"]["failure_recall"]["estimate"],
    }
    metrics = {k: v if k == "referral.threshold" else round(v, 4) for k, v in measured.items()}
    card = {
        "name": args.name,
        "title": TEXT["title"],
        "description": (
            f"f: U-Net (width {pipeline['base_width']}), uncertainty method {bundle['method']}, "
            f"{bundle['image_size']} x {bundle['image_size']} px; g: VGG-style CNN on image, mask and map; "
            f"refers an image when its predicted Jaccard is below {ev['threshold']:g} or it fails the gate."
        ),
        "intended_use": TEXT["intended_use"] + " Not for: " + " ".join(TEXT["not_for"]),
        "data": (
            f"ISIC 2017 Part 1 (lesion segmentation), protocol isic2017-600: trained on "
            f"{bundle['data'].get('n_train')} training images "
            f"({bundle['data'].get('n_calibration')} more, 20% of the training split, held out for the "
            "gate), "
            f"tested on {ev['n_test']} images at 224 x 224 px."
        ),
        "training": args.train_command,
        "metrics": metrics,
        "limits": [
            *(x.format(n_train=bundle["data"].get("n_train")) for x in TEXT["limits"]),
            *([targets_limit(targets, measured)] if targets else []),
            *(" ".join(n.split()) for n in args.note if n.strip()),  # one line each: a bullet
            operating_point(ev),
            parts_limit(ev),
        ],
        "card": args.doc.as_posix(),
    }
    write_json(args.model / "card.json", card)
    (args.doc.with_suffix(".json")).write_text(json.dumps({k: v for k, v in ev.items()}, indent=1) + "\n")
    text = render(card, ev, plot.name, bundle, command)
    args.doc.write_text(text, encoding="utf-8")
    print(text)
    return 0


def render(card: dict[str, Any], ev: dict[str, Any], plot: str, bundle: dict[str, Any], command: str) -> str:
    seg, gate, quality, data = ev["segmentation"], ev["gate"], ev["quality"], bundle["data"]
    lines = [
        f"# Model card: `{card['name']}`",
        "",
        f"{card['title']}. Shipped inside the package: "
        f"`segqc predict --model {card['name']} IMAGES --out OUT`, `segqc serve --model {card['name']}`; "
        f"`segqc models {card['name']}` prints this card's summary.",
        "",
        "This card is generated by `benchmarks/model_card.py` (command at the end); no number in it is "
        "typed by hand.",
        "",
        "## Model",
        "",
        card["description"],
        "",
        "## Intended use",
        "",
        TEXT["intended_use"],
        "",
        "Not for:",
        "",
        *[f"- {x}" for x in TEXT["not_for"]],
        "",
        "## Data",
        "",
        f"ISIC 2017 Part 1, protocol isic2017-600: trained on {data['n_train']} of the protocol's "
        f"{data['n_train'] + data['n_calibration']} training images "
        f"(the other {data['n_calibration']} held out for the gate: out-of-distribution limit, lower-bound "
        f"margin, fitness), evaluated on its {ev['n_test']} test images ("
        + " + ".join(f"{p['n']} from {name}" for name, p in ev["by_part"].items())
        + "; none used for training), at the data's 224 x 224 px.",
        "",
        "## Training",
        "",
        "```",
        card["training"],
        "```",
        "",
        "## Test metrics (isic2017-600 test, 95% bootstrap intervals over the test images)",
        "",
        "| Metric | Value [95% CI] |",
        "|---|---|",
        f"| Segmentation Jaccard (mean) | {fmt(seg['jaccard'])} |",
        f"| Segmentation Dice (mean) | {fmt(seg['dice'])} |",
        f"| Failures (Jaccard < {ev['failure_jaccard']:g}, %) | {fmt(seg['failure_rate'], True)} |",
        *[f"| {LABELS[k]} | {fmt(quality[k], k in IN_PERCENT)} |" for k in QUALITY_KEYS],
        "",
        f"## Referral at the default threshold ({ev['threshold']:g})",
        "",
        "| | Value [95% CI] |",
        "|---|---|",
        f"| Images referred (%) | {fmt(gate['referral_rate'], True)} |",
        f"| Failures referred (recall, %) | {fmt(gate['failure_recall'], True)} |",
        f"| Failures that passed | {gate['passed_failures']} of {gate['n_failures']} |",
        f"| Referred as out-of-distribution (%) | {100 * gate['out_of_distribution_rate']:.1f} |",
        "",
        f"## Lower bound of the Jaccard (stated confidence {100 * ev['lower_bound']['confidence']:.0f}%)",
        "",
        "`jaccard_lower` in `quality.csv` held (true Jaccard at or above it) for "
        f"{fmt(ev['lower_bound']['coverage'], True)}% of the {ev['lower_bound']['n_bounded']} test images "
        "that have one (out-of-distribution images get none).",
        "",
        "## By part of the test set",
        "",
        "The test images are the official ISIC 2017 validation images and official training images never "
        "trained on; they differ (no intervals: the parts are small).",
        "",
        "| Official folder | Images | Jaccard | Failures (%) | AUROC (%) | Referred (%) "
        "| Failures referred (%) | With a bound | Bound held (%) |",
        "|---|---|---|---|---|---|---|---|---|",
        *[
            f"| {name} | {p['n']} | {p['jaccard_mean']:.3f} | {100 * p['failure_rate']:.1f} | "
            f"{100 * p['auroc']:.1f} | {100 * p['referral_rate']:.1f} | {100 * p['failure_recall']:.1f} | "
            f"{p['n_bounded']} | {100 * p['lower_bound_coverage']:.1f} |"
            for name, p in ev["by_part"].items()
        ],
        "",
        "## Calibration",
        "",
        f"![predicted against true Jaccard]({plot})",
        "",
        "Each dot is a test image; the orange line is the mean true Jaccard of each tenth of the images "
        "sorted by predicted Jaccard.",
        "",
        "## Known limits",
        "",
        *[f"- {x}" for x in card["limits"]],
        "",
        "## Reproduce",
        "",
        "```",
        command,
        "```",
        "",
        f"Model folder checksum (`manifest_sha256`): `{bundle.get('manifest_sha256')}`.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())

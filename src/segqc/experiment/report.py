"""Writing an experiment: table1.md (the paper's Table 1 layout), figures/fig2.png, figures/fig3.png
and a short report.md linking them. Matplotlib is imported lazily."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from segqc.data.dataset import SegData
from segqc.experiment.config import CROSSFIT_SUFFIX
from segqc.metrics import jaccard
from segqc.report import (
    TABLE_COLUMNS,
    format_value,
    pick_examples,
    plot_grid,
    plot_scatter,
    versions_line,
    write_markdown,
)
from segqc.visualize import error_overlay, heatmap

#: The paper's names for our rows (DeVries & Taylor 2018, "Leveraging Uncertainty Estimates for
#: Predicting Segmentation Quality", arXiv:1807.00502).
PAPER_NAMES = {
    "msp": "baseline (max softmax)",
    "mcdropout": "MC dropout",
    "hcnn": "HCNN",
    "lce": "LCE",
    "no-uncertainty": "no uncertainty",
    "qualitynet": "QualityNet",
    "rca": "RCA",
}

#: The paper's published Table 1 values, as fractions (like ours), keyed by our row names.
#: EMPTY ON PURPOSE: the full text of the paper (arXiv:1807.00502; e.g. the copy at
#: https://deepai.org/publication/leveraging-uncertainty-estimates-for-predicting-segmentation-quality)
#: could not be read beyond its introduction with the tools available when this was written, and
#: numbers we cannot cite are not invented. Fill in from the paper's Table 1 to show them.
PAPER_TABLE1: dict[str, dict[str, float]] = {}

#: The columns the paper reports; AURC and Spearman are ours only.
PAPER_KEYS = ("rmse", "detection_error", "auroc", "aupr_pass", "aupr_fail")


def _base_name(row_name: str) -> str:
    return row_name[: -len(CROSSFIT_SUFFIX)] if row_name.endswith(CROSSFIT_SUFFIX) else row_name


def table1_markdown(results: dict[str, Any]) -> str:
    """The paper's Table 1 layout: an "ours" line per row (mean ± std over seeds), the paper's line
    below each row it reports, then the segmentation quality of each f."""
    cfg = results["config"]
    seeds = cfg["seeds"]
    data = results["data"]
    lines = [
        "# Table 1: predicting segmentation quality",
        "",
        f"Test set: {data.get('n_test', len(data.get('test_ids', [])))} images ({data.get('source', '?')}"
        + (f", protocol {Path(data['protocol']).name}" if data.get("protocol") else "")
        + f"); g trained on {data.get('n_train', len(data.get('train_ids', [])))} images. "
        f"Mean ± standard deviation over {len(seeds)} seed{'s' if len(seeds) > 1 else ''} "
        f"({', '.join(map(str, seeds))}). "
        "Detection error, AUROC and AUPR in percent; RMSE, AURC and Spearman as fractions. "
        f"Pass = true Jaccard >= {cfg['threshold']}. AURC (risk = 1 - Jaccard, lower is better) and "
        "Spearman's rho are not in the paper.",
        "",
        "| Method | Source | " + " | ".join(h for _, h, _ in TABLE_COLUMNS) + " |",
        "|---|---" + "|---" * len(TABLE_COLUMNS) + "|",
    ]
    any_paper = False
    for row in results["rows"]:
        base = _base_name(row["method"])
        cells = [
            format_value(row["metrics"].get(k), pct, row.get("std", {}).get(k)) for k, _, pct in TABLE_COLUMNS
        ]
        lines.append(f"| {row['method']} | ours | " + " | ".join(cells) + " |")
        paper = PAPER_TABLE1.get(base, {})
        if paper and row.get("quality_train") != "crossfit":
            any_paper = True
            cells = [
                format_value(paper.get(k), pct) if k in PAPER_KEYS else "–" for k, _, pct in TABLE_COLUMNS
            ]
            lines.append(f"| | paper: {PAPER_NAMES[base]} | " + " | ".join(cells) + " |")

    lines += [
        "",
        "## Segmentation (test set)",
        "",
        "| f (uncertainty method) | mean Jaccard | mean Dice | "
        f"failures (Jaccard < {cfg['threshold']}) (%) |",
        "|---|---|---|---|",
    ]
    for method, seg in results["segmentation"].items():
        lines.append(
            f"| {method} | {format_value(seg['jaccard_mean'], False, seg.get('jaccard_std'))} | "
            f"{format_value(seg['dice_mean'], False, seg.get('dice_std'))} | "
            f"{format_value(seg['failure_rate'], True, seg.get('failure_rate_std'))} |"
        )
    notes = [
        "",
        "## Notes",
        "",
        f"- Each method row is the paper's g(x, y^, z) on the maps of that method's f; the baselines "
        f"({', '.join(cfg['baselines']) or 'none'}) read the masks of the "
        f"`{results.get('baseline_f', cfg['methods'][0])}` f.",
        "- `(crossfit)` rows: g trained on out-of-fold predictions of f over its training images "
        f"({cfg['folds']} folds); the other rows train g on f's predictions over its own training images, "
        "as in the paper. RCA does not learn from f's predictions and has one row.",
        (
            "- paper lines: DeVries & Taylor (2018), Table 1 (ISIC 2017, 224x224, f 120 epochs, g 30 epochs)."
            if any_paper
            else "- The paper's published values (DeVries & Taylor 2018, Table 1) were not available to us "
            "when this table was made, so no paper lines are shown; fill in `PAPER_TABLE1` in "
            "`segqc/experiment/report.py` to show them beside ours."
        ),
        "",
    ]
    return "\n".join(lines + notes)


def plot_fig2(
    test: SegData,
    maps: dict[str, tuple[np.ndarray, np.ndarray]],
    path: Path,
    *,
    count: int = 6,
    threshold: float = 0.7,
) -> None:
    """Figure-2-style grid for good and failed segmentations of the first method's f: per image, the
    image, its error overlay (TP green, FP red, FN blue) and each method's uncertainty map."""
    methods = list(maps)
    first_mask = maps[methods[0]][0]
    true_j = {m: jaccard(mask, test.masks) for m, (mask, _) in maps.items()}
    cells = []
    for i in pick_examples(true_j[methods[0]], count, threshold):
        row = [
            (test.images[i], test.ids[i]),
            (
                error_overlay(test.images[i], first_mask[i], test.masks[i]),
                f"{methods[0]} mask, J={true_j[methods[0]][i]:.2f}",
            ),
        ]
        row += [
            (heatmap(maps[m][1][i].astype(np.float32)), f"{m} map (J={true_j[m][i]:.2f})") for m in methods
        ]
        cells.append(row)
    suptitle = "TP green, FP red, FN blue; uncertainty maps scaled to their own maximum"
    plot_grid(cells, path, suptitle=suptitle, cell_size=(2.3, 2.4), fontsize=8)


def write_experiment_report(
    out_dir: str | Path,
    results: dict[str, Any],
    *,
    test: SegData,
    maps: dict[str, tuple[np.ndarray, np.ndarray]],
) -> Path:
    """Write table1.md, figures/fig2.png, figures/fig3.png and report.md; return report.md's path.

    Args:
        out_dir: the experiment folder.
        results: the content of results.json.
        test: the test set (images, ground truth, ids) for figure 2.
        maps: per method, ``(mask, uncertainty)`` of the first seed on the test images, ``(N, H, W)``.
    """
    out = Path(out_dir)
    cfg = results["config"]
    table = table1_markdown(results)
    write_markdown(out / "table1.md", [table])
    plot_fig2(test, maps, out / "figures" / "fig2.png", threshold=cfg["threshold"])
    per_row = {k: (v["true_jaccard"], v["predicted_jaccard"]) for k, v in results["per_image_by_row"].items()}
    # each row has its own f, hence its own true Jaccard
    plot_scatter(
        per_row, out / "figures" / "fig3.png", threshold=cfg["threshold"], max_cols=4, size=3.4, marker_size=7
    )

    units = results.get("units", {})
    command = " ".join(results.get("command") or [])
    lines = [
        "# segqc experiment",
        "",
        f"Methods {', '.join(cfg['methods'])}; baselines {', '.join(cfg['baselines']) or 'none'}; "
        f"seeds {', '.join(map(str, cfg['seeds']))}; images {cfg['image_size']} px; "
        f"f {cfg['seg_epochs']} epochs "
        f"(width {cfg['base_width']}), g {cfg['quality_epochs']} epochs (width {cfg['quality_width']}); "
        f"g trained on: {cfg['quality_train']}.",
        "",
        "- [Table 1](table1.md) (below), [results.json](results.json)",
        "- [Figure 2: error overlays and uncertainty maps](figures/fig2.png)",
        "- [Figure 3: true vs predicted Jaccard](figures/fig3.png)",
        "",
        table.split("\n", 1)[1].lstrip("\n").replace("\n## ", "\n### "),
        "![Figure 2](figures/fig2.png)",
        "",
        "![Figure 3](figures/fig3.png)",
        "",
        "## Run",
        "",
        f"- command: `{command}`",
        f"- wall time {results.get('wall_time_s', 0.0):.0f} s; compute time of all units "
        f"{results.get('compute_time_s', 0.0):.0f} s; units computed {units.get('computed', '?')}, "
        f"reused from the cache {units.get('cached', '?')}",
        f"- machine: {', '.join(f'{k} {v}' for k, v in results.get('machine', {}).items())}",
        versions_line(results["versions"]),
        "",
    ]
    return write_markdown(out / "report.md", lines)

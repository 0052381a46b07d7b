"""Writing results: results.json, a markdown report and the figures (matplotlib, imported lazily)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segqc.metrics import jaccard
from segqc.utils import atomic_write, write_json
from segqc.visualize import error_overlay, heatmap

#: Table columns: (results key, header, scale to percent).
TABLE_COLUMNS = (
    ("rmse", "RMSE", False),
    ("detection_error", "Detection Error (%)", True),
    ("auroc", "AUROC (%)", True),
    ("aupr_pass", "AUPR-Pass (%)", True),
    ("aupr_fail", "AUPR-Fail (%)", True),
    ("aurc", "AURC", False),
    ("spearman", "Spearman", False),
)


def format_value(value: float | None, percent: bool, std: float | None = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    scale, digits = (100.0, 1) if percent else (1.0, 3)
    text = f"{value * scale:.{digits}f}".replace("-", "−")  # the tables' minus sign, as in differences
    return text if std is None else f"{text} ± {std * scale:.{digits}f}"


def quality_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table of quality metrics, one row per method (RMSE, AURC, Spearman as fractions)."""
    lines = ["| Method | " + " | ".join(h for _, h, _ in TABLE_COLUMNS) + " |"]
    lines.append("|---" * (len(TABLE_COLUMNS) + 1) + "|")
    for row in rows:
        cells = [format_value(row["metrics"].get(k), pct) for k, _, pct in TABLE_COLUMNS]
        lines.append(f"| {row['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def save_figure(fig: Any, path: Path) -> None:
    with atomic_write(path) as fh:
        fig.savefig(fh, format="png", dpi=110, bbox_inches="tight")


def pick_examples(true_j: np.ndarray, count: int, threshold: float = 0.7) -> list[int]:
    """Indices of about half good and half failed segmentations, spread over the range."""
    order = np.argsort(true_j)
    failed, good = order[true_j[order] < threshold], order[true_j[order] >= threshold]
    n_fail = min(len(failed), count // 2)
    n_good = min(len(good), count - n_fail)
    n_fail = min(len(failed), count - n_good)

    def spread(idx: np.ndarray, k: int) -> list[int]:
        return [] if k == 0 else [int(idx[i]) for i in np.linspace(0, len(idx) - 1, k).round().astype(int)]

    return spread(failed, n_fail) + spread(good, n_good)


def plot_grid(
    cells: list[list[tuple[np.ndarray, str]]],
    path: Path,
    *,
    suptitle: str,
    cell_size: tuple[float, float] = (2.5, 2.5),
    fontsize: float = 9,
    rect: tuple[float, float, float, float] | None = None,
) -> None:
    """A grid of images, one figure row per list of ``(image, title)`` cells, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nrows, ncols = len(cells), max((len(r) for r in cells), default=1)
    figsize = (cell_size[0] * ncols, cell_size[1] * nrows)
    fig, axes = plt.subplots(nrows, ncols, figsize=figsize, squeeze=False)
    for row_axes, row in zip(axes, cells):
        for ax, (panel, title) in zip(row_axes, row):
            ax.imshow(panel)
            ax.set_title(title, fontsize=fontsize)
            ax.axis("off")
    fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout(**({} if rect is None else {"rect": rect}))
    save_figure(fig, path)
    plt.close(fig)


def plot_overlays(
    images: np.ndarray,
    true_masks: np.ndarray,
    pred_masks: np.ndarray,
    uncertainty: np.ndarray,
    predicted_j: np.ndarray,
    path: Path,
    *,
    count: int = 6,
    threshold: float = 0.7,
) -> None:
    """Figure-2-style grid: per example, the image, the error overlay and the uncertainty map."""
    true_j = jaccard(pred_masks, true_masks)
    cells = [
        [
            (images[i], "image"),
            (
                error_overlay(images[i], pred_masks[i], true_masks[i]),
                f"J={true_j[i]:.2f}, predicted {predicted_j[i]:.2f}",
            ),
            (heatmap(uncertainty[i]), "uncertainty"),
        ]
        for i in pick_examples(true_j, count, threshold)
    ]
    plot_grid(cells, path, suptitle="TP green, FP red, FN blue", rect=(0, 0, 1, 0.98))


def plot_scatter(
    panels: dict[str, tuple[np.ndarray, np.ndarray]],
    path: Path,
    *,
    threshold: float = 0.7,
    max_cols: int | None = None,
    size: float = 3.6,
    marker_size: float = 8,
) -> None:
    """Figure-3-style scatter of true vs predicted Jaccard, one panel per ``name: (true, predicted)``
    (each panel may have its own true Jaccard, e.g. its own f), threshold lines drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(len(panels), 1)
    ncols = n if max_cols is None else min(max_cols, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax, (name, (true_j, q)) in zip(axes.flat, panels.items()):
        true_j, q = np.asarray(true_j, float), np.asarray(q, float)
        fail = true_j < threshold
        ax.scatter(true_j[~fail], q[~fail], s=marker_size, alpha=0.6, label="pass", color="tab:green")
        ax.scatter(true_j[fail], q[fail], s=marker_size, alpha=0.6, label="fail", color="tab:red")
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8)
        ax.axvline(threshold, color="black", ls="--", lw=0.8)
        ax.axhline(threshold, color="black", ls="--", lw=0.8)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="true Jaccard", ylabel="predicted Jaccard", title=name)
        ax.legend(loc="lower right", fontsize=8 if marker_size >= 8 else 7)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def _total_seconds(timing: dict[str, float]) -> float:
    return timing.get("total_s", sum(timing.values()))


def write_report(out_dir: str | Path, results: dict[str, Any], *, title: str = "segqc report") -> Path:
    """Write ``report.md`` and ``results.json`` in ``out_dir`` (figures are written beforehand)."""
    out = Path(out_dir)
    write_json(out / "results.json", results)
    seg = results["segmentation"]
    cfg = results["config"]
    lines = [
        f"# {title}",
        "",
        f"Uncertainty method: `{cfg['method']}`; image size {cfg['image_size']}; seed {cfg['seed']}; "
        f"f trained {cfg['seg_epochs']} epochs, g {cfg['quality_epochs']} epochs.",
        "",
        "## Segmentation (test set)",
        "",
        f"- mean Jaccard {seg['jaccard_mean']:.3f} (median {seg['jaccard_median']:.3f}), "
        f"mean Dice {seg['dice_mean']:.3f}",
        f"- failures (Jaccard < {cfg['threshold']}): {seg['failure_rate'] * 100:.1f}% "
        f"of {seg['n_images']} images",
        "",
        "## Quality prediction (test set)",
        "",
        "Detection error, AUROC and AUPR in percent; pass = true Jaccard >= "
        f"{cfg['threshold']}. AURC uses risk = 1 - Jaccard (lower is better).",
        "",
        quality_table(results["rows"]),
        "",
        "## Figures",
        "",
        "![overlays](figures/overlays.png)",
        "",
        "![true vs predicted Jaccard](figures/scatter.png)",
        "",
        "## Run",
        "",
        f"- wall time: {_total_seconds(results.get('timing', {})):.0f} s",
        versions_line(results["versions"]),
        "",
    ]
    return write_markdown(out / "report.md", lines)


def versions_line(versions: dict[str, str]) -> str:
    return f"- versions: {', '.join(f'{k} {v}' for k, v in versions.items())}"


def write_markdown(path: Path, lines: list[str]) -> Path:
    """Write ``lines`` to ``path`` atomically; return ``path``."""
    with atomic_write(path, "w") as fh:
        fh.write("\n".join(lines))
    return path

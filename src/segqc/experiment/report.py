"""Writing an experiment: table1.md (the paper's Table 1 layout), figures/fig2.png, figures/fig3.png
and a short report.md linking them. Matplotlib is imported lazily."""

from __future__ import annotations

import json
import math
import os
import re
import shlex
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import norm

from segqc.data.dataset import SegData
from segqc.errors import SegQCError
from segqc.experiment.config import CROSSFIT_SUFFIX
from segqc.metrics import QUALITY_KEYS, bootstrap_rows, jaccard
from segqc.report import (
    TABLE_COLUMNS,
    format_value,
    pick_examples,
    plot_grid,
    plot_scatter,
    versions_line,
    write_markdown,
)
from segqc.utils import write_json
from segqc.visualize import error_overlay, heatmap

#: Where the paper's Table 1 is looked for when no path is given (relative to the working directory).
DEFAULT_PAPER_TABLE = Path("../shared/paper/table1.json")

#: The columns the paper reports; AURC and Spearman are ours only.
PAPER_KEYS = ("rmse", "detection_error", "auroc", "aupr_pass", "aupr_fail")

#: The row every other row is compared with, pairwise (``<name> (crossfit)`` for crossfit rows).
BASELINE_ROW = "no-uncertainty"

#: Bootstrap replicates and the seed of their draws (the same draws for every row).
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0


def _base_name(row_name: str) -> str:
    return row_name[: -len(CROSSFIT_SUFFIX)] if row_name.endswith(CROSSFIT_SUFFIX) else row_name


# -- paths --------------------------------------------------------------------------------------


def portable_path(path: str, cwd: str | Path | None = None) -> str:
    """``path`` as given if relative; an absolute path made relative to ``cwd`` (default: the working
    directory), so that results and reports never name a machine's absolute path."""
    if not os.path.isabs(path):
        return path
    try:
        return os.path.relpath(path, os.path.abspath(cwd if cwd is not None else os.getcwd()))
    except ValueError:  # another drive on Windows
        return Path(path).name


def portable_command(argv: list[str], cwd: str | Path | None = None) -> list[str]:
    """A command line with every absolute path argument (``/x`` or ``--opt=/x``) made relative to
    ``cwd`` by :func:`portable_path`; relative arguments are kept as given."""
    out = []
    for arg in argv:
        if arg.startswith("--") and "=" in arg:
            key, value = arg.split("=", 1)
            out.append(f"{key}={portable_path(value, cwd)}")
        else:
            out.append(portable_path(arg, cwd))
    return out


def portable_results(results: dict[str, Any], cwd: str | Path | None = None) -> dict[str, Any]:
    """``results`` with its command and data paths portable (a shallow copy; see :func:`portable_path`)."""
    out = dict(results)
    out["command"] = portable_command(list(results.get("command") or []), cwd)
    data = dict(results.get("data", {}))
    for key in ("source", "protocol"):
        if isinstance(data.get(key), str):
            data[key] = portable_path(data[key], cwd)
    out["data"] = data
    if isinstance(results.get("paper_table"), str):
        out["paper_table"] = portable_path(results["paper_table"], cwd)
    return out


# -- the paper's Table 1 ------------------------------------------------------------------------


def find_paper_table(results: dict[str, Any], path: str | Path | None = None) -> Path | None:
    """The paper's Table 1 JSON: ``path`` if given, else :data:`DEFAULT_PAPER_TABLE`, else
    ``paper/table1.json`` two folders above the data folder (``../shared/data/isic2017`` ->
    ``../shared/paper/table1.json``). None if there is none."""
    if path is not None:
        return Path(path) if Path(path).is_file() else None
    candidates = [DEFAULT_PAPER_TABLE]
    source = results.get("data", {}).get("source")
    if isinstance(source, str) and source not in ("synthetic", "in-memory", "arrays"):
        candidates.append(Path(source).parent.parent / "paper" / "table1.json")
    return next((c for c in candidates if c.is_file()), None)


def load_paper_table(path: str | Path) -> dict[str, Any]:
    """Read the paper's Table 1 (``paper_names``, ``rows``, ``units``) with every value as a fraction,
    like ours: ``{"source", "path", "names": {row: name}, "rows": {row: {key: (mean, std)}}}``."""
    raw = json.loads(Path(path).read_text())
    units = raw.get("units", {})
    rows: dict[str, dict[str, tuple[float, float | None]]] = {}
    for name, metrics in raw["rows"].items():
        rows[name] = {}
        for key, value in metrics.items():
            scale = 0.01 if units.get(key, "fraction") == "percent" else 1.0
            std = value.get("std")
            rows[name][key] = (value["mean"] * scale, None if std is None else std * scale)
    return {
        "source": raw.get("source", "DeVries & Taylor (2018), Table 1"),
        "path": str(path),
        "names": dict(raw.get("paper_names", {})),
        "rows": rows,
    }


# -- statistics ---------------------------------------------------------------------------------


def _per_seed_images(results: dict[str, Any]) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[int]]:
    """Per row, ``(predicted, true)`` as ``(S, N)`` arrays over the seeds whose per-image values
    results.json holds (every seed since per-seed values are stored; only the first before)."""
    seeds = list(results["config"]["seeds"])
    rows, kept = {}, None
    for name, entry in results["per_image_by_row"].items():
        per_seed = entry.get("per_seed") or [{"seed": entry.get("seed", seeds[0]), **entry}]
        row_seeds = [s["seed"] for s in per_seed]
        if kept is not None and row_seeds != kept:  # rows are compared seed by seed
            raise SegQCError(f"row {name!r} has seeds {row_seeds}, the rows before it {kept}")
        kept = row_seeds
        rows[name] = (
            np.array([s["predicted_jaccard"] for s in per_seed], np.float64),
            np.array([s["true_jaccard"] for s in per_seed], np.float64),
        )
    return rows, kept or seeds[:1]


def experiment_statistics(
    results: dict[str, Any], *, n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> dict[str, Any]:
    """95% intervals of every row and metric, and paired differences to the no-uncertainty row
    (crossfit rows to ``no-uncertainty (crossfit)``), by :func:`segqc.metrics.bootstrap_rows`: the
    bootstrap variance over test images (the same draws for every row) plus the seed-to-seed
    variance, with a t quantile. JSON-able."""
    rows, seeds_used = _per_seed_images(results)
    threshold = results["config"]["threshold"]
    names = list(rows)
    stats = bootstrap_rows(
        rows,
        threshold=threshold,
        baseline=BASELINE_ROW if BASELINE_ROW in rows else None,
        n_resamples=n_resamples,
        seed=seed,
    )
    crossfit_base = BASELINE_ROW + CROSSFIT_SUFFIX
    if crossfit_base in rows:  # crossfit rows against the crossfit baseline, with the same draws
        group = {n: rows[n] for n in names if n.endswith(CROSSFIT_SUFFIX)}
        more = bootstrap_rows(
            group, threshold=threshold, baseline=crossfit_base, n_resamples=n_resamples, seed=seed
        )
        stats["difference"].update(more["difference"])
        stats["difference"].pop(crossfit_base, None)
    for name in names:
        if name.endswith(CROSSFIT_SUFFIX) and crossfit_base not in rows:
            stats["difference"].pop(name, None)  # not comparable with the paper-way baseline
    # each crossfit row against the same predictor trained the paper's way
    stats["crossfit_difference"] = {}
    for name in names:
        base = _base_name(name)
        if name.endswith(CROSSFIT_SUFFIX) and base in rows:
            pair = bootstrap_rows(
                {base: rows[base], name: rows[name]},
                threshold=threshold,
                baseline=base,
                n_resamples=n_resamples,
                seed=seed,
            )
            stats["crossfit_difference"][name] = pair["difference"][name]
    stats["seeds"] = seeds_used
    stats["difference_to"] = {
        n: (crossfit_base if n.endswith(CROSSFIT_SUFFIX) else BASELINE_ROW) for n in stats["difference"]
    }
    return stats


# -- formatting ---------------------------------------------------------------------------------


def _scale(percent: bool) -> tuple[float, int]:
    return (100.0, 1) if percent else (1.0, 3)


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def format_signed(value: float | None, percent: bool) -> str:
    if not _finite(value):
        return "n/a"
    scale, digits = _scale(percent)
    if value == 0.0:  # exactly zero (a row against itself); a small nonzero value keeps its sign
        return f"{0.0:.{digits}f}"
    return f"{value * scale:+.{digits}f}".replace("-", "−")


def format_interval(low: float | None, high: float | None, percent: bool, signed: bool = False) -> str:
    if not (_finite(low) and _finite(high)):
        return "n/a"
    if signed:
        return f"[{format_signed(low, percent)}, {format_signed(high, percent)}]"
    return f"[{format_value(low, percent)}, {format_value(high, percent)}]"


def interval_cell(entry: dict[str, Any], percent: bool, n_seeds: int, signed: bool = False) -> str:
    """``[low, high]`` (``estimate [low, high]`` when ``signed``), saying how many seeds the interval
    rests on when a seed's metric was undefined (with one, it holds no seed-to-seed spread)."""
    interval = format_interval(entry["low"], entry["high"], percent, signed)
    if signed:
        interval = f"{format_signed(entry['estimate'], percent)} {interval}"
    finite = entry.get("n_seeds", n_seeds)
    return interval + (f" ({finite} of {n_seeds} seeds)" if finite < n_seeds else "")


def ours_cell(row: dict[str, Any], key: str, percent: bool, n_seeds: int) -> str:
    """Mean ± std over the seeds whose value is finite; says how many when some are NaN."""
    values = [s["metrics"].get(key) for s in row.get("per_seed", [])]
    finite = [v for v in values if v is not None and math.isfinite(v)]
    cell = format_value(row["metrics"].get(key), percent, row.get("std", {}).get(key))
    if values and len(finite) < n_seeds and finite:
        cell += f" ({len(finite)} of {n_seeds} seeds)"
    elif values and not finite:
        cell += f" (0 of {n_seeds} seeds)"
    return cell


def table1_markdown(
    results: dict[str, Any],
    paper: dict[str, Any] | None = None,
    stats: dict[str, Any] | None = None,
) -> str:
    """The paper's Table 1 layout: per row our mean ± std over seeds, its 95% interval, the paper's
    line and ours − paper where the paper reports the row; then the paired differences to the
    no-uncertainty baseline, and the segmentation quality of each f.

    Args:
        results: the content of results.json.
        paper: :func:`load_paper_table`'s output, or None (no paper lines; the notes say so).
        stats: :func:`experiment_statistics`' output; computed if None.
    """
    cfg = results["config"]
    seeds = cfg["seeds"]
    data = results["data"]
    stats = experiment_statistics(results) if stats is None else stats
    conf = f"{stats['confidence'] * 100:g}%"
    used = stats.get("seeds", seeds)
    subset = "" if len(used) == len(seeds) else f", seed {', '.join(map(str, used))} only"
    lines = [
        "# Table 1: predicting segmentation quality",
        "",
        f"Test set: {data.get('n_test', len(data.get('test_ids', [])))} images ({data.get('source', '?')}"
        + (f", protocol {Path(data['protocol']).name}" if data.get("protocol") else "")
        + f"); g trained on {data.get('n_train', len(data.get('train_ids', [])))} images. "
        f"Mean ± standard deviation over {len(seeds)} seed{'s' if len(seeds) > 1 else ''} "
        f"({', '.join(map(str, seeds))}); where a metric is undefined for a seed (e.g. no failure among "
        "the test images), the cell says how many seeds it averages. "
        "Detection error, AUROC and AUPR in percent; RMSE, AURC and Spearman as fractions. "
        f"Pass = true Jaccard >= {cfg['threshold']}. AURC (risk = 1 - Jaccard, lower is better) and "
        "Spearman's rho are not in the paper.",
        "",
        "| Method | Source | " + " | ".join(h for _, h, _ in TABLE_COLUMNS) + " |",
        "|---|---" + "|---" * len(TABLE_COLUMNS) + "|",
    ]
    for row in results["rows"]:
        name, base = row["method"], _base_name(row["method"])
        lines.append(
            f"| {name} | ours | "
            + " | ".join(ours_cell(row, k, pct, len(seeds)) for k, _, pct in TABLE_COLUMNS)
            + " |"
        )
        ci = stats["rows"].get(name)
        if ci:
            cells = [interval_cell(ci[k], pct, len(used)) for k, _, pct in TABLE_COLUMNS]
            lines.append(f"| | {conf} CI{subset} | " + " | ".join(cells) + " |")
        published = (paper or {}).get("rows", {}).get(base)
        if published and row.get("quality_train") != "crossfit":
            cells, diffs = [], []
            for k, _, pct in TABLE_COLUMNS:
                if k not in PAPER_KEYS or k not in published:
                    cells.append("–")
                    diffs.append("–")
                    continue
                mean, std = published[k]
                cells.append(format_value(mean, pct, std))
                ours = row["metrics"].get(k)
                diffs.append(format_signed(None if ours is None else ours - mean, pct))
            label = paper["names"].get(base, base)
            lines.append(f"| | paper: {label} | " + " | ".join(cells) + " |")
            lines.append("| | ours − paper | " + " | ".join(diffs) + " |")

    sections = (
        (
            "difference",
            f"## Paired differences to the no-uncertainty baseline ({conf} CI{subset})",
            stats.get("difference_to", {}),
        ),
        (
            "crossfit_difference",
            f"## Paired differences: g cross-fitted − g trained the paper's way ({conf} CI{subset})",
            {n: _base_name(n) for n in stats.get("crossfit_difference", {})},
        ),
    )
    for key, title, versus in sections:
        if not stats.get(key):
            continue
        lines += [
            "",
            title,
            "",
            "Row − the row it is compared with, on the same resampled test images and seeds; `*` marks "
            "an interval that excludes zero. Lower is better for RMSE, detection error and AURC, higher "
            "for the others.",
            "",
            "| Method | vs | " + " | ".join(h for _, h, _ in TABLE_COLUMNS) + " |",
            "|---|---" + "|---" * len(TABLE_COLUMNS) + "|",
        ]
        for name, diff in stats[key].items():
            cells = []
            for k, _, pct in TABLE_COLUMNS:
                d = diff[k]
                star = " *" if d["excludes_zero"] else ""
                cells.append(interval_cell(d, pct, len(used), signed=True) + star)
            lines.append(f"| {name} | {versus[name]} | " + " | ".join(cells) + " |")

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
    if not subset:
        seeds_part = (
            f"+ the seed-to-seed variance of the {len(used)} seeds / {len(used)}, with a Student t quantile "
            "(Welch-Satterthwaite degrees of freedom), so that it is an interval for the method, not only "
            "for these seeds' g (on the wide side: the seed-to-seed variance also holds each seed's own "
            "noise over the test images, which the bootstrap part holds too)"
            if len(used) > 1
            else "(one seed: the interval is for this seed's g, not for the method)"
        )
        interval_note = (
            f"- {conf} CI: estimate ± t × se, se² = the bootstrap variance of the seed mean over the "
            f"{stats['n_images']} test images ({stats['n_resamples']} replicates drawn with random seed "
            f"{stats['seed']}, "
            f"the same draws for every row and seed) {seeds_part}; paired differences the same way, from "
            "the per-seed and per-draw differences (the same images and seeds on both sides). A cell "
            "marked (k of n seeds) rests on the k seeds whose metric is defined; with one, it is for that "
            "seed's g only. An interval is cut at the metric's range, so an end at 0 or 100% (±1 for "
            "Spearman) is that limit, not a measured value."
        )
    else:
        interval_note = (
            f"- {conf} CI and paired differences: estimate ± {norm.ppf(0.5 + stats['confidence'] / 2):.2f} "
            "bootstrap standard errors "
            f"({stats['n_resamples']} replicates drawn with random seed {stats['seed']}) over the "
            f"{stats['n_images']} test images of seed {', '.join(map(str, used))} only: this results.json "
            "kept the per-image predictions of that seed only, so the intervals are centred on that "
            "seed's values and do not include the seed-to-seed spread (the ± column does). Every row "
            "uses the same draws."
        )
    marks_note = (
        "- `*` marks a paired interval that excludes zero, each metric and row on its own (not adjusted "
        "for the many comparisons of a table; AUROC and detection error are the primary metrics). An "
        "interval that includes zero means no difference was detected, not that the rows are equal: "
        "differences beyond its ends are unlikely."
    )
    if paper is not None:
        paper_note = (
            f"- paper lines: {paper['source']}, from `{paper['path']}` (the paper: 224x224 images, f 120 "
            "and g 30 epochs), in our units; `ours − paper` is our mean minus the "
            "paper's mean. No paper line under crossfit rows (the paper trained g its own way only)."
        )
    else:
        paper_note = (
            "- No paper lines: the paper's Table 1 (`table1.json`) was not found "
            f"(looked for `{DEFAULT_PAPER_TABLE}` or `--paper-table FILE`)."
        )
    notes = [
        "",
        "## Notes",
        "",
        *[f"- {note}" for note in clean_notes(results.get("notes") or [])],
        *fitted_notes(results["rows"]),
        f"- Each method row is the paper's g(x, y^, z) on the maps of that method's f; the baselines "
        f"({', '.join(cfg['baselines']) or 'none'}) read the masks of the "
        f"`{results.get('baseline_f', cfg['methods'][0])}` f.",
        "- `(crossfit)` rows: g trained on out-of-fold predictions of f over its training images "
        f"({cfg['folds']} folds); the other rows train g on f's predictions over its own training images, "
        "as in the paper. RCA does not learn from f's predictions and has one row.",
        interval_note,
        marks_note,
        paper_note,
        "",
    ]
    return "\n".join(lines + notes)


def _plain(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:g}" if isinstance(value, float) else str(value)


def clean_notes(notes: list[str]) -> list[str]:
    """Notes as one line each (a newline would end the bullet and could start a heading), a leading
    ``#`` escaped (it would make the bullet a heading); blank ones are dropped, so ``--note ''``
    clears the notes."""
    lines = (" ".join(str(n).split()) for n in notes)
    return [("\\" + line if line.startswith("#") else line) for line in lines if line]


def code_span(text: str) -> str:
    """``text`` as Markdown inline code, whatever backticks it holds (CommonMark: a longer fence)."""
    text = " ".join(text.splitlines())
    fence = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def fitted_notes(rows: list[dict[str, Any]]) -> list[str]:
    """One note per row whose g chose settings in ``fit`` (its predictor's ``chosen_settings``, e.g.
    RCA's ``prior_strength_``): each seed's value, or "not recorded" (a unit cached before they were
    kept); the scores they were chosen by stay in results.json."""
    from segqc.quality import PREDICTORS

    notes = []
    for row in rows:
        try:
            names = PREDICTORS.get(row.get("predictor")).chosen_settings
        except Exception:  # a predictor this version does not know
            continue
        seeds = row.get("per_seed", [])
        fitted = [s.get("fitted") if isinstance(s.get("fitted"), dict) else {} for s in seeds]
        shown = [k for k in names if any(k in f and not isinstance(f[k], dict) for f in fitted)]
        values = [
            f"{k.rstrip('_')} "
            + ", ".join(
                f"{_plain(f[k]) if k in f else 'not recorded'} (seed {s.get('seed', '?')})"
                for s, f in zip(seeds, fitted)
            )
            for k in shown
        ]
        if names and values:
            notes.append(
                f"- `{row['method']}`: settings chosen in fitting, on training images only (a fixed value "
                f"as given): {'; '.join(values)}."
            )
        elif names:  # results of a version that did not keep them: what they were is not known here
            notes.append(f"- `{row['method']}`: the settings it chose in fitting were not recorded.")
    return notes


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
    test: SegData | None = None,
    maps: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
    paper_table: str | Path | None = None,
) -> Path:
    """Write table1.md, figures/fig3.png, figures/fig2.png (with ``test`` and ``maps``) and report.md;
    return report.md's path. Adds ``statistics`` (the bootstrap) and ``paper_table`` to ``results``.

    Args:
        out_dir: the experiment folder.
        results: the content of results.json.
        test: the test set (images, ground truth, ids) for figure 2; without it an existing
            figures/fig2.png is kept (figure 2 needs the images and maps, not in results.json).
        maps: per method, ``(mask, uncertainty)`` of the first seed on the test images, ``(N, H, W)``.
        paper_table: the paper's Table 1 JSON; by default looked for by :func:`find_paper_table`.
    """
    out = Path(out_dir)
    cfg = results["config"]
    found = find_paper_table(results, paper_table)
    paper = load_paper_table(found) if found is not None else None
    results["paper_table"] = None if found is None else portable_path(str(found))
    if paper is not None:
        paper["path"] = results["paper_table"]
    stats = experiment_statistics(results)
    results["statistics"] = stats
    table = table1_markdown(results, paper, stats)
    write_markdown(out / "table1.md", [table])
    if test is not None and maps is not None:
        plot_fig2(test, maps, out / "figures" / "fig2.png", threshold=cfg["threshold"])
    per_row = {k: (v["true_jaccard"], v["predicted_jaccard"]) for k, v in results["per_image_by_row"].items()}
    # each row has its own f, hence its own true Jaccard
    plot_scatter(
        per_row, out / "figures" / "fig3.png", threshold=cfg["threshold"], max_cols=4, size=3.4, marker_size=7
    )
    has_fig2 = (out / "figures" / "fig2.png").is_file()

    units = results.get("units", {})
    command = shlex.join(results.get("command") or [])  # runnable as shown
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
        *(["- [Figure 2: error overlays and uncertainty maps](figures/fig2.png)"] if has_fig2 else []),
        "- [Figure 3: true vs predicted Jaccard](figures/fig3.png)",
        "",
        table.split("\n", 1)[1].lstrip("\n").replace("\n## ", "\n### "),
        *(["![Figure 2](figures/fig2.png)", ""] if has_fig2 else []),
        "![Figure 3](figures/fig3.png)",
        "",
        "## Run",
        "",
        f"- command: {code_span(command)}",
        f"- wall time {results.get('wall_time_s', 0.0):.0f} s; compute time of all units "
        f"{results.get('compute_time_s', 0.0):.0f} s; units computed {units.get('computed', '?')}, "
        f"reused from the cache {units.get('cached', '?')}",
        f"- machine: {', '.join(f'{k} {v}' for k, v in results.get('machine', {}).items())}",
        versions_line(results["versions"]),
    ]
    if results.get("rendered_by"):
        lines.append(f"- report re-rendered from results.json by {code_span(results['rendered_by'])}")
    lines.append("")
    return write_markdown(out / "report.md", lines)


def seed_counts(per_seed: list[dict[str, Any]]) -> dict[str, int]:
    """Per metric, how many seeds have a finite value (the ones its mean and std average)."""
    return {k: sum(_finite(s["metrics"].get(k)) for s in per_seed) for k in QUALITY_KEYS}


def render_report(
    out_dir: str | Path,
    *,
    paper_table: str | Path | None = None,
    command: list[str] | None = None,
    notes: list[str] | None = None,
) -> dict[str, Any]:
    """Rebuild table1.md, report.md and figures/fig3.png from ``out_dir/results.json``, without
    retraining or the test images (figures/fig2.png is kept as it is). The command and data paths in
    results.json are made portable (:func:`portable_results`), the statistics recomputed, and
    results.json rewritten with them. Returns the new content of results.json.

    Args:
        out_dir: a folder written by ``segqc experiment``.
        paper_table: the paper's Table 1 JSON (default: :func:`find_paper_table`).
        command: the re-rendering command to record (``rendered_by``), e.g. ``sys.argv``.
        notes: notes to show under the tables (kept in results.json), replacing the stored ones;
            ``None`` keeps them.
    """
    out = Path(out_dir)
    path = out / "results.json"
    if not path.is_file():
        raise SegQCError(f"{path} does not exist; run `segqc experiment --out {out}` first")
    try:
        results = json.loads(path.read_text())
        ok = (
            isinstance(results, dict)
            and isinstance(results.get("config"), dict)
            and {"seeds", "threshold", "methods", "baselines"} <= set(results["config"])
            and isinstance(results.get("per_image_by_row"), dict)
            and isinstance(results.get("rows"), list)
        )
    except (OSError, ValueError, RecursionError) as err:
        raise SegQCError(f"{path}: cannot read it ({type(err).__name__}: {err})") from None
    if not ok:
        raise SegQCError(f"{path}: not a results.json written by segqc experiment")
    results = portable_results(results)
    for row in results["rows"]:  # results written before rows counted their seeds
        if isinstance(row, dict) and "n_seeds" not in row and isinstance(row.get("per_seed"), list):
            row["n_seeds"] = seed_counts(row["per_seed"])
    if notes is not None:
        results["notes"] = clean_notes(notes)
    stored = results.get("notes", [])
    if not isinstance(stored, list) or not all(isinstance(n, str) for n in stored):
        raise SegQCError(f"{path}: 'notes' must be a list of strings (give --note to replace them)")
    if command is not None:
        results["rendered_by"] = shlex.join(portable_command(command))
    write_experiment_report(out, results, paper_table=paper_table)
    write_json(path, results)
    return results

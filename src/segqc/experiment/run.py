"""Running an experiment: every seed's units, then the metrics averaged over the seeds.

See :mod:`segqc.experiment` for what the experiment computes and how it resumes.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segqc.data.dataset import SegData
from segqc.data.splits import load_train_test
from segqc.engine import is_main_process
from segqc.errors import SegQCError, SegQCWarning
from segqc.experiment.config import ExperimentConfig
from segqc.experiment.plan import Planner, stored_prediction
from segqc.experiment.units import UnitRunner
from segqc.metrics import QUALITY_KEYS, jaccard
from segqc.training import score_quality, segmentation_summary
from segqc.utils import resolve_device, versions, write_json


def _machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info


def _mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation over seeds, skipping NaN (None if no value, std None for one)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return None, None
    return float(np.mean(finite)), (float(np.std(finite, ddof=1)) if len(finite) > 1 else None)


def check_earlier_run(out: Path, cfg: ExperimentConfig, train: SegData, test: SegData) -> list[str]:
    """A ``SegQCWarning`` naming what differs when ``out`` holds the results of a run with other
    settings (the device aside) or other training or test images: they are replaced at the end
    (finished units stay in the cache and are reused where they fit). Returns the notes of an
    earlier run of the same settings and images (a resumed or repeated run keeps them), else ``[]``."""
    try:
        old = json.loads((out / "results.json").read_text())
        old_config, old_data = old["config"], old["data"]
        if not isinstance(old_config, dict) or not isinstance(old_data, dict):
            return []
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return []  # no earlier results (or unreadable ones, which are replaced too)
    new_config = json.loads(json.dumps(cfg.to_dict()))
    keys = sorted((set(old_config) | set(new_config)) - {"device"}, key=str)
    changed = [
        f"{k} {old_config.get(k)!r} -> {new_config.get(k)!r}"
        for k in keys
        if old_config.get(k) != new_config.get(k)
    ]
    for name, data in (("train", train), ("test", test)):
        if old_data.get(f"{name}_ids") != list(data.ids):
            changed.append(f"other {'training' if name == 'train' else 'test'} images")
    if changed:
        warnings.warn(
            f"{out / 'results.json'} holds a run with other settings ({'; '.join(changed)}); this run "
            "replaces its tables and results.json (finished units in its cache are reused where they fit)",
            SegQCWarning,
            stacklevel=3,
        )
        return []
    notes = old.get("notes")
    return list(notes) if isinstance(notes, list) and all(isinstance(n, str) for n in notes) else []


FEW_OF_A_CLASS = 10  # test images that fail (or pass) below which the classification metrics are noise


def warn_if_few_failures_or_passes(segmentation: dict[str, dict[str, Any]], threshold: float) -> None:
    """A ``SegQCWarning`` when some f, on some seed, leaves fewer than :data:`FEW_OF_A_CLASS` test
    images failing (Jaccard below ``threshold``) or passing: AUROC, the AUPRs and the detection
    error rest on those few images, so their intervals are wide (and undefined with none)."""
    few = []
    for method, entry in segmentation.items():
        n = entry["n_images"]
        for s in entry["per_seed"]:
            fails = round(s["failure_rate"] * n)
            if min(fails, n - fails) < FEW_OF_A_CLASS:
                few.append(f"{method} seed {s['seed']}: {fails} of {n} fail")
    if few:
        warnings.warn(
            f"few test images fail or pass (Jaccard < {threshold:g}) for some f ({'; '.join(few[:4])}"
            f"{'; ...' if len(few) > 4 else ''}): AUROC, AUPR and detection error rest on fewer than "
            f"{FEW_OF_A_CLASS} images of a class, so they are noisy (undefined with none); "
            "use more test images",
            SegQCWarning,
            stacklevel=3,
        )


def run_experiment(
    cfg: ExperimentConfig,
    out_dir: str | Path,
    *,
    data: str | Path | tuple[SegData, SegData] | None = None,
    protocol: str | Path | None = None,
    progress: bool = True,
    command: list[str] | None = None,
    paper_table: str | Path | None = None,
    notes: list[str] | None = None,
) -> dict[str, Any]:
    """Run (or resume) the experiment; write results.json, table1.md, report.md and figures/.

    Args:
        cfg: the settings.
        out_dir: output folder; its ``units/`` cache makes a rerun resume where it stopped.
        data: a data folder (ISIC 2017 or images/ + masks/), ``(train, test)`` arrays, or None for
            the embedded synthetic data (``cfg.n_train`` + ``cfg.n_test`` images).
        protocol: JSON file with ``train`` and ``test`` id lists; without one a data folder is split
            80/20 (seeded by ``cfg.data_seed``).
        progress: progress bars and a log line per unit on stderr.
        command: the command line to record. Defaults to ``sys.argv``. Relative paths are kept
            as given; absolute ones are recorded relative to the working directory.
        paper_table: the paper's Table 1 JSON to show beside ours; by default
            ``../shared/paper/table1.json`` if it exists (see
            :func:`segqc.experiment.report.find_paper_table`); without one, no paper lines.
        notes: notes to show under the tables (kept in results.json); ``None`` keeps those of an
            earlier run of the same settings in ``out_dir``.
    Returns:
        The content of ``results.json``.
    """
    from segqc.experiment.report import (
        clean_notes,
        portable_command,
        portable_path,
        seed_counts,
        write_experiment_report,
    )

    start = time.perf_counter()
    out = Path(out_dir)
    if isinstance(data, tuple):
        train, test = data
        info: dict[str, Any] = {"source": "arrays", "protocol": None}
    else:
        train, test, info = load_train_test(
            data, protocol, size=cfg.image_size, seed=cfg.data_seed, n_train=cfg.n_train, n_test=cfg.n_test
        )
        info.setdefault("protocol", str(protocol) if protocol else None)
        for key in ("source", "protocol"):  # as given; an absolute path relative to the working directory
            if isinstance(info.get(key), str):
                info[key] = portable_path(info[key])
    if test is None:
        raise SegQCError(f"{protocol}: the protocol has no 'test' list, which the experiment evaluates on")
    if len(train) < 2 or len(test) < 1:
        raise SegQCError(f"need at least 2 training and 1 test image, got {len(train)} and {len(test)}")
    if train.size != cfg.image_size or test.size != cfg.image_size:
        raise SegQCError(f"the images are {train.size} px, the config says image_size {cfg.image_size}")
    resolve_device(cfg.device)  # fail early on --device cuda without CUDA
    main = is_main_process()
    if main:  # once, not per process of a distributed run
        earlier_notes = check_earlier_run(out, cfg, train, test)
        notes = earlier_notes if notes is None else notes
        write_json(out / "config.json", cfg.to_dict())

    runner = UnitRunner(out / "units", progress=progress)
    planner = Planner(cfg, train, test, get=runner.get, progress=progress)
    rows = planner.rows()
    plans = [planner.plan(seed, rows) for seed in cfg.seeds]
    runner.expect([u for p in plans for u in p.units])
    runner.log(
        f"experiment: {len(rows)} rows x {len(cfg.seeds)} seeds, {runner.total} units, "
        f"cache {runner.store.root}"
    )

    segmentation: dict[str, list[dict[str, float]]] = {m: [] for m in cfg.methods}
    per_image_seeds: dict[str, list[dict[str, Any]]] = {}  # per row, every seed's per-image values
    first: dict[str, Any] = {}  # first seed: test predictions per method, predicted quality per row
    for s_i, (seed, plan) in enumerate(zip(cfg.seeds, plans)):
        for unit in plan.units:
            runner.get(unit)
        true_j = {}
        for m in cfg.methods:
            pred = stored_prediction(runner.get(plan.test_pred[m]))
            true_j[m] = jaccard(pred.mask, test.masks)
            segmentation[m].append({"seed": seed, **segmentation_summary(pred.mask, test, cfg.threshold)})
            if s_i == 0:
                first.setdefault("maps", {})[m] = (pred.mask, pred.uncertainty)
        for i, row in enumerate(rows):
            g = runner.get(plan.g_units[i])
            q = g.arrays["predicted"]
            metrics = score_quality(q, true_j[row.method], cfg.threshold)  # one-class test sets: null
            entry = {
                "seed": seed,
                "metrics": metrics,
                "segmentation_jaccard": float(true_j[row.method].mean()),
            }
            if g.meta.get("fitted"):  # e.g. RCA's prior_strength_, chosen on training images
                entry["fitted"] = g.meta["fitted"]
            row.per_seed.append(entry)
            per_image_seeds.setdefault(row.name, []).append(
                {"seed": seed, "true_jaccard": true_j[row.method].tolist(), "predicted_jaccard": q.tolist()}
            )
            if s_i == 0:
                first.setdefault("quality", {})[row.name] = (true_j[row.method], q)
        runner.memo.clear()  # free this seed's arrays

    result_rows = []
    for row in rows:
        metrics, std = {}, {}
        for k in QUALITY_KEYS:
            metrics[k], std[k] = _mean_std([s["metrics"][k] for s in row.per_seed])
        n_seeds = seed_counts(row.per_seed)
        seg_mean, seg_std = _mean_std([s["segmentation_jaccard"] for s in row.per_seed])
        result_rows.append(
            {
                "method": row.name,
                "predictor": row.predictor,
                "uncertainty_method": row.method,
                "quality_train": row.variant,
                "metrics": metrics,
                "std": std,
                "n_seeds": n_seeds,  # seeds with a finite value, which metrics and std average
                "per_seed": row.per_seed,
                "segmentation_jaccard": seg_mean,
                "segmentation_jaccard_std": seg_std,
            }
        )
    seg_summary = {}
    for m, per_seed in segmentation.items():
        entry: dict[str, Any] = {}
        for k in ("jaccard_mean", "dice_mean", "failure_rate"):
            entry[k], entry[k.replace("_mean", "") + "_std"] = _mean_std([s[k] for s in per_seed])
        seg_summary[m] = {**entry, "n_images": len(test), "per_seed": per_seed}

    first_row = rows[0].name
    t0, q0 = first["quality"][first_row]
    results = {
        "config": cfg.to_dict(),
        "versions": versions(),
        "data": {
            **info,
            "n_train": len(train),
            "n_test": len(test),
            "train_ids": list(train.ids),
            "test_ids": list(test.ids),
        },
        "command": portable_command(list(sys.argv if command is None else command)),
        "wall_time_s": time.perf_counter() - start,
        "compute_time_s": runner.compute_seconds,
        "units": {
            "total": runner.total,
            "computed": runner.computed,
            "cached": runner.total - runner.computed,
        },
        "machine": _machine(),
        "baseline_f": cfg.methods[0],
        "segmentation": seg_summary,
        "rows": result_rows,
        "per_image": [
            {"id": id_, "true_jaccard": float(t), "predicted_jaccard": float(q)}
            for id_, t, q in zip(test.ids, t0, q0)
        ],
        "notes": clean_notes(notes or []),
        # per row: the first seed's values (as before), and every seed's under "per_seed"
        "per_image_by_row": {
            name: {
                "seed": cfg.seeds[0],
                "true_jaccard": t.tolist(),
                "predicted_jaccard": q.tolist(),
                "per_seed": per_image_seeds[name],
            }
            for name, (t, q) in first["quality"].items()
        },
    }
    if main:
        write_json(out / "results.json", results)
        write_experiment_report(out, results, test=test, maps=first["maps"], paper_table=paper_table)
        results["wall_time_s"] = time.perf_counter() - start
        write_json(out / "results.json", results)  # again, with the report's time included
        warn_if_few_failures_or_passes(seg_summary, cfg.threshold)  # after the writes: -W error loses nothing
    return results

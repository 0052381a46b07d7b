"""The demo: the whole two-stage system on the embedded synthetic data (or a real data folder)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from segqc.config import PipelineConfig
from segqc.data.splits import DEMO_TEST, DEMO_TRAIN, load_train_test
from segqc.errors import SegQCError
from segqc.report import plot_overlays, plot_scatter, write_report
from segqc.training import PipelineResult, run_pipeline
from segqc.utils import write_json


def run_demo(
    out_dir: str | Path,
    cfg: PipelineConfig | None = None,
    *,
    data: str | Path | None = None,
    protocol: str | Path | None = None,
    n_train: int = DEMO_TRAIN,
    n_test: int = DEMO_TEST,
    progress: bool = True,
) -> PipelineResult:
    """Run the pipeline and write ``report.md``, ``results.json`` and ``figures/`` to ``out_dir``."""
    cfg = cfg or PipelineConfig()
    out = Path(out_dir)
    start = time.perf_counter()
    train, test, info = load_train_test(
        data, protocol, size=cfg.image_size, seed=cfg.seed, n_train=n_train, n_test=n_test
    )
    if test is None:
        raise SegQCError(f"{protocol}: the protocol has no 'test' list, which the demo evaluates on")
    result = run_pipeline(train, test, cfg, data_info=info, progress=progress)
    first = result.results["rows"][0]["method"]
    plot_overlays(
        test.images,
        test.masks,
        result.test_prediction.mask,
        result.test_prediction.uncertainty,
        result.predicted_quality[first],
        out / "figures" / "overlays.png",
        threshold=cfg.threshold,
    )
    true_j = np.asarray([p["true_jaccard"] for p in result.results["per_image"]])
    panels = {name: (true_j, q) for name, q in result.predicted_quality.items()}
    plot_scatter(panels, out / "figures" / "scatter.png", threshold=cfg.threshold)
    result.results["timing"]["total_s"] = time.perf_counter() - start
    write_json(out / "config.json", cfg.to_dict())
    write_report(out, result.results, title="segqc demo" if data is None else "segqc run")
    return result

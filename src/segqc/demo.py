"""The demo: the whole two-stage system on the embedded synthetic data (or a real data folder)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from segqc.config import PipelineConfig
from segqc.data.dataset import SegData, load_split
from segqc.data.synthetic import make_synthetic
from segqc.pipeline import PipelineResult, run_pipeline
from segqc.report import plot_overlays, plot_scatter, write_report
from segqc.utils import write_json

DEMO_TRAIN, DEMO_TEST = 320, 160


def demo_data(n_train: int, n_test: int, size: int, seed: int) -> tuple[SegData, SegData, dict[str, Any]]:
    """Synthetic train and test sets; the test images come from a disjoint stream of the generator."""
    images, masks, ids = make_synthetic(n_train + n_test, size, seed=seed)
    data = SegData(images, masks, ids)
    info = {"source": "synthetic", "generator_seed": seed, "n_train": n_train, "n_test": n_test}
    return data.subset(range(n_train)), data.subset(range(n_train, n_train + n_test)), info


def load_data(
    data: str | Path | None, protocol: str | Path | None, cfg: PipelineConfig, n_train: int, n_test: int
) -> tuple[SegData, SegData, dict[str, Any]]:
    """The embedded synthetic default when ``data`` is None, else a data folder split by a protocol."""
    if data is None:
        return demo_data(n_train, n_test, cfg.image_size, cfg.seed)
    if protocol is None:
        # No protocol: a seeded 80/20 split of every labelled pair.
        (full,) = load_split(data, None, size=cfg.image_size)
        import numpy as np

        order = np.random.default_rng(cfg.seed).permutation(len(full))
        cut = int(round(0.8 * len(full)))
        train, test = full.subset(np.sort(order[:cut])), full.subset(np.sort(order[cut:]))
    else:
        train, test = load_split(data, protocol, size=cfg.image_size)
    return train, test, {"source": str(Path(data).resolve()), "protocol": str(protocol) if protocol else None}


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
    train, test, info = load_data(data, protocol, cfg, n_train, n_test)
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
    true_j = [p["true_jaccard"] for p in result.results["per_image"]]
    import numpy as np

    plot_scatter(
        np.asarray(true_j), result.predicted_quality, out / "figures" / "scatter.png", threshold=cfg.threshold
    )
    result.results["timing"]["total_s"] = time.perf_counter() - start
    write_json(out / "config.json", cfg.to_dict())
    write_report(out, result.results, title="segqc demo" if data is None else "segqc run")
    return result

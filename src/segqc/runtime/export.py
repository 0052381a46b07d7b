"""Export a bundle's f and g to ONNX, checked against PyTorch (``segqc export``).

The graphs are the ones the PyTorch backend runs: f's come from its uncertainty method
(``UncertaintyMethod.graphs``: one graph ``f`` for a deterministic method, or whatever a stochastic
method's ``read_out`` calls, with its random draws as inputs), g's from its predictor
(``QualityPredictor.graph``). They take raw ``uint8`` images (normalisation and g's input composition
are baked in), so an ONNX client only resizes its images. See :mod:`segqc.runtime.onnx_backend` for the
folder layout.

After writing the graphs, the export runs a few images (two synthetic lesions and two noise images)
through both backends with the same seed (so stochastic methods draw the same random numbers) and records
the largest differences in ``export.json``; it fails when one exceeds :data:`TOLERANCE`.

Examples::

    export_onnx("model", "model-onnx")                     # a bundle folder written by `segqc train`
    load_onnx_model("model-onnx").config["parity"]         # the differences measured
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import io
import logging
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from segqc.bundle import Bundle, load_bundle
from segqc.data.synthetic import make_synthetic
from segqc.errors import BundleError, SegQCError
from segqc.external import ExternalSegmenter
from segqc.integrity import SIGNATURE_FILE, read_json_object, seal
from segqc.networks.graphs import Normalize
from segqc.runtime.onnx_backend import (
    EXPORT_FORMAT,
    MANIFEST,
    ONNX_HINT,
    OPSET,
    QUALITY_ROLE,
    OnnxModel,
    graph_file,
    load_onnx_model,
)
from segqc.types import QualitySamples, SegPrediction
from segqc.utils import atomic_write, versions, write_json

#: ``torch.onnx`` exporters: ``dynamo`` (``torch.export``-based, PyTorch's default and supported one) or
#: ``torchscript`` (the legacy tracer: deprecated, but ~20x faster to export, which the tests use).
EXPORTERS = ("dynamo", "torchscript")
#: Largest allowed difference between onnxruntime and PyTorch at export: ``|a - b| <= atol + rtol |b|``
#: elementwise, for f's probabilities and uncertainty and g's predicted Jaccard (float32 graphs agree to
#: ~1e-6; the relative part is for hcnn's unbounded variance).
TOLERANCE = {"atol": 1e-4, "rtol": 1e-4}
#: Images run through both runtimes at export.
PARITY_IMAGES = 4


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporters' deprecation and progress chatter, which users cannot act on."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _export_graph(
    module: nn.Module,
    args: tuple[Any, ...],
    input_names: Sequence[str],
    output_names: Sequence[str],
    *,
    opset: int,
    exporter: str,
) -> bytes:
    """Serialised ONNX model of ``module`` on example ``args``, with a dynamic batch axis everywhere."""
    module.eval()
    with tempfile.TemporaryDirectory() as tmp, _quiet_exporter():
        file = Path(tmp) / "graph.onnx"
        common = {
            "input_names": list(input_names),
            "output_names": list(output_names),
            "opset_version": opset,
        }
        try:
            if exporter == "dynamo":
                batch = torch.export.Dim("batch")
                shapes: tuple[Any, ...] = tuple({0: batch} for _ in args)
                if any(
                    p.kind is p.VAR_POSITIONAL for p in inspect.signature(module.forward).parameters.values()
                ):
                    shapes = (shapes,)  # forward(*inputs): one spec for the whole tuple
                torch.onnx.export(module, args, str(file), dynamo=True, external_data=False, verbose=False,
                                  dynamic_shapes=shapes, **common)  # fmt: skip
            else:
                axes = {name: {0: "batch"} for name in [*input_names, *output_names]}
                torch.onnx.export(module, args, str(file), dynamo=False, dynamic_axes=axes, **common)
        except Exception as err:  # the exporters raise many types; say which graph and what to try
            text = str(err).strip()
            raise SegQCError(
                f"torch.onnx.export ({exporter}, opset {opset}) failed on {type(module).__name__}: "
                f"{type(err).__name__}: {text.splitlines()[0] if text else ''}; try the other exporter or "
                "another opset"
            ) from err
        return file.read_bytes()


def _within(a: np.ndarray, b: np.ndarray) -> tuple[float, bool]:
    """Largest absolute difference, and whether every element is within :data:`TOLERANCE` of ``b``."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return float("inf"), False
    diff = np.abs(a - b)
    ok = bool(np.all(diff <= TOLERANCE["atol"] + TOLERANCE["rtol"] * np.abs(b)))
    return float(diff.max(initial=0.0)), ok


def export_onnx(
    model: Bundle | str | Path,
    out_dir: str | Path,
    *,
    opset: int = OPSET,
    exporter: str = "dynamo",
    seed: int = 0,
) -> Path:
    """Export a bundle's f and g to ONNX graphs in ``out_dir`` and check them against PyTorch.

    Writes the graphs, then ``export.json`` (last, so an interrupted or failed export leaves no manifest
    and :func:`segqc.runtime.onnx_backend.load_onnx_model` refuses the folder). Graph files of an earlier
    export into the same folder that this one does not write are removed.

    Args:
        model: a bundle folder written by ``segqc train`` / :func:`segqc.training.train_bundle`, or a
            loaded :class:`~segqc.bundle.Bundle`.
        out_dir: the export folder, created if needed.
        opset: ONNX operator set. Defaults to :data:`segqc.runtime.onnx_backend.OPSET` (18).
        exporter: ``"dynamo"`` or ``"torchscript"`` (see :data:`EXPORTERS`). Defaults to ``"dynamo"``.
        seed: seed of the parity images and of stochastic read-outs in the check. Defaults to 0.

    Returns:
        The export folder.

    A loaded ``Bundle`` passed in is moved to the CPU (its ``device`` set to ``"cpu"``): the graphs are
    traced, and the PyTorch reference of the parity check runs, there.

    Raises:
        BundleError: the bundle is invalid (see ``load_bundle``), or its predictor has no graph to
            export (e.g. ``rca``).
        SegQCError: ``exporter`` is unknown, the onnx packages are missing, or onnxruntime's results
            differ from PyTorch's by more than :data:`TOLERANCE`.
    """
    if exporter not in EXPORTERS:
        raise SegQCError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    for package in ("onnx", "onnxruntime", *(("onnxscript",) if exporter == "dynamo" else ())):
        try:
            __import__(package)
        except ImportError:
            raise SegQCError(ONNX_HINT) from None
    bundle = model if isinstance(model, Bundle) else load_bundle(model, device="cpu")
    segmenter, predictor = bundle.segmenter, bundle.predictor
    if getattr(segmenter, "precomputed", False):
        raise BundleError(
            f"{bundle.path}: cannot export to ONNX: this model was trained on precomputed outputs and has "
            "no f (use segqc predict --predictions on the bundle itself)"
        )
    external = isinstance(segmenter, ExternalSegmenter)
    if not external:
        segmenter.model_.cpu().eval()
    segmenter.device = "cpu"  # the parity reference runs where the export traced
    if "device" in predictor.get_params():
        predictor.device = "cpu"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    earlier = _exported_files(out)
    (out / MANIFEST).unlink(missing_ok=True)

    size = bundle.image_size
    synthetic, _, _ = make_synthetic(2, size, seed=seed)
    noise = np.random.default_rng(seed).integers(0, 256, (PARITY_IMAGES - 2, size, size, 3), dtype=np.uint8)
    images = np.concatenate([synthetic, noise])
    x = torch.from_numpy(images)
    pred = segmenter.predict(images, rng=seed)  # the torch reference (same draws as the check below)
    try:
        g_graph = predictor.graph((x, torch.from_numpy(pred.mask), torch.from_numpy(pred.uncertainty)))
    except NotImplementedError as err:
        raise BundleError(f"{bundle.path}: cannot export to ONNX: {err}") from None
    if external:  # f is the user's own ONNX model(s): copied as they are, with the SPEC in the manifest
        graphs, layout = {}, {}
        files = segmenter.files()
    else:
        normalize = Normalize(segmenter.mean_, segmenter.std_)
        graphs, layout = segmenter.method_.graphs(segmenter.model_, normalize, x)
        files = {}
    graphs = {**graphs, QUALITY_ROLE: g_graph}
    for role, g in graphs.items():
        files[graph_file(role)] = _export_graph(
            g.module, g.example, g.inputs, g.outputs, opset=opset, exporter=exporter
        )
    sums = {}
    for name, blob in files.items():
        with atomic_write(out / name) as fh:
            fh.write(blob)
        sums[name] = hashlib.sha256(blob).hexdigest()
    for stale in earlier - sums.keys():  # an earlier export's graphs; other files are the user's
        (out / stale).unlink(missing_ok=True)

    config = bundle.config
    manifest: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "method": bundle.method,
        "method_params": segmenter.method_.get_params(),
        "predictor": config["predictor"],
        "image_size": size,
        "threshold": bundle.threshold,
        "threshold_rule": config.get("threshold_rule"),
        "failure_jaccard": config.get("failure_jaccard"),
        "gate": config["gate"],
        "uncertainty_vmax": config.get("uncertainty_vmax"),
        "pipeline": config.get("pipeline"),
        "quality_train": config.get("quality_train"),  # how g was trained: provenance kept with the graphs
        "graphs": {
            role: {"file": graph_file(role), "inputs": list(g.inputs), "outputs": list(g.outputs)}
            for role, g in graphs.items()
        },
        "layout": layout,
        "inputs": {
            "images": "uint8 (N, image_size, image_size, 3) RGB, resized by the caller (bilinear)",
            "masks": "uint8 (N, image_size, image_size) in {0, 1}: f's mask, probs[:, 1] > 0.5 (g only)",
            "uncertainty": "float32 (N, image_size, image_size): f's uncertainty map (g only)",
        },
        # Baked into the graphs; listed so that a reader knows what the graphs compute.
        "normalisation": {
            "f": (
                {"spec": segmenter.model.spec.to_dict()}
                if external
                else {"mean": list(segmenter.mean_), "std": list(segmenter.std_), "scale": "x / 255"}
            ),
            "g": {k: v for k, v in config["predictor_config"].items() if k != "params"},
        },
        "opset": opset,
        "exporter": exporter,
        "source": {
            "bundle": bundle.path.name,
            "sha256": config.get("sha256"),
            "manifest_sha256": bundle.manifest_sha256,
            "created": config.get("created"),
        },
        **({"segmenter": segmenter.config()} if external else {}),
        "versions": _versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "sha256": sums,
    }
    # Check through the backend that serves the graphs; the manifest stays only if the check passes.
    manifest = seal(manifest)
    write_json(out / MANIFEST, manifest)
    try:
        parity = _parity(bundle, load_onnx_model(out, device="cpu"), images, pred, seed)
    except BaseException:
        (out / MANIFEST).unlink(missing_ok=True)
        raise
    manifest["parity"] = parity
    if not parity["passed"]:
        (out / MANIFEST).unlink(missing_ok=True)
        raise SegQCError(
            f"the ONNX graphs disagree with PyTorch beyond the tolerance {TOLERANCE}: largest differences "
            f"{parity['max_abs_diff']}; {out} holds no {MANIFEST}, so it cannot be used"
        )
    write_json(out / MANIFEST, seal(manifest))
    (out / SIGNATURE_FILE).unlink(missing_ok=True)  # a signature of an earlier export no longer holds
    return out


def _exported_files(out: Path) -> set[str]:
    """The files an earlier export in ``out`` wrote (its manifest's checksums): plain names only, so a
    tampered manifest cannot point outside ``out``; none when there is no readable manifest."""
    try:
        sums = read_json_object(out / MANIFEST, "export manifest").get("sha256")
    except BundleError:
        return set()
    if not isinstance(sums, dict):
        return set()
    return {
        name for name in sums if isinstance(name, str) and name == Path(name).name and name.endswith(".onnx")
    }


def _parity(bundle: Bundle, onnx: OnnxModel, images: np.ndarray, pred: SegPrediction, seed: int) -> dict:
    """Largest differences between PyTorch and onnxruntime on ``images`` (f's outputs, g's quality).

    Both backends read f out with the same method code and the same seed, so stochastic methods draw
    the same random numbers on both sides.
    """
    out = onnx.segmenter.predict(images, rng=seed)
    samples = QualitySamples(images, pred.mask, pred.uncertainty)
    checks = {
        "probs": (out.probs, pred.probs),
        "uncertainty": (out.uncertainty, pred.uncertainty),
        "predicted_jaccard": (onnx.predictor.predict(samples), bundle.predictor.predict(samples)),
    }
    diffs, passed = {}, True
    for name, (got, want) in checks.items():
        diffs[name], ok = _within(got, want)
        passed = passed and ok
    return {
        "n_images": len(images),
        "tolerance": dict(TOLERANCE),
        "max_abs_diff": diffs,
        "passed": passed,
        "note": f"f and g on the same images; f read out with seed {seed} on both sides",
    }


def _versions() -> dict[str, str]:
    out = versions()
    from importlib import metadata

    for name in ("onnx", "onnxruntime", "onnxscript"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out

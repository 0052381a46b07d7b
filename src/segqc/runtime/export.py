"""Export a bundle's f and g to ONNX, checked against PyTorch (``segqc export``).

The graphs take raw ``uint8`` images: wrappers bake f's normalisation and g's input composition (the
code the torch path runs: ``to_input`` and ``CNNQualityPredictor._inputs``) into them, so an ONNX client
only resizes its images. Deterministic methods (msp, hcnn, lce) export f as one graph with outputs
``probs`` and ``uncertainty``. MC dropout exports ``encode`` and ``decode`` separately with the dropout
masks as explicit inputs (the masks are applied where ``nn.Dropout`` would act, through the same
``dropout_hooks`` ``MCDropout`` uses), so sampling stays with the caller: :mod:`segqc.runtime.onnx_backend`
draws the masks in NumPy and averages the T samples. See :mod:`segqc.runtime.onnx_backend` for the
folder layout.

After writing the graphs, the export runs a few images (two synthetic lesions and two noise images)
through PyTorch and through onnxruntime and records the largest differences in ``export.json``; it fails
when one exceeds :data:`TOLERANCE`. For mcdropout both sides get the same masks.

Examples::

    export_onnx("model", "model-onnx")                     # a bundle folder written by `segqc train`
    load_onnx_bundle("model-onnx").config["parity"]        # the differences measured
"""

from __future__ import annotations

import contextlib
import hashlib
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
from torch import Tensor, nn

from segqc.bundle import Bundle, load_bundle
from segqc.data.dataset import to_input
from segqc.data.synthetic import make_synthetic
from segqc.errors import BundleError, SegQCError
from segqc.quality.cnn import CNNQualityPredictor
from segqc.runtime.onnx_backend import (
    EXPORT_FORMAT,
    GRAPH_FILES,
    MANIFEST,
    ONNX_HINT,
    OPSET,
    entropy,
    load_onnx_bundle,
)
from segqc.segmenter import Segmenter
from segqc.types import QualitySamples
from segqc.uncertainty.base import NUM_CLASSES
from segqc.uncertainty.functional import dropout_hooks
from segqc.uncertainty.functional import entropy as torch_entropy
from segqc.uncertainty.mcdropout import MCDropout, _dropout_layout
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


class FNet(nn.Module):
    """f of a deterministic method (msp, hcnn, lce), normalisation included.

    Input ``(N, S, S, 3)`` uint8 images, ``S`` the bundle's ``image_size``; outputs class probabilities
    ``(N, 2, S, S)`` and the uncertainty map ``(N, S, S)``, as ``method.predict`` reads them out.
    """

    def __init__(self, segmenter: Segmenter) -> None:
        super().__init__()
        self.model, self.method = segmenter.model_, segmenter.method_
        self.mean, self.std = list(segmenter.mean_), list(segmenter.std_)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        return self.method.predict(self.model, to_input(images, self.mean, self.std))


class FEncoder(nn.Module):
    """The deterministic prefix of f (``UNet.encode``): uint8 images -> skip features and bottleneck."""

    def __init__(self, segmenter: Segmenter) -> None:
        super().__init__()
        self.model = segmenter.model_
        self.mean, self.std = list(segmenter.mean_), list(segmenter.std_)

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.model.encode(to_input(images, self.mean, self.std)))


class FDecoder(nn.Module):
    """The stochastic rest of f (``UNet.decode``), dropout masks as inputs -> softmax ``(B, 2, S, S)``.

    ``masks[i]`` multiplies the output of the i-th dropout call, in call order; a mask of ones is the
    deterministic network, a ``Bernoulli(1 - p) / (1 - p)`` draw one MC dropout sample.
    """

    def __init__(self, segmenter: Segmenter) -> None:
        super().__init__()
        self.model = segmenter.model_

    def forward(self, feats: list[Tensor], masks: list[Tensor]) -> Tensor:
        remaining = iter(masks)
        with dropout_hooks(self.model, lambda _layer, out: out * next(remaining)):
            out = self.model.decode(list(feats))
        return torch.softmax(out[:, :NUM_CLASSES], dim=1)


class GNet(nn.Module):
    """g with its input composition: uint8 images, uint8 masks, float32 maps -> predicted Jaccard ``(N,)``."""

    def __init__(self, predictor: CNNQualityPredictor) -> None:
        super().__init__()
        self.predictor, self.model = predictor, predictor.model_

    def forward(self, images: Tensor, masks: Tensor, uncertainty: Tensor) -> Tensor:
        return self.model(self.predictor._inputs(images, masks, uncertainty))


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
                shapes = tuple([{0: batch}] * len(a) if isinstance(a, list) else {0: batch} for a in args)
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
    and :func:`segqc.runtime.onnx_backend.load_onnx_bundle` refuses the folder). Graph files of an earlier
    export into the same folder that this one does not write are removed.

    Args:
        model: a bundle folder written by ``segqc train`` / :func:`segqc.bundle.train_bundle`, or a
            loaded :class:`~segqc.bundle.Bundle`.
        out_dir: the export folder, created if needed.
        opset: ONNX operator set. Defaults to :data:`segqc.runtime.onnx_backend.OPSET` (18).
        exporter: ``"dynamo"`` or ``"torchscript"`` (see :data:`EXPORTERS`). Defaults to ``"dynamo"``.
        seed: seed of the parity images and masks. Defaults to 0.

    Returns:
        The export folder.

    A loaded ``Bundle`` passed in is moved to the CPU (its ``device`` set to ``"cpu"``): the graphs are
    traced, and the PyTorch reference of the parity check runs, there.

    Raises:
        BundleError: the bundle is invalid (see ``load_bundle``), or its predictor is not a CNN
            (e.g. ``rca``, which has no network to export).
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
    if not isinstance(predictor, CNNQualityPredictor):
        raise BundleError(
            f"{bundle.path}: quality predictor {bundle.config['predictor']!r} cannot be exported to ONNX "
            "(only the CNN predictors can: uncertainty, no-uncertainty, qualitynet)"
        )
    segmenter.model_.cpu().eval()
    predictor.model_.cpu().eval()
    segmenter.device = predictor.device = "cpu"  # the parity reference runs where the export traced
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)

    size = bundle.image_size
    synthetic, _, _ = make_synthetic(2, size, seed=seed)
    noise = np.random.default_rng(seed).integers(0, 256, (PARITY_IMAGES - 2, size, size, 3), dtype=np.uint8)
    images = np.concatenate([synthetic, noise])
    x = torch.from_numpy(images)
    mc = segmenter.method_ if isinstance(segmenter.method_, MCDropout) else None

    graphs: dict[str, bytes] = {}
    manifest_mc = None
    if mc is None:
        graphs["f"] = _export_graph(FNet(segmenter), (x,), ["images"], ["probs", "uncertainty"],
                                    opset=opset, exporter=exporter)  # fmt: skip
    else:
        encoder, decoder = FEncoder(segmenter), FDecoder(segmenter)
        with torch.inference_mode():
            feats = list(encoder(x))
            layout = _dropout_layout(segmenter.model_, feats)
        names = [f"feat{i}" for i in range(len(feats))]
        mask_names = [f"mask{i}" for i in range(len(layout))]
        ones = [torch.ones(len(images), *shape) for _, shape in layout]
        graphs["f_encode"] = _export_graph(encoder, (x,), ["images"], names, opset=opset, exporter=exporter)
        graphs["f_decode"] = _export_graph(decoder, (feats, ones), [*names, *mask_names], ["probs"],
                                           opset=opset, exporter=exporter)  # fmt: skip
        manifest_mc = {
            "samples": mc.samples,
            "max_batch": mc.max_batch,
            "dropout": [{"p": float(layer.p), "shape": list(shape)} for layer, shape in layout],
        }
    with torch.inference_mode():
        pred = segmenter.predict(images)  # the torch reference for g's inputs (and f's, when deterministic)
    g_args = (x, torch.from_numpy(pred.mask), torch.from_numpy(pred.uncertainty))
    graphs["g"] = _export_graph(GNet(predictor), g_args, ["images", "masks", "uncertainty"], ["quality"],
                                opset=opset, exporter=exporter)  # fmt: skip

    sums = {}
    for role, blob in graphs.items():
        with atomic_write(out / GRAPH_FILES[role]) as fh:
            fh.write(blob)
        sums[GRAPH_FILES[role]] = hashlib.sha256(blob).hexdigest()
    for role, name in GRAPH_FILES.items():
        if role not in graphs:
            (out / name).unlink(missing_ok=True)

    config = bundle.config
    manifest: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "method": bundle.method,
        "method_params": config.get("method_params") or {},
        "predictor": config["predictor"],
        "image_size": size,
        "threshold": bundle.threshold,
        "threshold_rule": config.get("threshold_rule"),
        "failure_jaccard": config.get("failure_jaccard"),
        "uncertainty_vmax": config.get("uncertainty_vmax"),
        "pipeline": config.get("pipeline"),
        "graphs": {role: GRAPH_FILES[role] for role in graphs},
        "inputs": {
            "images": "uint8 (N, image_size, image_size, 3) RGB, resized by the caller (bilinear)",
            "masks": "uint8 (N, image_size, image_size) in {0, 1}: f's mask, probs[:, 1] > 0.5 (g only)",
            "uncertainty": "float32 (N, image_size, image_size): f's uncertainty map (g only)",
        },
        # Baked into the graphs; listed so that a reader knows what the graphs compute.
        "normalisation": {
            "f": {"mean": list(segmenter.mean_), "std": list(segmenter.std_), "scale": "x / 255"},
            "g": {
                "image_mean": list(predictor.image_mean_),
                "image_std": list(predictor.image_std_),
                "z_mean": predictor.z_mean_,
                "z_std": predictor.z_std_,
                "mask": "2 y - 1",
            },
        },  # fmt: skip
        "opset": opset,
        "exporter": exporter,
        "source": {
            "bundle": str(bundle.path.resolve()),
            "sha256": config.get("sha256"),
            "created": config.get("created"),
        },  # fmt: skip
        "versions": _versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "sha256": sums,
    }
    if manifest_mc is not None:
        manifest["mcdropout"] = manifest_mc
    # Check through the backend that serves the graphs; the manifest stays only if the check passes.
    write_json(out / MANIFEST, manifest)
    try:
        parity = _parity(bundle, load_onnx_bundle(out, device="cpu", seed=seed), images, pred)
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
    write_json(out / MANIFEST, manifest)
    return out


def _parity(bundle: Bundle, onnx_bundle: Any, images: np.ndarray, pred: Any) -> dict[str, Any]:
    """Largest differences between PyTorch and onnxruntime on ``images`` (f's outputs, g's quality)."""
    segmenter = bundle.segmenter
    diffs: dict[str, float] = {}
    passed = True
    if isinstance(segmenter.method_, MCDropout):
        # Same masks on both sides: T' = 3 samples of every image, then the mean softmax and its entropy.
        k, n = 3, len(images)
        masks = onnx_bundle.segmenter.draw_masks(k, n)
        sessions = onnx_bundle.segmenter.sessions
        feats = sessions["f_encode"].run(None, {"images": images})
        feed = {f"feat{i}": np.tile(f, (k, 1, 1, 1)) for i, f in enumerate(feats)}
        feed.update({f"mask{i}": m for i, m in enumerate(masks)})
        probs_onnx = (
            sessions["f_decode"].run(["probs"], feed)[0].reshape(k, n, NUM_CLASSES, *images.shape[1:3])
        )
        with torch.inference_mode():
            feats_t = FEncoder(segmenter)(torch.from_numpy(images))
            probs_t = FDecoder(segmenter)([f.repeat(k, 1, 1, 1) for f in feats_t],
                                          [torch.from_numpy(m) for m in masks])  # fmt: skip
            probs_t = probs_t.unflatten(0, (k, n))
            z_t = torch_entropy(probs_t.mean(0)).numpy()
        z_onnx = entropy(probs_onnx.mean(0))
        checks = {"probs": (probs_onnx, probs_t.numpy()), "uncertainty": (z_onnx, z_t)}
    else:
        out = onnx_bundle.segmenter.predict(images)
        checks = {"probs": (out.probs, pred.probs), "uncertainty": (out.uncertainty, pred.uncertainty)}
    samples = QualitySamples(images, pred.mask, pred.uncertainty)
    with torch.inference_mode():
        quality_t = bundle.predictor.predict(samples)
    checks["predicted_jaccard"] = (onnx_bundle.predictor.predict(samples), quality_t)
    for name, (got, want) in checks.items():
        diffs[name], ok = _within(got, want)
        passed = passed and ok
    return {
        "n_images": len(images),
        "tolerance": dict(TOLERANCE),
        "max_abs_diff": diffs,
        "passed": passed,
        "note": "mcdropout: same 3 dropout masks per image on both sides" if "f_encode" in
        onnx_bundle.segmenter.sessions else "f and g on the same images",
    }  # fmt: skip


def _versions() -> dict[str, str]:
    out = versions()
    from importlib import metadata

    for name in ("onnx", "onnxruntime", "onnxscript"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out

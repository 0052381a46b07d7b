"""Run an exported model (``segqc export``) with onnxruntime and NumPy only: no PyTorch on this path.

An export folder holds::

    f.onnx        f for msp, hcnn, lce: uint8 images (N, H, W, 3) -> probs (N, 2, H, W), uncertainty (N, H, W)
    f_encode.onnx f for mcdropout, the deterministic prefix: images -> feat0 ... featK
    f_decode.onnx f for mcdropout, the rest: feat0 ... featK, mask0 ... maskM -> probs (B, 2, H, W)
    g.onnx        g: images (N, H, W, 3) uint8, masks (N, H, W) uint8, uncertainty (N, H, W) float32
                  -> quality (N,), the predicted Jaccard
    export.json   method, threshold, image size, the normalisation (baked into the graphs, listed for
                  reference), sha256 of each graph, the parity measured against PyTorch at export, versions

The graphs that take images take raw uint8 ones: f's normalisation and g's input composition are baked
in, so a client only resizes its images to ``image_size``. Every graph has a dynamic batch axis. For
``mcdropout`` the dropout masks are graph inputs: NumPy draws them (``Bernoulli(1 - p) / (1 - p)``,
element-wise, as ``nn.Dropout`` does), f_decode is run for the ``T`` samples (several stacked along the
batch axis, as ``MCDropout.predict`` does), and the mean softmax and its entropy are computed here.

This module imports neither torch nor any segqc module that does, so a deployment can assess images
with onnxruntime alone; :class:`OnnxBundle` has the attributes :func:`segqc.assess.assess_images` and
:func:`segqc.assess.assess_files` use, so ``segqc predict --backend onnx`` shares their code.

Examples::

    bundle = load_onnx_bundle("model-onnx")
    pred = bundle.segmenter.predict(images)          # (N, S, S, 3) uint8 -> SegPrediction
    quality = bundle.predictor.predict(QualitySamples(images, pred.mask, pred.uncertainty))
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from segqc.errors import BundleError, SegQCError
from segqc.postprocess import entropy
from segqc.types import QualitySamples, SegPrediction

#: Version of the export layout; :func:`load_onnx_bundle` refuses other versions.
EXPORT_FORMAT = 1
MANIFEST = "export.json"
#: ONNX operator set of the exported graphs.
OPSET = 18
#: Graph files by role: one f graph for deterministic methods, two for mcdropout (``encode``, ``decode``).
GRAPH_FILES = {"f": "f.onnx", "f_encode": "f_encode.onnx", "f_decode": "f_decode.onnx", "g": "g.onnx"}
REQUIRED_KEYS = ("format", "method", "image_size", "threshold", "graphs", "sha256")
ONNX_HINT = "ONNX support needs the onnx extra: pip install 'segqc[onnx]'"


def _batches(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


class OnnxSegmenter:
    """f as ONNX graphs; ``predict`` has the signature and output of ``Segmenter.predict``.

    Args:
        sessions: onnxruntime sessions by role (``"f"``, or ``"f_encode"`` and ``"f_decode"``).
        config: the export manifest.
        seed: seed of the dropout masks (``mcdropout`` only). The masks differ from PyTorch's random
            stream, so MC estimates agree with the torch backend in distribution, not bit for bit.

    Attributes:
        rng: the NumPy generator the dropout masks are drawn from; consecutive calls continue it.
    """

    def __init__(self, sessions: dict[str, Any], config: dict[str, Any], *, seed: int = 0) -> None:
        self.sessions = sessions
        self.method = str(config["method"])
        self.mc: dict[str, Any] | None = config.get("mcdropout")
        self.rng = np.random.default_rng(seed)

    def predict(self, images: np.ndarray, *, batch_size: int = 32) -> SegPrediction:
        """Segment ``(N, S, S, 3)`` uint8 images, ``S`` the export's ``image_size``."""
        images = np.ascontiguousarray(images, dtype=np.uint8)
        probs, uncert = [], []
        for part in _batches(len(images), batch_size):
            if self.mc is None:
                p, z = self.sessions["f"].run(["probs", "uncertainty"], {"images": images[part]})
            else:
                p = self._mc_mean(images[part])
                z = entropy(p)
            probs.append(p[:, 1].astype(np.float32))
            uncert.append(z.astype(np.float32))
        if not probs:
            empty = np.zeros((0, *images.shape[1:3]), np.float32)
            return SegPrediction(empty, empty.astype(np.uint8), empty)
        fg = np.concatenate(probs)
        return SegPrediction(probs=fg, mask=(fg > 0.5).astype(np.uint8), uncertainty=np.concatenate(uncert))

    def draw_masks(self, k: int, n: int) -> list[np.ndarray]:
        """Scaled dropout masks for ``k`` samples of ``n`` images: one ``(k n, C, h, w)`` array per
        dropout call of the decoder, sample-major (sample ``t`` of image ``i`` at row ``t n + i``)."""
        assert self.mc is not None
        masks = []
        for layer in self.mc["dropout"]:
            keep = 1.0 - float(layer["p"])
            shape = (k * n, *layer["shape"])
            if keep <= 0.0:
                masks.append(np.zeros(shape, np.float32))
            else:
                masks.append((self.rng.random(shape, dtype=np.float32) < keep).astype(np.float32) / keep)
        return masks

    def _mc_mean(self, images: np.ndarray) -> np.ndarray:
        """Mean softmax ``(n, 2, S, S)`` of the T dropout samples, chunked as in ``MCDropout.iter_samples``.

        The encoder runs once; the decoder runs on ``k`` samples at a time stacked along the batch axis,
        ``k = max(1, max_batch // n)``, features tiled sample-major like ``Tensor.repeat``.
        """
        assert self.mc is not None
        encode, decode = self.sessions["f_encode"], self.sessions["f_decode"]
        n, samples = len(images), int(self.mc["samples"])
        feats = encode.run(None, {"images": images})  # run once: everything before dropout is deterministic
        per_chunk = max(1, int(self.mc["max_batch"]) // n)
        total = None
        for start in range(0, samples, per_chunk):
            k = min(per_chunk, samples - start)
            feed = {f"feat{i}": np.tile(f, (k,) + (1,) * (f.ndim - 1)) for i, f in enumerate(feats)}
            feed.update({f"mask{i}": m for i, m in enumerate(self.draw_masks(k, n))})
            (probs,) = decode.run(["probs"], feed)
            chunk = probs.reshape(k, n, *probs.shape[1:]).sum(0)
            total = chunk if total is None else total + chunk
        return total / np.float32(samples)


class OnnxQualityPredictor:
    """g as an ONNX graph; ``predict`` has the signature and output of ``QualityPredictor.predict``."""

    def __init__(self, session: Any, name: str) -> None:
        self.session = session
        self.name = name
        # A predictor that ignores the map (e.g. "no-uncertainty") may have no "uncertainty" input.
        self._inputs = {i.name for i in session.get_inputs()}

    def predict(self, samples: QualitySamples, *, batch_size: int = 64) -> np.ndarray:
        """Predicted Jaccard ``(N,)`` float64 of ``(N, S, S)`` masks and maps of ``(N, S, S, 3)`` images."""
        arrays = {
            "images": np.ascontiguousarray(samples.images, dtype=np.uint8),
            "masks": np.ascontiguousarray(samples.masks, dtype=np.uint8),
            "uncertainty": np.ascontiguousarray(samples.uncertainty, dtype=np.float32),
        }
        out = [np.zeros(0, np.float32)]
        for part in _batches(len(samples), batch_size):
            feed = {k: v[part] for k, v in arrays.items() if k in self._inputs}
            out.append(self.session.run(["quality"], feed)[0].reshape(-1))
        return np.concatenate(out).astype(np.float64)


@dataclass
class OnnxBundle:
    """A loaded export folder; duck-types :class:`segqc.bundle.Bundle` for ``segqc.assess.folder``.

    Attributes:
        segmenter: f, with ``predict`` like ``Segmenter.predict``.
        predictor: g, with ``predict`` like ``QualityPredictor.predict``.
        config: the parsed ``export.json``.
        path: the export folder.
    """

    segmenter: OnnxSegmenter
    predictor: OnnxQualityPredictor
    config: dict[str, Any]
    path: Path
    backend: ClassVar[str] = "onnx"

    def segment(self, images: np.ndarray) -> SegPrediction:
        """f on ``(N, S, S, 3)`` uint8 images (:meth:`segqc.runtime.Model.segment`)."""
        return self.segmenter.predict(images)

    def predict_quality(self, samples: QualitySamples) -> np.ndarray:
        """g's predicted Jaccard ``(N,)`` (:meth:`segqc.runtime.Model.predict_quality`)."""
        return self.predictor.predict(samples)

    @property
    def threshold(self) -> float:
        """Predicted Jaccard below which a segmentation is referred to a human."""
        return float(self.config["threshold"])

    @property
    def image_size(self) -> int:
        """Side of the square images the graphs were exported for; inputs are resized to it."""
        return int(self.config["image_size"])

    @property
    def method(self) -> str:
        return str(self.config["method"])

    @property
    def uncertainty_vmax(self) -> float | None:
        value = self.config.get("uncertainty_vmax")
        return float(value) if value else None

    def metadata(self) -> dict[str, Any]:
        """A JSON-able summary, like ``Bundle.metadata`` plus the backend and the measured parity."""
        keys = ("format", "method", "method_params", "predictor", "image_size", "threshold", "threshold_rule",
                "failure_jaccard", "created", "versions", "parity", "opset", "exporter")  # fmt: skip
        return {"backend": self.backend, **{k: self.config.get(k) for k in keys}}


def providers_for(device: str) -> list[str]:
    """onnxruntime execution providers for ``auto``, ``cpu`` or ``cuda``."""
    ort = _onnxruntime()
    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda" and "CUDAExecutionProvider" not in available:
        raise SegQCError(f"--device cuda was asked for but onnxruntime has no CUDA provider ({available})")
    if device in ("auto", "cuda") and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device not in ("auto", "cuda"):
        raise SegQCError(f"device must be auto, cpu or cuda, got {device!r}")
    return ["CPUExecutionProvider"]


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise SegQCError(ONNX_HINT) from None
    return onnxruntime


def read_manifest(export_dir: str | Path) -> dict[str, Any]:
    """Read and check ``export.json`` of an export folder.

    Raises:
        BundleError: the folder or ``export.json`` is missing or unreadable, lacks a key, has another
            format version, or names unknown graphs.
    """
    path = Path(export_dir)
    if not path.is_dir():
        raise BundleError(f"{path}: ONNX export folder not found")
    file = path / MANIFEST
    if not file.is_file():
        hint = " (a PyTorch model bundle: use --backend torch, or run `segqc export` first)"
        raise BundleError(
            f"{path}: not an ONNX export ({MANIFEST} not found)"
            + (hint if (path / "bundle.json").is_file() else "")
        )
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise BundleError(f"{file}: cannot read export manifest ({err})") from None
    if not isinstance(config, dict):
        raise BundleError(f"{file}: export manifest must be a JSON object")
    if "format" in config and config["format"] != EXPORT_FORMAT:
        raise BundleError(
            f"{file}: export format {config['format']!r} is not supported (this segqc reads format "
            f"{EXPORT_FORMAT}); export the model again with this version"
        )
    for key in REQUIRED_KEYS:
        if key not in config:
            raise BundleError(f"{file}: export manifest lacks the key {key!r}")
    graphs, size, threshold = config["graphs"], config["image_size"], config["threshold"]
    roles = {"g", "f_encode", "f_decode"} if config.get("mcdropout") else {"g", "f"}
    if (
        not isinstance(graphs, dict)
        or set(graphs) != roles
        or not all(graphs[r] == GRAPH_FILES[r] for r in roles)
    ):
        raise BundleError(
            f"{file}: 'graphs' must be { ({r: GRAPH_FILES[r] for r in sorted(roles)}) }, got {graphs!r}"
        )
    if not isinstance(size, int) or size < 16 or size % 16:
        raise BundleError(f"{file}: image_size must be a positive multiple of 16, got {size!r}")
    if not isinstance(threshold, (int, float)) or not 0.0 < threshold <= 1.0:
        raise BundleError(f"{file}: threshold must be a number in (0, 1], got {threshold!r}")
    if config.get("mcdropout"):
        mc = config["mcdropout"]
        try:
            ok = int(mc["samples"]) >= 1 and int(mc["max_batch"]) >= 1 and len(mc["dropout"]) >= 1
            ok = ok and all(0.0 <= float(d["p"]) < 1.0 and len(d["shape"]) >= 1 for d in mc["dropout"])
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise BundleError(f"{file}: invalid 'mcdropout' settings {mc!r}")
    return config


def load_onnx_bundle(
    export_dir: str | Path, *, device: str = "auto", threads: int | None = None, seed: int | None = None
) -> OnnxBundle:
    """Load and check an export folder written by ``segqc export`` (:func:`segqc.runtime.export.export_onnx`).

    Args:
        export_dir: the export folder.
        device: ``auto`` (CUDA when onnxruntime has it), ``cpu`` or ``cuda``. Defaults to ``auto``.
        threads: onnxruntime intra-op threads. Defaults to onnxruntime's choice (all physical cores).
        seed: seed of the ``mcdropout`` masks. Defaults to the seed the model was trained with.

    Raises:
        BundleError: a file is missing or damaged (checksum), the manifest is invalid, or onnxruntime
            cannot load a graph or the graph lacks the inputs and outputs this backend feeds.
        SegQCError: onnxruntime is not installed, or ``device`` is not available.
    """
    path = Path(export_dir)
    config = read_manifest(path)
    ort = _onnxruntime()
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: shape-inference chatter is not for users
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    providers = providers_for(device)
    sessions = {}
    for role, name in config["graphs"].items():
        file = path / name
        if not file.is_file():
            raise BundleError(f"{file}: graph file not found")
        blob = file.read_bytes()
        if hashlib.sha256(blob).hexdigest() != (config["sha256"] or {}).get(name):
            raise BundleError(f"{file}: checksum mismatch (the file differs from the one this export wrote)")
        try:
            sessions[role] = ort.InferenceSession(blob, options, providers=providers)
        except Exception as err:  # onnxruntime raises its own exception types for invalid graphs
            raise BundleError(
                f"{file}: onnxruntime cannot load this graph ({type(err).__name__}: {err})"
            ) from None
    _check_signatures(path, config, sessions)
    if seed is None:
        seed = int((config.get("pipeline") or {}).get("seed", 0) or 0)
    segmenter = OnnxSegmenter({k: v for k, v in sessions.items() if k != "g"}, config, seed=seed)
    predictor = OnnxQualityPredictor(sessions["g"], str(config.get("predictor", "")))
    return OnnxBundle(segmenter, predictor, config, path)


def _check_signatures(path: Path, config: dict[str, Any], sessions: dict[str, Any]) -> None:
    """The graphs must take and give the tensors this module feeds and reads, by name."""
    n_masks = len((config.get("mcdropout") or {}).get("dropout", ()))
    n_feats = len(sessions["f_encode"].get_outputs()) if "f_encode" in sessions else 0
    expected = {
        "f": ({"images"}, {"probs", "uncertainty"}),
        "f_encode": ({"images"}, {f"feat{i}" for i in range(n_feats)}),
        "f_decode": ({f"feat{i}" for i in range(n_feats)} | {f"mask{i}" for i in range(n_masks)}, {"probs"}),
        "g": ({"images", "masks"}, {"quality"}),
    }
    for role, session in sessions.items():
        inputs = {i.name for i in session.get_inputs()}
        outputs = {o.name for o in session.get_outputs()}
        need_in, need_out = expected[role]
        if not need_in <= inputs or not need_out <= outputs or (role == "f_decode" and inputs != need_in):
            raise BundleError(
                f"{path / config['graphs'][role]}: graph has inputs {sorted(inputs)} and outputs "
                f"{sorted(outputs)}; expected {sorted(need_in)} -> {sorted(need_out)}"
            )

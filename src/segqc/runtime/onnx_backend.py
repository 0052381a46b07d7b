"""Run an exported model (``segqc export``) with ONNX Runtime and NumPy only: no PyTorch on this path.

An export folder holds::

    <role>.onnx   f's graphs, as its uncertainty method declares them (``UncertaintyMethod.graphs``):
                  ``f.onnx`` (uint8 images (N, H, W, 3) -> probs (N, 2, H, W), uncertainty (N, H, W))
                  for a deterministic method; e.g. ``f_encode.onnx`` + ``f_decode.onnx`` for mcdropout
    segmenter.onnx  instead of f's graphs, when f is an external model (``segqc train --segmenter``): the
                  user's own ONNX file, fed as its SPEC (``segmenter.external`` in export.json) says;
                  an ensemble of K such models: ``segmenter-0.onnx`` ... ``segmenter-{K-1}.onnx``
    g.onnx        g: images (N, H, W, 3) uint8, masks (N, H, W) uint8, uncertainty (N, H, W) float32
                  -> quality (N,), the predicted Jaccard
    export.json   method and its settings, the graphs with their input and output names, the method's
                  ``layout``, threshold, image size, the normalisation (baked into the graphs, listed for
                  reference), sha256 of each graph, the parity measured against PyTorch, versions

Graphs that take images take raw uint8 ones: normalisation and g's input composition are baked in, so a
client only resizes its images to ``image_size``. Every graph has a dynamic batch axis. f is read out by
the method's own ``read_out`` (NumPy, :mod:`segqc.uncertainty`), the same code the PyTorch backend runs,
so stochastic methods draw the same random numbers on both backends for the same seed.

Examples::

    model = load_onnx_model("model-onnx")
    pred = model.segment(images)                     # (N, S, S, 3) uint8 -> SegPrediction
    quality = model.predict_quality(QualitySamples(images, pred.mask, pred.uncertainty))
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from segqc.errors import BundleError, SegQCError, UnknownNameError
from segqc.external import load_external_segmenter
from segqc.gate import gate_summary
from segqc.model import ManifestModel, check_manifest, read_manifest_json, self_test
from segqc.postprocess import batches, segment_batches
from segqc.types import QualitySamples, Runner, SegPrediction
from segqc.uncertainty import UncertaintyMethod, create_method

#: Version of the export layout; :func:`load_onnx_model` refuses other versions.
EXPORT_FORMAT = 3
MANIFEST = "export.json"
#: ONNX operator set of the exported graphs.
OPSET = 18
#: g's graph; f's graphs are named by their method.
QUALITY_ROLE = "g"
QUALITY_IO = (["images", "masks", "uncertainty"], ["quality"])
REQUIRED_KEYS = ("format", "method", "image_size", "threshold", "graphs", "sha256", "gate")
ONNX_HINT = "ONNX support needs the onnx extra: pip install 'segqc[onnx]'"
_ROLE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")


def graph_file(role: str) -> str:
    return f"{role}.onnx"


class OnnxRunner:
    """Runs graphs by role on NumPy inputs with ONNX Runtime (the ``Runner`` of ``read_out``)."""

    def __init__(self, sessions: dict[str, Any], graphs: Mapping[str, Mapping[str, Any]]) -> None:
        self.sessions, self.graphs = sessions, graphs

    def __call__(self, role: str, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        spec = self.graphs[role]
        feed = {name: np.ascontiguousarray(feeds[name]) for name in spec["inputs"]}  # ORT reads C order
        return self.sessions[role].run(list(spec["outputs"]), feed)


class OnnxSegmenter:
    """f as ONNX graphs; ``predict`` has the signature and output of ``Segmenter.predict``.

    Args:
        runner: runs f's graphs.
        method: the uncertainty method, whose ``read_out`` combines the graphs' outputs.
        layout: the method's settings saved with the graphs.
        seed: seed of the generator stochastic read-outs draw from; consecutive calls continue it.
    """

    def __init__(
        self, runner: Runner, method: UncertaintyMethod, layout: Mapping[str, Any], *, seed: int = 0
    ) -> None:
        self.runner, self.method_, self.layout = runner, method, layout
        self.rng_ = np.random.default_rng(seed)

    def predict(
        self, images: np.ndarray, *, batch_size: int = 32, rng: np.random.Generator | int | None = None
    ) -> SegPrediction:
        """Segment ``(N, S, S, 3)`` uint8 images, ``S`` the export's ``image_size``."""
        generator = self.rng_ if rng is None else np.random.default_rng(rng)
        return segment_batches(
            lambda part: self.method_.read_out(self.runner, part, generator, self.layout), images, batch_size
        )


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
        for part in batches(len(samples), batch_size):
            feed = {k: v[part] for k, v in arrays.items() if k in self._inputs}
            out.append(self.session.run(["quality"], feed)[0].reshape(-1))
        return np.concatenate(out).astype(np.float64)


class OnnxModel(ManifestModel):
    """A loaded export folder: the :class:`segqc.runtime.Model` of the ONNX Runtime backend.

    Attributes:
        segmenter: f, with ``predict`` like ``Segmenter.predict``.
        predictor: g, with ``predict`` like ``QualityPredictor.predict``.
        config: the parsed ``export.json``.
        path: the export folder.
    """

    backend = "onnx"

    def __init__(
        self, segmenter: OnnxSegmenter, predictor: OnnxQualityPredictor, config: dict[str, Any], path: Path
    ) -> None:
        self.segmenter, self.predictor, self.config, self.path = segmenter, predictor, config, path

    def segment(self, images: np.ndarray) -> SegPrediction:
        return self.segmenter.predict(images)

    def predict_quality(self, samples: QualitySamples) -> np.ndarray:
        return self.predictor.predict(samples)

    def metadata(self) -> dict[str, Any]:
        """A JSON-able summary, like ``Bundle.metadata`` plus the backend and the measured parity."""
        keys = ("format", "method", "method_params", "predictor", "image_size", "threshold", "threshold_rule",
                "failure_jaccard", "created", "versions", "parity", "opset", "exporter")  # fmt: skip
        return {
            "backend": self.backend,
            **{k: self.config.get(k) for k in keys},
            "gate": gate_summary(self.config),
            "manifest_sha256": self.manifest_sha256,
        }


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


def _names(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) and v for v in value)


def read_manifest(export_dir: str | Path) -> dict[str, Any]:
    """Read and check ``export.json`` of an export folder.

    Raises:
        BundleError: the folder or ``export.json`` is missing or unreadable, lacks a key, has another
            format version, or describes its graphs wrongly.
    """
    path = Path(export_dir)
    file = path / MANIFEST
    config = read_manifest_json(
        path, MANIFEST, "ONNX export", "export manifest", version=EXPORT_FORMAT, redo="export the model again"
    )
    for key in REQUIRED_KEYS:
        if key not in config:
            raise BundleError(f"{file}: export manifest lacks the key {key!r}")
    graphs = config["graphs"]
    external = isinstance(config.get("segmenter"), dict) and "external" in config["segmenter"]
    # f is the method's graphs, or (external) segmenter.onnx or its members, outside 'graphs'
    ok = isinstance(graphs, dict) and QUALITY_ROLE in graphs and len(graphs) >= (1 if external else 2)
    ok = ok and all(
        isinstance(role, str) and _ROLE.match(role) and isinstance(spec, dict)
        and spec.get("file") == graph_file(role)
        and _names(spec.get("inputs")) and _names(spec.get("outputs"))
        for role, spec in graphs.items()
    )  # fmt: skip
    if not ok:
        raise BundleError(
            f"{file}: 'graphs' must map roles (including {QUALITY_ROLE!r}) to "
            "{'file': '<role>.onnx', 'inputs': [...], 'outputs': [...]}"
        )
    check_manifest(config, file)
    if not isinstance(config["sha256"], dict):
        raise BundleError(f"{file}: 'sha256' must be a JSON object")
    if not isinstance(config.get("layout", {}), dict) or not isinstance(
        config.get("method_params", {}), dict
    ):
        raise BundleError(f"{file}: 'layout' and 'method_params' must be JSON objects")
    return config


def load_onnx_model(
    export_dir: str | Path, *, device: str = "auto", threads: int | None = None, seed: int | None = None
) -> OnnxModel:
    """Load and check an export folder written by ``segqc export`` (:func:`segqc.runtime.export.export_onnx`).

    Args:
        export_dir: the export folder.
        device: ``auto`` (CUDA when onnxruntime has it), ``cpu`` or ``cuda``. Defaults to ``auto``.
        threads: onnxruntime intra-op threads. Defaults to onnxruntime's choice (all physical cores).
        seed: seed of stochastic read-outs. Defaults to the seed the model was trained with.

    Raises:
        BundleError: a file is missing or damaged (checksum), the manifest is invalid, the method is
            unknown, or onnxruntime cannot load a graph or the graph lacks the inputs and outputs the
            manifest names.
        SegQCError: onnxruntime is not installed, or ``device`` is not available.
    """
    path = Path(export_dir)
    config = read_manifest(path)
    try:
        method = create_method(str(config["method"]), **(config.get("method_params") or {}))
    except (UnknownNameError, TypeError) as err:
        raise BundleError(f"{path / MANIFEST}: {err}") from None
    ort = _onnxruntime()
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: shape-inference chatter is not for users
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    providers = providers_for(device)
    sessions = {}
    for role, spec in config["graphs"].items():
        file = path / spec["file"]
        if not file.is_file():
            raise BundleError(f"{file}: graph file not found")
        blob = file.read_bytes()
        if hashlib.sha256(blob).hexdigest() != (config["sha256"] or {}).get(spec["file"]):
            raise BundleError(f"{file}: checksum mismatch (the file differs from the one this export wrote)")
        try:
            sessions[role] = ort.InferenceSession(blob, options, providers=providers)
        except Exception as err:  # onnxruntime raises its own exception types for invalid graphs
            raise BundleError(
                f"{file}: onnxruntime cannot load this graph ({type(err).__name__}: {err})"
            ) from None
        _check_signature(file, spec, sessions[role], role)
    if seed is None:
        seed = int((config.get("pipeline") or {}).get("seed", 0) or 0)
    f_graphs = {role: spec for role, spec in config["graphs"].items() if role != QUALITY_ROLE}
    runner: Runner = OnnxRunner({role: sessions[role] for role in f_graphs}, f_graphs)
    if "segmenter" in config:  # f is external model(s) (segmenter.onnx or members), fed as the SPEC says
        external = load_external_segmenter(path, config, path / MANIFEST, device=device, threads=threads)
        runner, method = external.runner, external.method_
    segmenter = OnnxSegmenter(runner, method, config.get("layout") or {}, seed=seed)
    predictor = OnnxQualityPredictor(sessions[QUALITY_ROLE], str(config.get("predictor", "")))
    model = OnnxModel(segmenter, predictor, config, path)
    self_test(model, path / MANIFEST)
    segmenter.rng_ = np.random.default_rng(seed)  # the self-test drew from it: start afresh at the seed
    return model


def _check_signature(file: Path, spec: Mapping[str, Any], session: Any, role: str) -> None:
    """A graph must take exactly the inputs and give at least the outputs its manifest names."""
    inputs = {i.name for i in session.get_inputs()}
    outputs = {o.name for o in session.get_outputs()}
    need_in, need_out = set(spec["inputs"]), set(spec["outputs"])
    if role == QUALITY_ROLE:  # g may ignore the map
        ok = {"images", "masks"} <= inputs <= set(QUALITY_IO[0]) and set(QUALITY_IO[1]) <= outputs
    else:
        ok = inputs == need_in and need_out <= outputs
    if not ok:
        raise BundleError(
            f"{file}: graph has inputs {sorted(inputs)} and outputs {sorted(outputs)}; expected "
            f"{sorted(need_in)} -> {sorted(need_out)}"
        )

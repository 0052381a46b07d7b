"""An external model behind segqc's f: a :data:`~segqc.types.Runner` answering the role ``"f"``.

``ExternalRunner`` gives what segqc's own f graph gives (``probs (N, 2, S, S)``, ``uncertainty
(N, S, S)``, one minus the largest class probability, as ``msp``), so the NumPy ``read_out`` of every
uncertainty method that only runs the ``f`` graph works unchanged on an external model. Methods that
need f's insides (dropout layers, extra output channels) declare ``external_ok = False`` and are
refused. ``ExternalSegmenter`` is f for training, bundles and export: ``predict`` like
``Segmenter.predict``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from segqc.errors import BundleError, SegQCError
from segqc.external.onnx_model import ExternalOnnxModel
from segqc.external.spec import ExternalSpec
from segqc.postprocess import pixel_batch, segment_batches
from segqc.types import SegPrediction
from segqc.uncertainty import METHODS, UncertaintyMethod, create_method

#: The ONNX file of an external f in a bundle or an export.
EXTERNAL_FILE = "segmenter.onnx"


def two_class(fg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Foreground probability ``(N, S, S)`` -> ``probs (N, 2, S, S)`` ``[1 - p, p]`` and the map
    ``1 - max(p, 1 - p)`` (the ``msp`` map), float32."""
    fg = np.asarray(fg, np.float32)
    probs = np.stack([1.0 - fg, fg], axis=1)
    return probs, (1.0 - np.maximum(fg, 1.0 - fg)).astype(np.float32)


class ExternalRunner:
    """Runs the role ``"f"`` on an external model: ``{"images": uint8 (N, S, S, 3)}`` ->
    ``[probs (N, 2, S, S), uncertainty (N, S, S)]``."""

    roles = ("f",)

    def __init__(self, model: ExternalOnnxModel) -> None:
        self.model = model

    def __call__(self, role: str, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        if role != "f":
            raise SegQCError(f"an external segmentation model has only the graph 'f', not {role!r}")
        probs, uncertainty = two_class(self.model.foreground(feeds["images"]))
        return [probs, uncertainty]


def external_method(name: str, params: Mapping[str, Any] | None = None) -> UncertaintyMethod:
    """The uncertainty method ``name`` if it can read out an external model, else a ``SegQCError``."""
    method = create_method(name, **dict(params or {}))
    if not type(method).external_ok:
        usable = ", ".join(n for n in METHODS.names() if getattr(METHODS.get(n), "external_ok", False))
        raise SegQCError(
            f"uncertainty method {name!r} needs segqc's own network (its insides: dropout, extra outputs) "
            f"and cannot read out an external model; use one of: {usable}"
        )
    return method


class ExternalSegmenter:
    """f as an external ONNX model, read out by an uncertainty method (``predict`` like
    ``Segmenter.predict``); already fitted, never trained.

    Args:
        model: the external model.
        method: an uncertainty method with ``external_ok``. Defaults to ``"msp"``.
        method_params: its settings.
        seed: seed of stochastic read-outs. Defaults to 0.
        source: the original file name, recorded in the bundle.
    """

    external = True

    def __init__(
        self,
        model: ExternalOnnxModel,
        method: str = "msp",
        *,
        method_params: dict[str, Any] | None = None,
        seed: int = 0,
        source: str | None = None,
    ) -> None:
        self.model, self.method, self.method_params, self.seed = model, method, method_params, seed
        self.source = source or model.source
        self.method_ = external_method(method, method_params)
        self.runner = ExternalRunner(model)
        self.rng_ = np.random.default_rng(seed)
        self.device = "cpu"

    def predict(
        self,
        images: np.ndarray,
        *,
        batch_size: int | None = None,
        rng: np.random.Generator | int | None = None,
    ) -> SegPrediction:
        """Segment ``(N, S, S, 3)`` uint8 images; ``rng`` drives stochastic read-outs."""
        if batch_size is None:
            batch_size = max(4, pixel_batch(*images.shape[1:3]))
        generator = self.rng_ if rng is None else np.random.default_rng(rng)
        return segment_batches(
            lambda part: self.method_.read_out(self.runner, part, generator, {}), images, batch_size
        )

    def config(self) -> dict[str, Any]:
        """The bundle's ``segmenter`` section."""
        return {
            "params": {"method": self.method, "method_params": self.method_params or {}, "seed": self.seed},
            "external": {"file": EXTERNAL_FILE, "spec": self.model.spec.to_dict(), "source": self.source},
        }


def load_external_segmenter(
    path: Path, config: dict[str, Any], manifest: Path, *, device: str = "auto", threads: int | None = None
) -> ExternalSegmenter:
    """f of a bundle or an export whose f is an external ONNX model: ``segmenter.onnx`` in ``path``,
    checked against ``config["sha256"]``, fed as the SPEC in ``config["segmenter"]["external"]`` says.

    Raises:
        BundleError: the file is missing or changed, the section is malformed, or the model does not
            fit its SPEC (named after ``manifest``).
    """
    file = Path(path) / EXTERNAL_FILE
    if not file.is_file():
        raise BundleError(f"{file}: external segmentation model not found")
    blob = file.read_bytes()
    if hashlib.sha256(blob).hexdigest() != (config.get("sha256") or {}).get(EXTERNAL_FILE):
        raise BundleError(
            f"{file}: checksum mismatch (the file differs from the one this model was saved with)"
        )
    section = config.get("segmenter") or {}
    external, params = section.get("external"), section.get("params")
    if not isinstance(external, dict) or not isinstance(params, dict):
        raise BundleError(f"{manifest}: 'segmenter.external' and 'segmenter.params' must be JSON objects")
    seed = params.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise BundleError(f"{manifest}: 'segmenter.params.seed' must be an integer >= 0, got {seed!r}")
    try:
        spec = ExternalSpec.from_dict(external.get("spec"), f"{manifest}: segmenter.external.spec")
        model = ExternalOnnxModel(
            blob, spec, int(config["image_size"]), source=str(file), device=device, threads=threads
        )
        return ExternalSegmenter(
            model, str(config["method"]), method_params=config.get("method_params") or None, seed=seed,
            source=str(external.get("source") or EXTERNAL_FILE),
        )  # fmt: skip
    except BundleError:
        raise
    except SegQCError as err:
        raise BundleError(str(err)) from None
    except TypeError as err:  # method settings that the method does not take
        raise BundleError(f"{manifest}: {err}") from None

"""An external model behind segqc's f: a :data:`~segqc.types.Runner` answering the role ``"f"``.

``ExternalRunner`` gives what segqc's own f graph gives: for one model ``probs (N, 2, S, S)`` and
``uncertainty (N, S, S)`` (one minus the largest class probability, as ``msp``), for K >= 2 models (an
ensemble) every member's foreground probability ``member_probs (N, K, S, S)`` (as ``ensemble``'s graph).
So the NumPy ``read_out`` of a method works unchanged on external models when its
``UncertaintyMethod.external_models`` says it reads what they give; the others are refused.
``ExternalSegmenter`` is f for training, bundles and export: ``predict`` like ``Segmenter.predict``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segqc.errors import BundleError, SegQCError
from segqc.external.onnx_model import ExternalOnnxModel
from segqc.external.spec import ExternalSpec
from segqc.postprocess import pixel_batch, segment_batches
from segqc.types import SegPrediction
from segqc.uncertainty import METHODS, UncertaintyMethod, create_method

#: The ONNX file of an external f in a bundle or an export; the members of an ensemble are
#: ``segmenter-0.onnx`` ... ``segmenter-{K-1}.onnx`` (:func:`external_files`).
EXTERNAL_FILE = "segmenter.onnx"
MEMBER_FILE = "segmenter-{}.onnx"


def external_files(external: Mapping[str, Any]) -> list[str]:
    """The ONNX files of a bundle's or export's ``segmenter.external`` section, in member order: one
    model, ``segmenter.onnx``; ``members`` (a list of ``{"file", "source"}``), ``segmenter-<k>.onnx``.

    Raises:
        SegQCError: ``members`` is not such a list of K >= 2 entries with those file names.
    """
    members = external.get("members")
    if members is None:
        return [EXTERNAL_FILE]
    if "file" in external:
        raise SegQCError(
            "'segmenter.external' has both 'file' (one model) and 'members' (an ensemble); it must have one"
        )
    files = [MEMBER_FILE.format(k) for k in range(len(members) if isinstance(members, list) else 0)]
    if len(files) < 2 or any(
        not isinstance(m, dict) or m.get("file") != f for m, f in zip(members, files, strict=True)
    ):
        raise SegQCError(
            "'segmenter.external.members' must list K >= 2 objects {'file': 'segmenter-<k>.onnx', "
            "'source': ...}, k = 0..K-1"
        )
    return files


def two_class(fg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Foreground probability ``(N, S, S)`` -> ``probs (N, 2, S, S)`` ``[1 - p, p]`` and the map
    ``1 - max(p, 1 - p)`` (the ``msp`` map), float32."""
    fg = np.asarray(fg, np.float32)
    probs = np.stack([1.0 - fg, fg], axis=1)
    return probs, (1.0 - np.maximum(fg, 1.0 - fg)).astype(np.float32)


class ExternalRunner:
    """Runs the role ``"f"`` on external models: ``{"images": uint8 (N, S, S, 3)}`` -> for one model
    ``[probs (N, 2, S, S), uncertainty (N, S, S)]``, for K >= 2 ``[member_probs (N, K, S, S)]``."""

    roles = ("f",)

    def __init__(self, models: ExternalOnnxModel | Sequence[ExternalOnnxModel]) -> None:
        self.models = [models] if isinstance(models, ExternalOnnxModel) else list(models)

    def __call__(self, role: str, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        if role != "f":
            raise SegQCError(f"an external segmentation model has only the graph 'f', not {role!r}")
        if len(self.models) > 1:
            return [np.stack([m.foreground(feeds["images"]) for m in self.models], axis=1)]
        probs, uncertainty = two_class(self.models[0].foreground(feeds["images"]))
        return [probs, uncertainty]


def external_params(name: str, params: Mapping[str, Any] | None = None, models: int = 1) -> dict[str, Any]:
    """The settings with which method ``name`` reads out ``models`` external models
    (``UncertaintyMethod.external_params``).

    Raises:
        SegQCError: the method reads out another number of external models (or none), naming the
            methods that fit; or a setting disagrees with ``models``.
    """
    cls = METHODS.get(name)
    wants, given = cls.external_models, "one" if models == 1 else "members"
    if wants != given:
        usable = ", ".join(n for n in METHODS.names() if METHODS.get(n).external_models == given)
        what = "an external model" if models == 1 else f"{models} external models"
        if wants is None:
            why = "needs segqc's own network (its insides: dropout, extra outputs) and cannot read out "
            why += what
        elif wants == "one":
            why = f"reads out one model, not an ensemble of {what}"
        else:
            why = (
                "combines the members of an ensemble: give at least 2 segmentation model files, or use "
                f"--predictions with samples (<id>_s<k>.npy); for {what}"
            )
        raise SegQCError(f"uncertainty method {name!r} {why}; use one of: {usable}")
    return cls.external_params(models, dict(params or {}))


def external_method(name: str, params: Mapping[str, Any] | None = None, models: int = 1) -> UncertaintyMethod:
    """The uncertainty method ``name`` if it can read out ``models`` external models, else a
    ``SegQCError`` (:func:`external_params`)."""
    return create_method(name, **external_params(name, params, models))


class ExternalSegmenter:
    """f as an external ONNX model, or an ensemble of K >= 2 of them, read out by an uncertainty method
    (``predict`` like ``Segmenter.predict``); already fitted, never trained.

    Args:
        model: the external model, or the ensemble's members (one SPEC for all).
        method: an uncertainty method whose ``external_models`` fits the number of models. Defaults to
            ``"msp"``.
        method_params: its settings (those that follow from the number of models filled in).
        seed: seed of stochastic read-outs. Defaults to 0.
        source: the original file name (a list, one per member), recorded in the bundle.
    """

    external = True

    def __init__(
        self,
        model: ExternalOnnxModel | Sequence[ExternalOnnxModel],
        method: str = "msp",
        *,
        method_params: dict[str, Any] | None = None,
        seed: int = 0,
        source: str | Sequence[str] | None = None,
    ) -> None:
        self.runner = ExternalRunner(model)
        self.models = self.runner.models
        digests = [hashlib.sha256(m.blob).hexdigest() for m in self.models]
        for k, digest in enumerate(digests):
            if digest in digests[:k]:  # a copy adds no member: its disagreement (the map) would be lost
                first = digests.index(digest)
                raise SegQCError(
                    f"{self.models[k].source}: the same model as {self.models[first].source} (members "
                    f"{first} and {k} of the ensemble are identical files); give {len(self.models)} "
                    "different models"
                )
        self.model = self.models[0]  # the SPEC, which all members share
        self.method, self.seed = method, seed
        self.method_params = external_params(method, method_params, len(self.models)) or None
        self.method_ = create_method(method, **(self.method_params or {}))
        sources = [source] if isinstance(source, str) else list(source or [])
        self.sources = sources if len(sources) == len(self.models) else [m.source for m in self.models]
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

    def files(self) -> dict[str, bytes]:
        """The ONNX files of a bundle or an export, by name (:func:`external_files`), in member order."""
        names = external_files(self._external())
        return {name: model.blob for name, model in zip(names, self.models, strict=True)}

    def _external(self) -> dict[str, Any]:
        if len(self.models) == 1:
            return {"file": EXTERNAL_FILE, "source": self.sources[0]}
        members = [{"file": MEMBER_FILE.format(k), "source": s} for k, s in enumerate(self.sources)]
        return {"members": members}

    def config(self) -> dict[str, Any]:
        """The bundle's ``segmenter`` section."""
        return {
            "params": {"method": self.method, "method_params": self.method_params or {}, "seed": self.seed},
            "external": {**self._external(), "spec": self.model.spec.to_dict()},
        }


def load_external_segmenter(
    path: Path, config: dict[str, Any], manifest: Path, *, device: str = "auto", threads: int | None = None
) -> ExternalSegmenter:
    """f of a bundle or an export whose f is external ONNX models: ``segmenter.onnx`` (or the members
    ``segmenter-<k>.onnx``) in ``path``, each checked against ``config["sha256"]``, fed as the SPEC in
    ``config["segmenter"]["external"]`` says.

    Raises:
        BundleError: a file is missing or changed (named), the section is malformed, or a model does
            not fit its SPEC (named after ``manifest``).
    """
    section = config.get("segmenter")
    section = section if isinstance(section, dict) else {}
    external, params = section.get("external"), section.get("params")
    if not isinstance(external, dict) or not isinstance(params, dict):
        raise BundleError(f"{manifest}: 'segmenter.external' and 'segmenter.params' must be JSON objects")
    if not isinstance(config.get("method_params") or {}, dict):
        raise BundleError(f"{manifest}: 'method_params' must be a JSON object")
    try:
        names = external_files(external)
    except SegQCError as err:
        raise BundleError(f"{manifest}: {err}") from None
    blobs = []
    for name in names:
        file = Path(path) / name
        if not file.is_file():
            raise BundleError(f"{file}: external segmentation model not found")
        blobs.append(file.read_bytes())
        if hashlib.sha256(blobs[-1]).hexdigest() != (config.get("sha256") or {}).get(name):
            raise BundleError(
                f"{file}: checksum mismatch (the file differs from the one this model was saved with)"
            )
    seed = params.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise BundleError(f"{manifest}: 'segmenter.params.seed' must be an integer >= 0, got {seed!r}")
    members = external.get("members") or [external]
    try:
        spec = ExternalSpec.from_dict(external.get("spec"), f"{manifest}: segmenter.external.spec")
        models = [
            ExternalOnnxModel(
                blob, spec, int(config["image_size"]), source=str(Path(path) / name), device=device,
                threads=threads,
            )
            for name, blob in zip(names, blobs, strict=True)
        ]  # fmt: skip
        return ExternalSegmenter(
            models, str(config["method"]), method_params=config.get("method_params") or None, seed=seed,
            source=[str(m.get("source") or name) for m, name in zip(members, names, strict=True)],
        )  # fmt: skip
    except BundleError:
        raise
    except SegQCError as err:
        raise BundleError(str(err)) from None
    except TypeError as err:  # method settings that the method does not take
        raise BundleError(f"{manifest}: {err}") from None

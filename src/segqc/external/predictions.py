"""Precomputed outputs of a segmentation model: a folder of foreground-probability maps, one per image id.

Layout of the folder (``segqc predict --predictions DIR``)::

    <id>.png          one map, greyscale 8-bit (0..255 -> 0..1) or 16-bit (0..65535 -> 0..1)
    <id>.npy          one map, a float (H, W) array in [0, 1]
    <id>_s0.npy ...   K samples of a stochastic model, k = 0..K-1 (float (H, W) arrays in [0, 1])

``<id>`` is the image's id (in ``segqc predict``: the id of its row in ``quality.csv``, normally the file
stem). A map has the image's own size ``H x W`` (what a model run on the original image gives); segqc
resizes it (bilinear) to the model's square size for g and the gate, as it does the image. The
uncertainty map comes from the maps, read out by the model's method
(:meth:`~segqc.uncertainty.base.UncertaintyMethod.precomputed_map`): one map by ``msp``,
``1 - max(p, 1 - p)``; K samples by ``mcdropout`` (the entropy of their mean, nats) or ``ensemble``
(its ``map``: that entropy, or the mutual information ``H(mean) - mean_k H(p_k)``). g judges maps of
the kind it was trained on, so one map needs a model whose method reads one map and samples one whose
method reads samples (:func:`map_methods`). NumPy and Pillow only.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from segqc.errors import DataError, SegQCError
from segqc.postprocess import probs_to_mask, upsample_probs
from segqc.types import SegPrediction
from segqc.uncertainty import METHODS, UncertaintyMethod, create_method

#: The method of each kind of precomputed outputs when none is named (``segqc train --predictions``
#: without ``--method``; the method of every bundle trained before the kind allowed a choice).
DEFAULT_METHODS = {"single": "msp", "samples": "mcdropout"}
KIND_NAMES = {"single": "one map per image", "samples": "samples per image"}
#: Slack on values outside [0, 1] (float rounding); they are clipped.
SLACK = 1e-5
MAX_SAMPLES = 1000
_SAMPLE_NAME = re.compile(r"(.*)_s[0-9]+\.npy", re.DOTALL)


def map_methods(kind: str) -> tuple[str, ...]:
    """The methods that read out ``kind`` of precomputed outputs (their ``precomputed``), the default
    first: a method's own hook decides, so a plug-in method that reads samples is listed too."""
    names = [n for n in METHODS.names() if METHODS.get(n).precomputed == kind]
    return tuple(sorted(names, key=lambda n: n != DEFAULT_METHODS.get(kind)))


def precomputed_method(method: str, params: Mapping[str, Any] | None = None) -> UncertaintyMethod:
    """Method ``method`` with ``params``, checked to read out precomputed outputs (its
    ``precomputed_map`` turns them into the map its g was trained on).

    Raises:
        DataError: the method reads no precomputed outputs (its map needs f itself).
    """
    built = create_method(method, **dict(params or {}))
    if built.precomputed is None:
        fits = ", ".join(n for kind in KIND_NAMES for n in map_methods(kind))
        raise DataError(
            f"this model's g was trained on {method!r} maps, which precomputed outputs cannot give "
            f"(they give the maps of {fits})"
        )
    return built


class PredictionFolder:
    """The maps in ``folder``, looked up by image id (see the module docstring)."""

    def __init__(self, folder: str | Path, ids: Iterable[str] | None = None) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise DataError(f"{self.folder}: predictions folder not found")
        self.ids: frozenset[str] = frozenset()
        self._sample_names: dict[str, set[str]] | None = None  # sample-like file names by id, listed once
        if ids is not None:
            self.expect(ids)

    def expect(self, ids: Iterable[str]) -> None:
        """The ids of all the images looked up: ``<id>_s0.npy`` is not read as a sample of ``id`` when
        ``<id>_s0`` is itself one of them (its own map)."""
        self.ids = frozenset(str(i) for i in ids)

    def files(self, id_: str) -> list[Path]:
        """The files of ``id_``: one map, or its samples in order; empty when there are none.

        Raises:
            DataError: ``id_`` is not a plain file name (a path, ``..``), or has several kinds of maps.
        """
        if not id_ or id_ in (".", "..") or any(c in id_ for c in "/\\\0") or Path(id_).is_absolute():
            raise DataError(
                f"id {id_!r} is not a plain file name: its map cannot be looked up in {self.folder}"
            )
        single = [f for f in (self.folder / f"{id_}.npy", self.folder / f"{id_}.png") if f.is_file()]
        samples = []
        own = f"{id_}_s0" in self.ids  # <id>_s0.npy is the map of the image <id>_s0, not a sample of <id>
        while (
            not own and len(samples) < MAX_SAMPLES and (self.folder / f"{id_}_s{len(samples)}.npy").is_file()
        ):
            samples.append(self.folder / f"{id_}_s{len(samples)}.npy")
        # sample-like names not read, other than the own maps of images named like samples (<id>_s1)
        unread = [] if own else self._sample_files(id_) - {f.name for f in samples}
        stray = sorted(name for name in unread if name.removesuffix(".npy") not in self.ids)
        if stray:  # a gap (_s0, _s2) or more than MAX_SAMPLES: never read fewer silently
            raise DataError(
                f"{self.folder}: the samples of {id_!r} must be numbered {id_}_s0.npy to {id_}_s<K-1>.npy "
                f"without gaps (at most {MAX_SAMPLES}); read {len(samples)}, but {stray[0]} is not "
                "among them"
            )
        if len(single) + bool(samples) > 1:
            found = ", ".join(f.name for f in [*single, *samples[:1]])
            raise DataError(f"{self.folder}: several predictions for {id_!r} ({found}); keep one kind")
        return single or samples

    def _sample_files(self, id_: str) -> set[str]:
        """The names ``<id_>_s<digits>.npy`` in the folder (listed once, at the first look-up)."""
        if self._sample_names is None:
            self._sample_names = {}
            try:
                names = [entry.name for entry in os.scandir(self.folder)]
            except OSError as err:
                reason = err.strerror or err
                raise DataError(f"{self.folder}: cannot list the predictions ({reason})") from None
            for name in names:
                match = _SAMPLE_NAME.fullmatch(name)
                if match:
                    self._sample_names.setdefault(match.group(1), set()).add(name)
        return self._sample_names.get(id_, set())

    def kind(self, id_: str) -> str | None:
        """``"single"`` (one map), ``"samples"`` or ``None`` (nothing for ``id_``)."""
        files = self.files(id_)
        if not files:
            return None
        return "single" if files[0].name in (f"{id_}.npy", f"{id_}.png") else "samples"

    def folder_kind(self) -> str:
        """``"samples"`` when the folder holds sample files (``*_s0.npy``), else ``"single"``."""
        own = {f"{i}.npy" for i in self.ids}  # <id>_s0.npy of an image whose id ends in _s0: a single map
        return "samples" if any(f.name not in own for f in self.folder.glob("*_s0.npy")) else "single"

    def load(self, id_: str, shape: tuple[int, int] | None) -> np.ndarray:
        """The maps of ``id_`` as ``(K, H, W)`` float32 in [0, 1]; ``shape`` is the image's own ``(H, W)``
        (``None``: any, the same for every sample).

        Raises:
            DataError: no map for ``id_``, or a file that cannot be read, has another size than the
                image, or values outside [0, 1] (each naming the file).
        """
        files = self.files(id_)
        if not files:
            raise DataError(
                f"no prediction for {id_!r} in {self.folder} ({id_}.png, {id_}.npy or {id_}_s0.npy)"
            )
        maps = [_read(file, None if shape is None else tuple(shape)) for file in files]
        if len({m.shape for m in maps}) > 1:
            raise DataError(f"{files[0]}: the samples of {id_!r} differ in size")
        return np.stack(maps)


def _read(file: Path, shape: tuple[int, ...] | None) -> np.ndarray:
    if file.suffix == ".npy":
        try:  # the header first: its dtype and shape are checked before any data is read
            with open(file, "rb") as fh:
                version = np.lib.format.read_magic(fh)
                read = np.lib.format.read_array_header_1_0
                if version != (1, 0):
                    read = np.lib.format.read_array_header_2_0
                header_shape, _, dtype = read(fh)
        except (OSError, ValueError, SyntaxError, TypeError) as err:
            raise DataError(f"{file}: cannot read the prediction ({err})") from None
        if not np.issubdtype(dtype, np.floating):
            raise DataError(f"{file}: a .npy prediction must hold floats in [0, 1], got {dtype}")
        _check_shape(file, tuple(header_shape), shape)
        try:
            array = np.load(file, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise DataError(f"{file}: cannot read the prediction ({err})") from None
    else:
        try:
            with Image.open(file) as img:
                if img.format != "PNG":
                    raise DataError(f"{file}: not a PNG file (it is {img.format or 'unknown'})")
                _check_shape(file, (img.size[1], img.size[0]), shape)
                img.load()
                mode = img.mode
                if mode in ("L", "1"):
                    array = np.asarray(img.convert("L"), np.float32) / 255.0
                elif mode.startswith("I"):  # 16-bit greyscale
                    array = np.asarray(img, np.float32) / 65535.0
                else:
                    raise DataError(
                        f"{file}: a PNG prediction must be greyscale (8 or 16 bit), got mode {mode}"
                    )
        except DataError:
            raise
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            raise DataError(f"{file}: cannot read the prediction ({err})") from None
    with np.errstate(over="ignore"):
        array = np.asarray(array, np.float32)
    _check_shape(file, array.shape, shape)
    if not np.isfinite(array).all() or array.min() < -SLACK or array.max() > 1 + SLACK:
        raise DataError(
            f"{file}: prediction values must be probabilities in [0, 1], got [{np.nanmin(array):.3g}, "
            f"{np.nanmax(array):.3g}]{' with non-finite values' if not np.isfinite(array).all() else ''}"
        )
    return np.clip(array, 0.0, 1.0)


#: Largest side of a map when its image's size is not known.
MAX_SIDE = 1 << 15


def _check_shape(file: Path, got: tuple[int, ...], shape: tuple[int, ...] | None) -> None:
    if shape is None and (len(got) != 2 or max(got) > MAX_SIDE or min(got) < 1):
        raise DataError(f"{file}: a prediction must be a 2-d (H, W) map, got shape {got}")
    if shape is not None and tuple(got) != tuple(shape):
        raise DataError(
            f"{file}: prediction of shape {tuple(got)}, but its image is {shape[0]}x{shape[1]} (height x "
            "width): a map must have its image's own size"
        )


def check_method(kind: str, method: str) -> None:
    """A ``DataError`` when the model's g was trained on another kind of map than ``kind`` gives."""
    fits = map_methods(kind)
    if method not in fits:
        raise DataError(
            f"predictions with {KIND_NAMES[kind]} are read out by {' or '.join(fits)}, but this model's g "
            f"was trained on {method!r} maps; use a model trained with --method {' or '.join(fits)}"
        )


def image_shape(path: str | Path) -> tuple[int, int]:
    """``(H, W)`` of an image file as segqc reads it (EXIF rotation applied), from its header only."""
    with Image.open(path) as img:
        width, height = img.size
        orientation = img.getexif().get(0x0112, 1)
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)


class PrecomputedSegmenter:
    """f as precomputed outputs (``segqc train --predictions DIR``): at training the maps of the
    training images, looked up by id; in a loaded bundle nothing to run (``predict`` needs the maps,
    ``segqc predict --predictions``).

    Args:
        folder: the maps, or ``None`` in a loaded bundle.
        kind: ``"single"`` (one map per image) or ``"samples"``.
        method: the method that reads the maps out (:func:`map_methods` of ``kind``; its
            ``precomputed_map``). Defaults to the kind's default, ``msp`` or ``mcdropout``
            (:data:`DEFAULT_METHODS`).
        method_params: its settings, recorded in the bundle as given (e.g. ``ensemble``'s ``map``).
        image_size: the model's square size S; maps are turned into a mask and an uncertainty map at
            their own size, then resized to S, as ``segqc predict --predictions`` does.
        shape_of: the original ``(H, W)`` of an image by id, to check each map against; ``None``
            accepts any size.
        seed: recorded in the bundle.
    """

    precomputed = True

    def __init__(
        self,
        folder: PredictionFolder | None,
        kind: str,
        *,
        image_size: int,
        shape_of: Callable[[str], tuple[int, int] | None] | None = None,
        seed: int = 0,
        method: str | None = None,
        method_params: Mapping[str, Any] | None = None,
    ) -> None:
        if kind not in DEFAULT_METHODS:
            raise SegQCError(
                f"kind of precomputed outputs must be one of {', '.join(DEFAULT_METHODS)}, got {kind!r}"
            )
        method = DEFAULT_METHODS[kind] if method is None else method
        if method not in map_methods(kind):
            raise SegQCError(
                f"precomputed outputs with {KIND_NAMES[kind]} are read out by "
                f"{' or '.join(map_methods(kind))}, not {method!r}"
            )
        self.folder, self.kind, self.image_size, self.shape_of, self.seed = (
            folder,
            kind,
            image_size,
            shape_of,
            seed,
        )
        self.method, self.method_params = method, dict(method_params or {})
        self.method_ = precomputed_method(method, self.method_params)
        self.device = "cpu"
        self.rng_ = np.random.default_rng(seed)

    def predict(self, images: np.ndarray, **_: Any) -> SegPrediction:
        raise SegQCError(
            "this model was trained on precomputed outputs of a segmentation model and has no f to run: "
            "give the outputs with --predictions DIR"
        )

    def predict_data(self, data: Any) -> SegPrediction:
        """The maps of ``data.ids`` (a ``SegData``) at ``image_size``: what g sees."""
        if self.folder is None:
            return self.predict(data.images)
        size = self.image_size
        probs, maps = [], []
        for id_ in data.ids:
            kind = self.folder.kind(id_)
            if kind is not None and kind != self.kind:
                raise DataError(
                    f"{self.folder.folder}: {id_!r} has {kind} predictions, the others {self.kind}"
                )
            shape = self.shape_of(id_) if self.shape_of is not None else None
            p, z = self.method_.precomputed_map(self.folder.load(id_, shape))
            probs.append(upsample_probs(p[None], size, size)[0])
            maps.append(upsample_probs(z[None], size, size)[0])
        if not probs:
            empty = np.zeros((0, size, size), np.float32)
            return SegPrediction(empty, empty.astype(np.uint8), empty)
        fg = np.stack(probs).astype(np.float32)
        return SegPrediction(fg, probs_to_mask(fg), np.stack(maps).astype(np.float32))

    def config(self) -> dict[str, Any]:
        """The bundle's ``segmenter`` section."""
        source = None if self.folder is None else self.folder.folder.name
        return {
            "params": {"method": self.method, "method_params": self.method_params, "seed": self.seed},
            "precomputed": {"kind": self.kind, "source": source},
        }

"""An external segmentation model given as an ONNX file: NumPy and onnxruntime only, no torch.

:class:`ExternalOnnxModel` feeds uint8 RGB images ``(N, S, S, 3)`` (``S`` the bundle's image size, g's
size) to the model as its SPEC says (:class:`~segqc.external.spec.ExternalSpec`: size, layout, channel
order, scaling, normalisation) and turns its output into the foreground probability ``(N, S, S)``.
It is checked when loaded: the file must be a model onnxruntime can run, with one image input that fits
the SPEC, and one test image must give a rank-4 output with a usable channel count, finite values and,
for ``output: probabilities``, values in [0, 1]. Each problem is a one-line :class:`SegQCError`.
"""

from __future__ import annotations

import tempfile
from typing import Any

import numpy as np

from segqc.errors import SegQCError
from segqc.external.spec import ExternalSpec
from segqc.postprocess import upsample_probs

ONNX_HINT = "an external ONNX model needs onnxruntime: pip install 'segqc[onnx]'"
#: Slack allowed on ``output: probabilities`` values outside [0, 1] (float rounding); they are clipped.
PROB_SLACK = 1e-4
_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def _external_tensor(blob: bytes) -> str | None:
    """The name of a tensor of the model whose data lies in another file (ONNX "external data"), or
    ``None``. Such data is outside the file's checksum and read from a path the file names, so it is
    refused. Needs the ``onnx`` package; without it (``None``), onnxruntime's own guard remains."""
    try:
        import onnx
    except ImportError:
        return None
    try:
        model = onnx.load_model_from_string(blob)
    except Exception:  # not parseable here: onnxruntime's load gives the error
        return None

    def tensors(graph: Any) -> Any:
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield sparse.values
            yield sparse.indices
        yield from attribute_tensors(graph.node)

    def attribute_tensors(nodes: Any) -> Any:
        for node in nodes:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors
                if attr.HasField("sparse_tensor"):
                    yield attr.sparse_tensor.values
                    yield attr.sparse_tensor.indices
                for sparse in attr.sparse_tensors:
                    yield sparse.values
                    yield sparse.indices
                if attr.HasField("g"):
                    yield from tensors(attr.g)
                for sub in attr.graphs:
                    yield from tensors(sub)

    everything = [tensors(model.graph), *(attribute_tensors(f.node) for f in model.functions)]
    for group in everything:
        for tensor in group:
            if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data):
                return tensor.name or "(unnamed)"
    return None


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise SegQCError(ONNX_HINT) from None
    return onnxruntime


def probe_image(size: int) -> np.ndarray:
    """A fixed ``(1, size, size, 3)`` uint8 test image (a dark disc on a skin-like gradient)."""
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    image = np.stack([180 + 40 * xx, 130 + 30 * yy, 110 + 20 * xx * yy], axis=-1)
    image[(yy - 0.5) ** 2 + (xx - 0.5) ** 2 < 0.08] *= 0.5
    return image.astype(np.uint8)[None]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)


def _softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


class ExternalOnnxModel:
    """A segmentation model from outside segqc, run with onnxruntime.

    Args:
        blob: the ONNX file's bytes.
        spec: how to feed it and read its output.
        image_size: the side ``S`` of the square images segqc hands it (and gets maps back at).
        source: the file's name, for error messages.
        device: ``auto``, ``cpu`` or ``cuda``. Defaults to ``cpu``.
        threads: onnxruntime intra-op threads. Defaults to onnxruntime's choice.

    Raises:
        SegQCError: onnxruntime is missing or cannot load the file, or the model does not fit the SPEC
            (its input, or the output of a test image).
    """

    def __init__(
        self,
        blob: bytes,
        spec: ExternalSpec,
        image_size: int,
        *,
        source: str = "segmenter.onnx",
        device: str = "cpu",
        threads: int | None = None,
    ) -> None:
        self.blob, self.spec, self.image_size, self.source = blob, spec, int(image_size), source
        ort = _onnxruntime()
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        available = ort.get_available_providers()
        if device == "cuda" and "CUDAExecutionProvider" not in available:
            raise SegQCError(
                f"--device cuda was asked for but onnxruntime has no CUDA provider ({available})"
            )
        cuda = device in ("auto", "cuda") and "CUDAExecutionProvider" in available
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
        external = _external_tensor(blob)
        if external is not None:
            raise SegQCError(
                f"{source}: the model keeps tensor {external!r} in a separate file (ONNX external data); "
                "segqc takes one self-contained file: save it with onnx.save(model, path, "
                "save_as_external_data=False)"
            )
        try:
            # External data is refused above; should any be left, it may only be looked up in an
            # empty folder, never next to the working directory.
            with tempfile.TemporaryDirectory() as empty:
                options.add_session_config_entry(
                    "session.model_external_initializers_file_folder_path", empty
                )
                self.session = ort.InferenceSession(blob, options, providers=providers)
        except Exception as err:  # onnxruntime raises its own types for invalid or corrupt files
            first = (str(err).strip().splitlines() or [""])[0]
            raise SegQCError(
                f"{source}: onnxruntime cannot load this model (not a valid ONNX file? {type(err).__name__}: "
                f"{first})"
            ) from None
        self._check_input()
        self.check()

    # -- input ------------------------------------------------------------------------------------
    @property
    def input_hw(self) -> tuple[int, int]:
        """The ``(H, W)`` the model is fed: the SPEC's ``input_size``, else ``(S, S)``."""
        return self.spec.input_size or (self.image_size, self.image_size)

    def _check_input(self) -> None:
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            names = ", ".join(i.name for i in inputs)
            raise SegQCError(
                f"{self.source}: the model takes {len(inputs)} inputs ({names}); segqc feeds one image batch"
            )
        inp = inputs[0]
        self.input_name = inp.name
        outputs = {o.name: str(o.type) for o in self.session.get_outputs()}  # name -> tensor(float), ...
        # the first output unless the SPEC names one
        self.output_name = self.spec.output_name or next(iter(outputs), "")
        if self.output_name not in outputs:
            raise SegQCError(
                f"{self.source}: the SPEC's output_name {self.output_name!r} is not an output of the model; "
                f"its outputs: {', '.join(outputs) or '(none)'}"
            )
        kind = outputs[self.output_name]
        if not kind.startswith("tensor("):  # a sequence or map: no (N, C, H, W) array to read
            raise SegQCError(
                f"{self.source}: the model's output {self.output_name!r} is a {kind}, not a tensor of "
                "logits or probabilities; name a tensor output with the SPEC's output_name"
            )
        if inp.type not in _DTYPES:
            raise SegQCError(f"{self.source}: the model's input is {inp.type}; segqc feeds float images")
        self.input_dtype = _DTYPES[inp.type]
        shape = list(inp.shape or [])
        layout = self.spec.layout
        # A model exported with a fixed batch size (e.g. 1) is fed batches of that size.
        self.batch = shape[0] if shape and isinstance(shape[0], int) and shape[0] > 0 else None
        if len(shape) != 4:
            raise SegQCError(
                f"{self.source}: the model's input has rank {len(shape)} ({shape}); expected 4, "
                f"{'(N, C, H, W)' if layout == 'NCHW' else '(N, H, W, C)'} for layout {layout}"
            )
        c, h, w = (shape[1], shape[2], shape[3]) if layout == "NCHW" else (shape[3], shape[1], shape[2])
        if isinstance(c, int) and c != 3:
            raise SegQCError(
                f"{self.source}: the model's input {shape} has {c} channels where layout {layout} puts them; "
                "expected 3 (RGB or BGR): check the SPEC's layout"
            )
        want = self.input_hw
        if isinstance(h, int) and isinstance(w, int) and (h, w) != want:
            where = "its input_size" if self.spec.input_size else "no input_size, so the bundle's image size"
            raise SegQCError(
                f"{self.source}: the model takes {h}x{w} inputs but the SPEC gives {where} "
                f"{want[0]}x{want[1]}: set input_size to [{h}, {w}]"
            )
        # Pixel values 0 and 255 as the SPEC scales them must stay finite in the model's input type
        # (a scale or std near 0, or beyond float range, would feed it inf or a constant image).
        ends = np.array([0.0, 255.0], np.float64)[:, None] / self.spec.scale
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            fed = (ends - np.array(self.spec.mean)) / np.array(self.spec.std)
            typed = fed.astype(self.input_dtype).astype(np.float64)
            spread = np.abs(typed[1] - typed[0])
        if not (np.isfinite(typed).all() and np.isfinite(spread).all() and spread.min() > 0):
            raise SegQCError(
                f"{self.source}: the SPEC's scale {self.spec.scale:g}, mean {list(self.spec.mean)} and std "
                f"{list(self.spec.std)} map pixel values 0..255 to {fed.min():.3g}..{fed.max():.3g}, not "
                f"distinct finite {np.dtype(self.input_dtype).name} inputs: check scale, mean and std"
            )

    def preprocess(self, images: np.ndarray) -> np.ndarray:
        """uint8 ``(N, S, S, 3)`` RGB -> the model's input (layout, size, channel order, normalisation)."""
        spec = self.spec
        n, s = len(images), images.shape[1]
        x = np.ascontiguousarray(images, dtype=np.float32).transpose(0, 3, 1, 2)  # (N, 3, S, S)
        if spec.channel_order == "BGR":
            x = x[:, ::-1]
        h, w = self.input_hw
        if (h, w) != (s, images.shape[2]):
            x = upsample_probs(x.reshape(n * 3, s, images.shape[2]), h, w).reshape(n, 3, h, w)
        mean = np.asarray(spec.mean, np.float32)[None, :, None, None]
        std = np.asarray(spec.std, np.float32)[None, :, None, None]
        x = (x / np.float32(spec.scale) - mean) / std
        if spec.layout == "NHWC":
            x = x.transpose(0, 2, 3, 1)
        return np.ascontiguousarray(x, dtype=self.input_dtype)

    # -- output -----------------------------------------------------------------------------------
    def raw(self, images: np.ndarray) -> np.ndarray:
        """The model's own output (the SPEC's ``output_name``, else its first) on uint8 ``(N, S, S, 3)``
        images, as it gives it (in batches of the model's fixed batch size, if it has one).

        Raises:
            SegQCError: onnxruntime failed to run the model on these images.
        """
        step = self.batch or max(len(images), 1)
        parts = []
        for start in range(0, len(images), step):
            chunk = images[start : start + step]
            if self.batch and len(chunk) < self.batch:  # the last, short batch: padded, then cut
                pad = np.repeat(chunk[-1:], self.batch - len(chunk), axis=0)
                out = self._run(np.concatenate([chunk, pad]))[: len(chunk)]
            else:
                out = self._run(chunk)
            parts.append(out)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _run(self, images: np.ndarray) -> np.ndarray:
        try:
            out = self.session.run([self.output_name], {self.input_name: self.preprocess(images)})[0]
        except Exception as err:  # onnxruntime's own types: a shape it does not take, a failing node
            first = (str(err).strip().splitlines() or [""])[0]
            raise SegQCError(
                f"{self.source}: the model failed on a batch of {len(images)} images "
                f"({type(err).__name__}: {first})"
            ) from None
        try:
            out = np.asarray(out)
        except ValueError:  # a ragged sequence (refused at load; a guard)
            out = np.asarray(None, object)
        if not np.issubdtype(out.dtype, np.floating):
            raise SegQCError(
                f"{self.source}: the model's output is {out.dtype}, not float logits or probabilities "
                "(a hard mask carries no uncertainty for segqc to read)"
            )
        return out

    def foreground(self, images: np.ndarray) -> np.ndarray:
        """Foreground probability ``(N, S, S)`` float32 of uint8 ``(N, S, S, 3)`` images."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise SegQCError(f"expected (N, S, S, 3) uint8 images, got shape {images.shape}")
        if len(images) == 0:
            return np.zeros((0, *images.shape[1:3]), np.float32)
        out = np.asarray(self.raw(images))
        spec = self.spec
        layout = spec.output_layout or spec.layout
        if out.ndim != 4:
            axes = "(N, C, H, W)" if layout == "NCHW" else "(N, H, W, C)"
            raise SegQCError(
                f"{self.source}: the model's output has rank {out.ndim} (shape {out.shape}); expected 4, "
                f"{axes} for output layout {layout}"
            )
        if layout == "NHWC":
            out = out.transpose(0, 3, 1, 2)
        in_h, in_w = self.input_hw
        # A map of another shape than the input (not just another resolution) is a misread layout.
        if out.shape[2] * in_w != out.shape[3] * in_h:
            raise SegQCError(
                f"{self.source}: the model's output {tuple(out.shape)} read as {layout} has a {out.shape[2]}x"
                f"{out.shape[3]} map for a {in_h}x{in_w} input; check the SPEC's output_layout"
            )
        n, c = out.shape[:2]
        if 0 in out.shape[1:]:
            raise SegQCError(f"{self.source}: the model's output {tuple(out.shape)} is empty")
        if out.shape[2] == out.shape[3] == 1:  # a classifier's scores with kept dims, not a segmentation
            raise SegQCError(
                f"{self.source}: the model's output {tuple(out.shape)} has one value per image and channel, "
                "not a segmentation map"
            )
        if n != len(images):
            raise SegQCError(f"{self.source}: the model gave {n} outputs for {len(images)} images")
        channel = spec.foreground_channel
        if channel is None:
            if c not in (1, 2):
                raise SegQCError(
                    f"{self.source}: the model's output has {c} channels (shape {tuple(out.shape)} as "
                    f"{layout}); segqc reads 1 (foreground) or 2 (background, foreground): set "
                    "foreground_channel in the SPEC, or check its layout"
                )
            channel = c - 1
        elif channel >= c:
            raise SegQCError(
                f"{self.source}: SPEC foreground_channel {channel} but the model's output has {c} channels"
            )
        out = out.astype(np.float32, copy=False)
        if spec.output == "probabilities":
            fg = out[:, channel]
        elif c == 1:
            fg = _sigmoid(out[:, 0])
        else:
            fg = _softmax(out)[:, channel]
        if fg.shape[1:] != images.shape[1:3]:
            fg = upsample_probs(fg, images.shape[1], images.shape[2])
        if spec.output == "probabilities":
            # Values outside [0, 1] are refused at load (check()); at run time rounding is clipped, and
            # an image with values beyond it (not probabilities: logits?) gets a NaN map, which the
            # gate refers as not finite, rather than being clipped into confident probabilities.
            with np.errstate(invalid="ignore"):
                wild = ((fg < -PROB_SLACK) | (fg > 1 + PROB_SLACK)).reshape(len(fg), -1).any(axis=1)
            fg = np.where(np.isfinite(fg), np.clip(fg, 0.0, 1.0), fg)
            fg[wild] = np.nan
        return np.ascontiguousarray(fg, dtype=np.float32)

    def check(self) -> None:
        """Run one test image and check the output: a ``SegQCError`` naming the mismatch."""
        image = probe_image(self.image_size)
        try:
            raw = np.asarray(self.raw(image))
        except SegQCError as err:
            raise SegQCError(
                f"{err} on a {self.input_hw[0]}x{self.input_hw[1]} test image as the SPEC feeds it; check "
                "input_size and layout"
            ) from None
        if not np.isfinite(raw).all():
            raise SegQCError(f"{self.source}: the model's output on a test image is not finite")
        if self.spec.output == "probabilities" and (raw.min() < -PROB_SLACK or raw.max() > 1 + PROB_SLACK):
            raise SegQCError(
                f"{self.source}: SPEC output 'probabilities' but the model gave values in "
                f"[{raw.min():.3g}, {raw.max():.3g}]; use output 'logits' if these are logits"
            )
        self.foreground(image)  # rank, channels

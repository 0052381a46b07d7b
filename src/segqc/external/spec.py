"""How to feed an external segmentation model and read its output: the SPEC (``SPEC.json``).

Every key is optional::

    {
      "input_size": [256, 256],     # [H, W] the model takes; null/absent: a fully convolutional model,
                                    # fed the bundle's square image size S
      "layout": "NCHW",             # NCHW (PyTorch, default) or NHWC (TensorFlow/Keras) of the input
      "output_layout": null,        # NCHW or NHWC of the output; default: the same as layout
      "channel_order": "RGB",       # RGB (default) or BGR (OpenCV-trained models)
      "scale": 255,                 # pixel values (0..255) are divided by it (default 255; 1 keeps 0..255)
      "mean": [0, 0, 0],            # per channel, after scaling, subtracted (default 0; one number for all)
      "std": [1, 1, 1],             # per channel, after scaling, divided by (default 1)
      "output": "logits",           # logits (default) or probabilities
      "foreground_channel": null,   # output channel of the lesion; default 1 with two channels, 0 with one
      "output_name": null           # which output of a model with several (e.g. deep supervision, a
                                    # second head); default: the first
    }

A single output channel is the foreground: its sigmoid (``logits``) or itself (``probabilities``).
Several channels are a softmax over channels (``logits``) or probabilities already; the foreground is
``foreground_channel``. Unknown keys and bad values are a one-line :class:`SegQCError` naming the key.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from segqc.errors import SegQCError

LAYOUTS = ("NCHW", "NHWC")
CHANNEL_ORDERS = ("RGB", "BGR")
OUTPUTS = ("logits", "probabilities")
#: Largest side an external model may ask for.
MAX_INPUT_SIDE = 4096


@dataclass(frozen=True)
class ExternalSpec:
    """The validated SPEC of an external model (see the module docstring for each key)."""

    input_size: tuple[int, int] | None = None
    layout: str = "NCHW"
    output_layout: str | None = None
    channel_order: str = "RGB"
    scale: float = 255.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    output: str = "logits"
    foreground_channel: int | None = None
    output_name: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form; :meth:`from_dict` of it gives the same spec."""
        out = asdict(self)
        out["input_size"] = None if self.input_size is None else list(self.input_size)
        out["mean"], out["std"] = list(self.mean), list(self.std)
        return out

    @classmethod
    def from_dict(cls, data: Any, source: str = "SPEC") -> ExternalSpec:
        """Parse and validate a SPEC object; ``source`` (a file name) starts every error message."""
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise SegQCError(f"{source}: the SPEC must be a JSON object, got {type(data).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise SegQCError(f"{source}: unknown SPEC key {unknown[0]!r}; known: {', '.join(sorted(known))}")

        def bad(key: str, want: str) -> SegQCError:
            return SegQCError(f"{source}: SPEC key {key!r} must be {want}, got {data[key]!r}")

        def choice(key: str, options: tuple[str, ...], default: str) -> str:
            value = data.get(key, default)
            if isinstance(value, str) and value.upper() in options:
                return value.upper()
            if isinstance(value, str) and value.lower() in options:
                return value.lower()
            raise bad(key, " or ".join(options))

        def number(value: Any) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

        def triple(key: str, default: float, positive: bool) -> tuple[float, float, float]:
            value = data.get(key, default)
            values = [value] * 3 if number(value) else value
            if not (isinstance(values, list) and len(values) == 3 and all(number(v) for v in values)) or (
                positive and min(values) <= 0
            ):
                raise bad(key, f"one number or 3 finite numbers{' > 0' if positive else ''} (per channel)")
            return (float(values[0]), float(values[1]), float(values[2]))

        size = data.get("input_size")
        input_size = None
        if size is not None:
            if isinstance(size, int) and not isinstance(size, bool):
                size = [size, size]
            ok = isinstance(size, list) and len(size) == 2
            ok = ok and all(
                isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_INPUT_SIDE for v in size
            )
            if not ok:
                raise bad("input_size", f"[H, W] with integers in [1, {MAX_INPUT_SIDE}], or null")
            input_size = (int(size[0]), int(size[1]))
        scale = data.get("scale", 255.0)
        if not number(scale) or scale <= 0:
            raise bad("scale", "a finite number > 0")
        channel = data.get("foreground_channel")
        if channel is not None and (not isinstance(channel, int) or isinstance(channel, bool) or channel < 0):
            raise bad("foreground_channel", "an integer >= 0, or null")
        output_name = data.get("output_name")
        if output_name is not None and (not isinstance(output_name, str) or not output_name):
            raise bad("output_name", "the name of one of the model's outputs, or null")
        return cls(
            input_size=input_size,
            layout=choice("layout", LAYOUTS, "NCHW"),
            output_layout=choice("output_layout", LAYOUTS, "NCHW") if data.get("output_layout") else None,
            channel_order=choice("channel_order", CHANNEL_ORDERS, "RGB"),
            scale=float(scale),
            mean=triple("mean", 0.0, False),
            std=triple("std", 1.0, True),
            output=choice("output", OUTPUTS, "logits"),
            foreground_channel=channel,
            output_name=output_name,
        )

    @classmethod
    def load(cls, path: str | Path | None) -> ExternalSpec:
        """Read ``SPEC.json``; ``None`` gives the defaults."""
        if path is None:
            return cls()
        file = Path(path)
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except OSError as err:
            raise SegQCError(f"{file}: cannot read the SPEC ({err.strerror or err})") from None
        except (UnicodeDecodeError, ValueError, RecursionError) as err:
            raise SegQCError(f"{file}: the SPEC is not valid JSON ({err})") from None
        return cls.from_dict(data, str(file))

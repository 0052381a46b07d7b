"""Small shared helpers: seeding, atomic writes, run provenance, devices."""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import random
import sys
import tempfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch is imported where used, so the ONNX path (segqc.runtime) runs without it
    import torch


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch generator for data order and augmentation."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[Any]:
    """Write to a temporary file beside ``path`` and rename it into place only on success.

    Yields an open file object (``mode``). A crash mid-write leaves the old file (or none),
    never half a file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def canonical(obj: Any) -> str:
    """One JSON text per value (sorted keys, no spaces, anything else as ``str``): what keys and
    digests hash."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically; NaN and infinities become ``null`` (strict JSON has no NaN)."""
    with atomic_write(path, "w") as fh:
        json.dump(_finite(obj), fh, indent=2, default=_json_default, allow_nan=False)
        fh.write("\n")


def json_ready(obj: Any) -> Any:
    """``obj`` as plain JSON values, exactly as :func:`write_json` writes it (NaN and inf become None)."""
    return json.loads(json.dumps(_finite(obj), default=_json_default, allow_nan=False))


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return _finite(obj.item())
    return obj


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def versions() -> dict[str, str]:
    """Versions of Python, the platform and the packages a run depends on."""
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in ("segqc", "torch", "numpy", "scikit-learn", "scipy", "pillow", "safetensors"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    if "torch" in sys.modules:  # not imported on the torch-free ONNX path
        out["torch_threads"] = str(sys.modules["torch"].get_num_threads())
    return out


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else the CPU."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and "LOCAL_RANK" in os.environ:  # one GPU per torchrun rank
        device = f"cuda:{os.environ['LOCAL_RANK']}"
    if device.startswith("cuda") and not torch.cuda.is_available():
        from segqc.errors import DeviceError

        raise DeviceError("--device cuda was asked for but no CUDA device is available")
    return torch.device(device)

"""Uploaded bytes -> the JSON answer of ``POST /v1/assess``, with any loaded model.

Concurrency: decoding and PNG encoding run in parallel worker threads; the model runs under one lock,
because a model may not be safe to share (e.g. a PyTorch bundle moves its network between devices, and
MC dropout switches layers into training mode during inference), so two requests sharing the model
unguarded could corrupt each other's results.
"""

from __future__ import annotations

import base64
import io
import threading
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from segqc.assess import Assessment, assess_images
from segqc.errors import BundleError, SegQCError
from segqc.service.uploads import DEFAULT_MAX_PIXELS, decode_upload, upload_id
from segqc.visualize import heatmap

if TYPE_CHECKING:
    from segqc.runtime import Model


class Assessor:
    """Uploaded bytes -> assessment: decode and encode in parallel threads, the model one at a time."""

    def __init__(self, model: Model, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.model = model
        self.max_pixels = max_pixels
        self._lock = threading.Lock()

    def assess(self, rgb: np.ndarray, id_: str) -> Assessment:
        """Run the model on one image; serialised, because the model is shared (see the module doc)."""
        with self._lock:
            return assess_images(self.model, [rgb], [id_], batch_size=1)[0]

    def run(
        self,
        data: bytes,
        name: str,
        *,
        include_mask: bool = False,
        include_uncertainty: bool = False,
        uncertainty_format: str = "grey",
    ) -> dict[str, Any]:
        """The JSON body of ``POST /v1/assess`` for one upload (see :class:`AssessResponse`)."""
        rgb = decode_upload(data, name, self.max_pixels)
        result = self.assess(rgb, upload_id(name))
        out: dict[str, Any] = {
            "id": result.id,
            "predicted_jaccard": float(result.predicted_jaccard),
            "decision": result.decision,
            "reason": result.reason,
            "jaccard_lower": None if result.jaccard_lower is None else float(result.jaccard_lower),
            "threshold": float(result.threshold),
            "mean_uncertainty": float(result.mean_uncertainty),
            "method": self.model.method,
            "width": int(rgb.shape[1]),
            "height": int(rgb.shape[0]),
        }
        if include_mask:
            out["mask_png"] = png_base64((np.asarray(result.mask) > 0).astype(np.uint8) * 255)
        if include_uncertainty:
            z = np.asarray(result.uncertainty, dtype=np.float32)
            # One scale for every image (the largest uncertainty f showed in training), so maps compare.
            scale = self.model.uncertainty_vmax or float(z.max(initial=0.0)) or 1.0
            if uncertainty_format == "heatmap":
                out["uncertainty_png"] = png_base64(heatmap(z, vmax=scale))
            else:
                grey = np.clip(np.rint(z / scale * 255), 0, 255).astype(np.uint8)
                out["uncertainty_png"] = png_base64(grey)
            out["uncertainty_scale"] = float(scale)
        return out

    def warmup(self) -> None:
        size = self.model.image_size
        try:
            self.assess(np.zeros((size, size, 3), np.uint8), "warmup")
        except (SegQCError, RuntimeError, ValueError) as err:
            raise BundleError(
                f"{self.model.path}: the model failed a test inference ({type(err).__name__}: {err})"
            ) from None


def png_base64(arr: np.ndarray) -> str:
    """``(H, W)`` or ``(H, W, 3)`` uint8 -> base64 text of a PNG."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")

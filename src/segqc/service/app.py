"""The HTTP service: upload an image, get its predicted segmentation quality and pass/refer decision.

``create_app`` loads a model once (a PyTorch bundle or an ONNX export, see :func:`segqc.runtime.load_model`)
and returns a FastAPI app with three routes: ``POST /v1/assess`` (multipart field ``file``),
``GET /v1/model`` and ``GET /healthz``.

Bad input is always a 4xx JSON answer ``{"detail": "..."}``, never a 500: 413 (too large), 415 (not an
accepted image) and 422 (corrupt image, see :mod:`segqc.service.uploads`; or a malformed request, e.g. no
``file`` field). The model runs one request at a time (see :mod:`segqc.service.assessor`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI, File, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from segqc import __version__
from segqc.errors import BundleError, SegQCError
from segqc.runtime import Model, load_model
from segqc.service.assessor import Assessor
from segqc.service.schemas import AssessResponse, ErrorResponse, Health, ModelInfo
from segqc.service.uploads import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_UPLOAD_BYTES,
    FORMATS,
    MULTIPART_OVERHEAD,
    BodyLimitMiddleware,
    read_limited,
    upload_name,
)

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in (
        (413, "Upload over the size limit, or image over the pixel limit."),
        (415, "Not an image, or an image format that is not accepted."),
        (422, "Corrupt or truncated image, or a malformed request (e.g. no 'file' field)."),
    )
}


def create_app(
    model: str | Path | Model,
    *,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    warmup: bool = True,
) -> FastAPI:
    """Build the service around a model, loaded once here.

    Args:
        model: a model folder that :func:`segqc.runtime.load_model` opens (a PyTorch bundle from
            ``segqc train`` or an ONNX export from ``segqc export``), or a loaded
            :class:`~segqc.runtime.Model`.
        max_upload_bytes: largest accepted file; larger uploads get 413 without being read whole.
            Defaults to 20 MiB.
        max_pixels: largest accepted ``width * height``, checked on the image header before decoding
            (413). Pillow's own decompression-bomb limit (about 89 M pixels) applies on top.
            Defaults to 40 M.
        warmup: run one inference on a blank image now, so a broken model fails here and the first
            request is not slow. Defaults to True.

    Raises:
        BundleError: the model is missing, tampered with, inconsistent, or fails the warm-up.
        SegQCError: a limit is not positive.
    """
    if max_upload_bytes < 1 or max_pixels < 1:
        raise SegQCError(
            f"limits must be positive, got max_upload_bytes={max_upload_bytes}, max_pixels={max_pixels}"
        )
    loaded = load_model(model) if isinstance(model, (str, os.PathLike)) else model
    assessor = Assessor(loaded, max_pixels=max_pixels)
    if warmup:
        assessor.warmup()

    app = FastAPI(
        title="segqc",
        version=__version__,
        description="Predicts the quality (Jaccard index) of a lesion segmentation from the segmentation "
        "network's own uncertainty, and refers likely failures to a human.",
    )
    app.state.model = loaded
    app.state.assessor = assessor
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=max_upload_bytes + MULTIPART_OVERHEAD)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(SegQCError, _segqc_error)
    service_info = {
        "max_upload_bytes": max_upload_bytes,
        "max_pixels": max_pixels,
        "formats": list(FORMATS),
        "segqc_version": __version__,
    }

    @app.get("/healthz", response_model=Health, tags=["service"])
    def healthz() -> dict[str, str]:
        """Liveness: the model is loaded and the service answers."""
        return {"status": "ok"}

    @app.get("/v1/model", response_model=ModelInfo, tags=["service"])
    def model_info() -> dict[str, Any]:
        """The served model's metadata (method, threshold, image size, training summary) and limits."""
        base = {"method": loaded.method, "threshold": loaded.threshold, "image_size": loaded.image_size}
        return {**base, "backend": loaded.backend, **loaded.metadata(), "service": service_info}

    @app.post(
        "/v1/assess",
        response_model=AssessResponse,
        response_model_exclude_none=True,
        responses=_ERRORS,
        tags=["assess"],
    )
    async def assess(
        file: Annotated[UploadFile, File(description="The image: PNG, JPEG, BMP, TIFF, GIF, WebP or PPM.")],
        include_mask: Annotated[bool, Query(description="Add the predicted mask as a base64 PNG.")] = False,
        include_uncertainty: Annotated[
            bool, Query(description="Add the uncertainty map as a base64 PNG.")
        ] = False,
        uncertainty_format: Annotated[
            Literal["grey", "heatmap"],
            Query(description="grey: 8-bit, z = value / 255 * uncertainty_scale; heatmap: RGB, for display."),
        ] = "grey",
    ) -> dict[str, Any]:
        """Segment one image, predict the Jaccard index of the segmentation, and decide pass or refer."""
        name = upload_name(file.filename)
        data = await read_limited(file, max_upload_bytes, name)
        # Decoding and inference are CPU-bound: run them off the event loop.
        return await run_in_threadpool(
            assessor.run,
            data,
            name,
            include_mask=include_mask,
            include_uncertainty=include_uncertainty,
            uncertainty_format=uncertainty_format,
        )

    return app


def create_app_from_env() -> FastAPI:
    """App factory for ``uvicorn --factory`` (used by ``segqc serve --workers N``): settings come from
    ``SEGQC_SERVE_MODEL``, ``SEGQC_SERVE_MAX_UPLOAD_BYTES`` and ``SEGQC_SERVE_MAX_PIXELS``."""
    try:
        model = os.environ["SEGQC_SERVE_MODEL"]
    except KeyError:
        raise BundleError("SEGQC_SERVE_MODEL is not set: the model folder to serve") from None
    return create_app(
        model,
        max_upload_bytes=int(os.environ.get("SEGQC_SERVE_MAX_UPLOAD_BYTES", DEFAULT_MAX_UPLOAD_BYTES)),
        max_pixels=int(os.environ.get("SEGQC_SERVE_MAX_PIXELS", DEFAULT_MAX_PIXELS)),
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 lists error objects; answer one readable sentence, like every other error."""
    parts = []
    for error in exc.errors() if isinstance(exc, RequestValidationError) else []:
        where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("body", "query"))
        if where == "file" and error.get("type") == "missing":
            parts.append(
                "missing the form field 'file': send the image as multipart/form-data "
                "(e.g. curl -F file=@image.png)"
            )
        elif where == "file":  # a text field, or a file part without a file name
            parts.append(
                "the form field 'file' must be a file upload with a file name, not a text value "
                "(e.g. curl -F file=@image.png)"
            )
        else:
            parts.append(f"{where}: {error.get('msg')}" if where else str(error.get("msg")))
    return JSONResponse({"detail": "; ".join(parts) or "invalid request"}, status_code=422)


async def _segqc_error(request: Request, exc: Exception) -> JSONResponse:
    # A library error on a decoded upload is about that input (e.g. an image the model cannot take).
    return JSONResponse({"detail": str(exc)}, status_code=422)

"""The HTTP service: upload an image, get its predicted segmentation quality and pass/refer decision.

``create_app`` loads a model once (a PyTorch bundle or an ONNX export, see :func:`segqc.runtime.load_model`)
and returns a FastAPI app with three routes: ``POST /v1/assess`` (multipart field ``file``),
``GET /v1/model`` and ``GET``/``HEAD /healthz``, and the API docs at ``/docs`` (served locally).

Bad input is always a 4xx JSON answer ``{"detail": "..."}``, never a 500: 401 (API key), 408 (body too
slow), 413 (too large), 415 (not an accepted image) and 422 (corrupt image, see
:mod:`segqc.service.uploads`; or a malformed request, e.g. no or two ``file`` fields); 503 when the
decoding budget stays full (:mod:`segqc.service.budget`). The model runs one request at a time (see
:mod:`segqc.service.assessor`). Every request gets an id (``X-Request-ID``); with an audit log, every
assessment and every refused upload is one JSON line (:mod:`segqc.audit`).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from segqc import __version__
from segqc.audit import AuditLog, sha256_hex
from segqc.errors import BundleError, SegQCError
from segqc.gate import unfit_warning
from segqc.runtime import Model, load_model
from segqc.service.assessor import Assessor
from segqc.service.budget import (
    DEFAULT_PIXEL_BUDGET,
    DEFAULT_QUEUE_TIMEOUT_S,
    PixelBudget,
    return_freed_memory,
)
from segqc.service.docs import add_local_docs
from segqc.service.middleware import (
    DEFAULT_READ_TIMEOUT_S,
    DEFAULT_UPLOAD_TIMEOUT_S,
    ApiKeyMiddleware,
    BodyTimeoutMiddleware,
    RequestContextMiddleware,
    read_api_key,
)
from segqc.service.schemas import AssessResponse, ErrorResponse, Health, ModelInfo
from segqc.service.uploads import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_UPLOAD_BYTES,
    FORMATS,
    MULTIPART_OVERHEAD,
    BodyLimitMiddleware,
    probe_upload,
    read_limited,
    upload_name,
)

logger = logging.getLogger(__name__)

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in (
        (401, "API key missing or wrong (only when the server has one)."),
        (408, "The request body stalled or took too long to arrive."),
        (413, "Upload over the size limit, or image over the pixel limit or the decoding budget."),
        (415, "Not an image, or an image format that is not accepted."),
        (422, "Corrupt or truncated image, or a malformed request (e.g. no or two 'file' fields)."),
        (503, "The decoding budget stayed full for the queue timeout (see Retry-After), or the audit log "
         "cannot be written."),
    )
}  # fmt: skip


def create_app(
    model: str | Path | Model,
    *,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    pixel_budget: int = DEFAULT_PIXEL_BUDGET,
    queue_timeout: float = DEFAULT_QUEUE_TIMEOUT_S,
    read_timeout: float = DEFAULT_READ_TIMEOUT_S,
    upload_timeout: float = DEFAULT_UPLOAD_TIMEOUT_S,
    api_key: str | None = None,
    audit_log: str | Path | AuditLog | None = None,
    trusted_key: str | Path | None = None,
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
        pixel_budget: most decoded pixels in flight across concurrent requests (this process); an
            image that does not fit waits up to ``queue_timeout`` seconds, then gets 503. Defaults to
            80 M (see :mod:`segqc.service.budget`).
        queue_timeout: longest wait for the pixel budget, seconds. Defaults to 15.
        read_timeout: longest pause in a request body, seconds (408). Defaults to 15.
        upload_timeout: longest time to receive a whole request body, seconds (408). Defaults to 120.
        api_key: when given, every route but ``/healthz`` needs it (401 otherwise).
        audit_log: a JSON-lines file (or an :class:`~segqc.audit.AuditLog`) that gets one line per
            assessment and per refused upload.
        trusted_key: an Ed25519 public key (PEM); a model folder not signed by it is refused
            (:func:`segqc.runtime.load_model`). Only for a folder, not a loaded model.
        warmup: run one inference on a blank image now, so a broken model fails here and the first
            request is not slow. Defaults to True.

    Raises:
        BundleError: the model is missing, tampered with, inconsistent, or fails the warm-up.
        SegQCError: a limit is not positive, the API key is empty, or the audit log cannot be opened.
    """
    limits = {"max_upload_bytes": max_upload_bytes, "max_pixels": max_pixels, "pixel_budget": pixel_budget}
    timeouts = {"queue_timeout": queue_timeout, "read_timeout": read_timeout}
    timeouts["upload_timeout"] = upload_timeout
    if min(limits.values()) < 1 or not all(t > 0 for t in timeouts.values()):
        shown = ", ".join(f"{k}={v}" for k, v in {**limits, **timeouts}.items())
        raise SegQCError(f"limits must be positive, got {shown}")
    if api_key is not None and not api_key.strip():
        raise SegQCError("the API key is empty")
    log = audit_log if isinstance(audit_log, AuditLog) or audit_log is None else _open_audit_log(audit_log)
    if isinstance(model, (str, os.PathLike)):
        loaded = load_model(model, trusted_key=trusted_key)
    elif trusted_key is not None:
        raise SegQCError("trusted_key needs a model folder (the signature is of the folder's files)")
    else:
        loaded = model
    warning = unfit_warning(loaded)
    if warning:
        logger.warning("segqc serve: %s", warning)
    assessor = Assessor(loaded, max_pixels=max_pixels)
    if warmup:
        assessor.warmup()
    budget = PixelBudget(pixel_budget, queue_timeout)
    model_sha256 = getattr(loaded, "manifest_sha256", None)

    app = FastAPI(
        title="segqc",
        version=__version__,
        description="Predicts the quality (Jaccard index) of a lesion segmentation from the segmentation "
        "network's own uncertainty, and refers likely failures to a human.",
        docs_url=None,  # served from local files below: the default page loads its code from a CDN
        redoc_url=None,
    )
    app.state.model = loaded
    app.state.assessor = assessor
    app.state.budget = budget
    app.state.audit_log = log
    # Outermost last: request id, API key (before any body is read), body timeouts, body size.
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=max_upload_bytes + MULTIPART_OVERHEAD)
    app.add_middleware(BodyTimeoutMiddleware, read_timeout=read_timeout, upload_timeout=upload_timeout)
    if api_key is not None:
        app.add_middleware(ApiKeyMiddleware, api_key=api_key.strip())
    app.add_middleware(RequestContextMiddleware)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(SegQCError, _segqc_error)
    app.state.docs = add_local_docs(app)  # False without fastapi-offline: no /docs rather than a CDN
    service_info = {
        **limits,
        **timeouts,
        "api_key_required": api_key is not None,
        "audit_log": log is not None,
        "formats": list(FORMATS),
        "segqc_version": __version__,
    }

    @app.get("/healthz", response_model=Health, tags=["service"])
    @app.head("/healthz", include_in_schema=False)  # probes that ask for the status line only
    def healthz() -> dict[str, str]:
        """Liveness: the model is loaded and the service answers (open without the API key)."""
        return {"status": "ok"}

    @app.get("/v1/model", response_model=ModelInfo, tags=["service"])
    def model_info() -> dict[str, Any]:
        """The served model's metadata (method, threshold, image size, training summary) and limits."""
        base = {"method": loaded.method, "threshold": loaded.threshold, "image_size": loaded.image_size}
        load = {"pixels_in_flight": budget.in_use, "pixels_in_flight_peak": budget.peak}
        return {**base, "backend": loaded.backend, **loaded.metadata(), "service": {**service_info, **load}}

    def audit(request: Request, **fields: Any) -> None:
        if log is None:
            return
        started = getattr(request.state, "started", time.perf_counter())
        latency_ms = round((time.perf_counter() - started) * 1000, 1)
        try:
            log.record(request_id=request.state.request_id, source="serve", model_sha256=model_sha256,
                       **fields, latency_ms=latency_ms)  # fmt: skip
        except OSError as err:  # fail closed: no decision leaves without its log line
            detail = f"the audit log cannot be written ({type(err).__name__}: {err})"
            raise HTTPException(503, detail) from None

    @app.post(
        "/v1/assess",
        response_model=AssessResponse,
        response_model_exclude_unset=True,
        responses=_ERRORS,
        tags=["assess"],
    )
    async def assess(
        request: Request,
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
        parts = (await request.form()).getlist("file")  # the form FastAPI already parsed (cached)
        if len(parts) > 1:
            detail = f"got {len(parts)} form fields 'file': send exactly one image per request"
            raise HTTPException(422, detail)
        name = upload_name(file.filename)
        data = await read_limited(file, max_upload_bytes, name)
        digest, size = sha256_hex(data), None
        try:
            _, width, height = await run_in_threadpool(probe_upload, data, name, max_pixels)
            size = [height, width]
            async with budget.hold(width * height, name):
                # Decoding and inference are CPU-bound: run them off the event loop.
                out = await run_in_threadpool(
                    assessor.run,
                    data,
                    name,
                    include_mask=include_mask,
                    include_uncertainty=include_uncertainty,
                    uncertainty_format=uncertainty_format,
                )
        except (HTTPException, SegQCError) as err:
            status = err.status_code if isinstance(err, HTTPException) else 422
            detail = err.detail if isinstance(err, HTTPException) else str(err)
            fields = {
                "input_sha256": digest,
                "image_size": size,
                "predicted_jaccard": None,
                "jaccard_lower": None,
            }
            await run_in_threadpool(audit, request, **fields, decision="error", reason=detail, status=status)
            raise
        fields = {"input_sha256": digest, "image_size": [out["height"], out["width"]], "status": 200}
        fields.update({k: out[k] for k in ("predicted_jaccard", "jaccard_lower", "decision", "reason")})
        await run_in_threadpool(audit, request, **fields)
        return {"request_id": request.state.request_id, **out}

    return app


def _open_audit_log(path: str | Path) -> AuditLog:
    blocker = next((p for p in Path(path).parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:  # mkdir would say only "File exists"
        raise SegQCError(f"{path}: cannot create the audit log: {blocker} is a file, not a folder")
    try:
        return AuditLog(path)
    except OSError as err:
        detail = f"{path}: cannot open the audit log for appending ({err.strerror or err})"
        raise SegQCError(detail) from None


def create_app_from_env() -> FastAPI:
    """App factory for ``uvicorn --factory`` (used by ``segqc serve --workers N``): settings come from
    the environment (see :data:`ENV_SETTINGS`; the model from ``SEGQC_SERVE_MODEL``, the API key from
    ``SEGQC_API_KEY_FILE`` or ``SEGQC_API_KEY``)."""
    return_freed_memory()  # a server worker process: its peak RSS should follow the pixel budget
    try:
        model = os.environ["SEGQC_SERVE_MODEL"]
    except KeyError:
        raise BundleError("SEGQC_SERVE_MODEL is not set: the model folder to serve") from None
    settings: dict[str, Any] = {}
    for key, (var, kind) in ENV_SETTINGS.items():
        value = os.environ.get(var)
        if value is None or value == "":
            continue
        try:
            settings[key] = kind(value)
        except ValueError:
            raise SegQCError(f"{var}={value!r} is not a valid {kind.__name__}") from None
    return create_app(model, api_key=read_api_key(os.environ.get("SEGQC_API_KEY_FILE") or None), **settings)


#: ``create_app`` keyword -> (environment variable, type), read by :func:`create_app_from_env`.
ENV_SETTINGS: dict[str, tuple[str, type]] = {
    "max_upload_bytes": ("SEGQC_SERVE_MAX_UPLOAD_BYTES", int),
    "max_pixels": ("SEGQC_SERVE_MAX_PIXELS", int),
    "pixel_budget": ("SEGQC_SERVE_PIXEL_BUDGET", int),
    "queue_timeout": ("SEGQC_SERVE_QUEUE_TIMEOUT", float),
    "read_timeout": ("SEGQC_SERVE_READ_TIMEOUT", float),
    "upload_timeout": ("SEGQC_SERVE_UPLOAD_TIMEOUT", float),
    "audit_log": ("SEGQC_SERVE_AUDIT_LOG", str),
    "trusted_key": ("SEGQC_SERVE_TRUSTED_KEY", str),
}


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

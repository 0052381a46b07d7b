"""The HTTP service: upload an image, get its predicted segmentation quality and pass/refer decision.

``create_app`` loads a bundle once and returns a FastAPI app with three routes:
``POST /v1/assess`` (multipart field ``file``), ``GET /v1/model`` and ``GET /healthz``.

Bad input is always a 4xx JSON answer ``{"detail": "..."}``, never a 500:

* 413: the upload (or the request body) is over ``max_upload_bytes``, or the image declares more
  than ``max_pixels`` pixels (checked on the header, before decoding);
* 415: not an image (empty, text, unknown format) or a format the service does not accept;
* 422: an accepted image format that cannot be decoded (truncated, corrupt), or a malformed request
  (e.g. no ``file`` field).

Concurrency: decoding and PNG encoding run in parallel worker threads; the model runs under one
lock, because ``Segmenter.predict`` moves the network between devices and some uncertainty methods
(MC dropout) switch layers into training mode during inference, so two requests sharing the model
unguarded could corrupt each other's results.
"""

from __future__ import annotations

import base64
import io
import os
import threading
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from PIL import Image, UnidentifiedImageError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from segqc import __version__
from segqc.assess.folder import Assessment, assess_images
from segqc.bundle import Bundle, load_bundle
from segqc.data.readers import ImageTooLargeError, open_image, to_rgb
from segqc.errors import BundleError, DataError, SegQCError
from segqc.service.schemas import AssessResponse, ErrorResponse, Health, ModelInfo
from segqc.visualize import heatmap

MiB = 1024 * 1024
DEFAULT_MAX_UPLOAD_BYTES = 20 * MiB
DEFAULT_MAX_PIXELS = 40_000_000
#: Image formats the service decodes (Pillow names). Others (EPS, PSD, ...) are refused with 415
#: before decoding: fewer decoders exposed to untrusted bytes.
#: (Pillow's JPEG plugin also opens the MPO variant that cameras write.)
Image.init()  # register every plugin now, so the ``formats=`` restriction below finds them
FORMATS = tuple(f for f in ("PNG", "JPEG", "BMP", "TIFF", "GIF", "WEBP", "PPM") if f in Image.OPEN)
#: Room for the multipart boundaries and part headers on top of the file itself.
MULTIPART_OVERHEAD = 64 * 1024
#: Signatures of accepted formats: a file that starts like one but that Pillow cannot identify is a
#: corrupt image (422), not a non-image (415).
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)
_CHUNK = MiB
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in (
        (413, "Upload over the size limit, or image over the pixel limit."),
        (415, "Not an image, or an image format that is not accepted."),
        (422, "Corrupt or truncated image, or a malformed request (e.g. no 'file' field)."),
    )
}


def create_app(
    model: str | Path | Bundle,
    *,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    warmup: bool = True,
) -> FastAPI:
    """Build the service around a bundle, loaded once here.

    Args:
        model: a bundle folder (see :func:`segqc.bundle.load_bundle`) or a loaded :class:`Bundle`.
        max_upload_bytes: largest accepted file; larger uploads get 413 without being read whole.
            Defaults to 20 MiB.
        max_pixels: largest accepted ``width * height``, checked on the image header before decoding
            (413). Pillow's own decompression-bomb limit (about 89 M pixels) applies on top.
            Defaults to 40 M.
        warmup: run one inference on a blank image now, so a broken bundle fails here and the first
            request is not slow. Defaults to True.

    Raises:
        BundleError: the bundle is missing, tampered with, inconsistent, or fails the warm-up.
        SegQCError: a limit is not positive.
    """
    if max_upload_bytes < 1 or max_pixels < 1:
        raise SegQCError(
            f"limits must be positive, got max_upload_bytes={max_upload_bytes}, max_pixels={max_pixels}"
        )
    bundle = model if isinstance(model, Bundle) else load_bundle(model)
    assessor = Assessor(bundle, max_pixels=max_pixels)
    if warmup:
        assessor.warmup()

    app = FastAPI(
        title="segqc",
        version=__version__,
        description="Predicts the quality (Jaccard index) of a lesion segmentation from the segmentation "
        "network's own uncertainty, and refers likely failures to a human.",
    )
    app.state.bundle = bundle
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
        base = {"method": bundle.method, "threshold": bundle.threshold, "image_size": bundle.image_size}
        return {**base, **bundle.metadata(), "service": service_info}

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


class Assessor:
    """Uploaded bytes -> assessment: decode and encode in parallel threads, the model one at a time."""

    def __init__(self, bundle: Bundle, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.bundle = bundle
        self.max_pixels = max_pixels
        self._lock = threading.Lock()

    def decode(self, data: bytes, name: str) -> np.ndarray:
        """Upload bytes -> ``(H, W, 3)`` uint8 RGB (EXIF-rotated), or an HTTPException (413/415/422)."""
        if not data:
            raise HTTPException(415, f"{name}: the file is empty (0 bytes); send an image")
        fmt = sniff_format(data, name, self.max_pixels)
        try:
            img = open_image(io.BytesIO(data), name, max_pixels=self.max_pixels)
        except ImageTooLargeError as err:
            raise HTTPException(413, str(err)) from None
        except DataError as err:
            raise HTTPException(422, f"{err} (a corrupt or truncated {fmt} file?)") from None
        try:
            rgb = to_rgb(img)
        except (OSError, ValueError, SyntaxError, TypeError, KeyError) as err:
            detail = f"{name}: cannot convert the {fmt} image to RGB ({type(err).__name__}: {err})"
            raise HTTPException(422, detail) from None
        if rgb.shape[0] < 1 or rgb.shape[1] < 1:
            raise HTTPException(422, f"{name}: the image has no pixels")
        return rgb

    def assess(self, rgb: np.ndarray, id_: str) -> Assessment:
        """Run the model on one image; serialised, because the model is shared (see the module doc)."""
        with self._lock:
            return assess_images(self.bundle, [rgb], [id_], batch_size=1)[0]

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
        rgb = self.decode(data, name)
        result = self.assess(rgb, upload_id(name))
        out: dict[str, Any] = {
            "id": result.id,
            "predicted_jaccard": float(result.predicted_jaccard),
            "decision": result.decision,
            "threshold": float(result.threshold),
            "mean_uncertainty": float(result.mean_uncertainty),
            "method": self.bundle.method,
            "width": int(rgb.shape[1]),
            "height": int(rgb.shape[0]),
        }
        if include_mask:
            out["mask_png"] = png_base64((np.asarray(result.mask) > 0).astype(np.uint8) * 255)
        if include_uncertainty:
            z = np.asarray(result.uncertainty, dtype=np.float32)
            # One scale for every image (the largest uncertainty f showed in training), so maps compare.
            scale = self.bundle.uncertainty_vmax or float(z.max(initial=0.0)) or 1.0
            if uncertainty_format == "heatmap":
                out["uncertainty_png"] = png_base64(heatmap(z, vmax=scale))
            else:
                grey = np.clip(np.rint(z / scale * 255), 0, 255).astype(np.uint8)
                out["uncertainty_png"] = png_base64(grey)
            out["uncertainty_scale"] = float(scale)
        return out

    def warmup(self) -> None:
        size = self.bundle.image_size
        try:
            self.assess(np.zeros((size, size, 3), np.uint8), "warmup")
        except (SegQCError, RuntimeError, ValueError) as err:
            raise BundleError(
                f"{self.bundle.path}: the model failed a test inference ({type(err).__name__}: {err})"
            ) from None


def sniff_format(data: bytes, name: str, max_pixels: int) -> str:
    """The Pillow format of ``data`` if it is an accepted one of at most ``max_pixels`` pixels; else 413
    (too many pixels), 415 (not an image, or a format not accepted) or 422 (it starts like an accepted
    format but its header is corrupt). Reads headers only."""
    # No warnings.catch_warnings() here: it changes process-wide state, unsafe across request threads.
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as probe:
            fmt, width, height = str(probe.format), probe.width, probe.height
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        detail = f"{name}: image is too large to decode safely ({err}); the limit here is {max_pixels} pixels"
        raise HTTPException(413, detail) from None
    except UnidentifiedImageError:
        pass
    except (OSError, ValueError, SyntaxError, TypeError) as err:
        detail = f"{name}: cannot read the image header ({type(err).__name__}: {err})"
        raise HTTPException(422, detail) from None
    else:
        # Checked here, on the header, as well as in open_image: never decode an oversized image.
        if width * height > max_pixels:
            raise HTTPException(
                413, f"{name}: image declares {width}x{height} pixels, more than the limit of {max_pixels}"
            )
        return fmt
    other = _identify_any(data)
    if other is not None:
        raise HTTPException(415, f"{name}: {other} images are not accepted; send one of {', '.join(FORMATS)}")
    for magic, fmt in _MAGIC:
        if data.startswith(magic):
            raise HTTPException(422, f"{name}: starts like a {fmt} file but its header is corrupt")
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        raise HTTPException(422, f"{name}: starts like a WEBP file but its header is corrupt")
    raise HTTPException(
        415, f"{name}: not an image (its content is no known image format); send one of {', '.join(FORMATS)}"
    )


def _identify_any(data: bytes) -> str | None:
    """Name a format Pillow knows but the service refuses (header only, nothing decoded)."""
    try:
        with Image.open(io.BytesIO(data)) as probe:
            return str(probe.format)
    except Exception:  # noqa: BLE001 - any failure just means "not identified"
        return None


async def read_limited(file: UploadFile, limit: int, name: str) -> bytes:
    """Read an upload in chunks, stopping with 413 as soon as it passes ``limit`` bytes."""
    buf = bytearray()
    while chunk := await file.read(_CHUNK):
        buf += chunk
        if len(buf) > limit:
            raise HTTPException(413, f"{name}: upload is larger than the limit of {_size(limit)}")
    return bytes(buf)


def upload_name(filename: str | None) -> str:
    """The upload's file name without any client folder (``C:\\x\\a.png`` or ``../a.png`` -> ``a.png``)."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
    return name[:255] or "upload"


def upload_id(name: str) -> str:
    """Result id: the file name without its extension."""
    stem = name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name
    return stem or "upload"


def png_base64(arr: np.ndarray) -> str:
    """``(H, W)`` or ``(H, W, 3)`` uint8 -> base64 text of a PNG."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _size(n: int) -> str:
    return f"{n / MiB:.1f} MiB ({n} bytes)" if n >= MiB else f"{n} bytes"


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_body_bytes`` with 413: at once when ``Content-Length`` says so,
    otherwise (chunked uploads) as soon as the bytes received pass the limit, so an oversized upload is
    never read whole."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            await _too_large(declared, self.max_body_bytes)(scope, receive, send)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise _BodyTooLarge(received, self.max_body_bytes)
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracked_send)
        except _BodyTooLarge:
            if started:
                raise
            await _too_large(received, self.max_body_bytes)(scope, receive, send)


class _BodyTooLarge(HTTPException):
    # An HTTPException, so that FastAPI's body parsing passes it on (it turns other errors into 400).
    def __init__(self, received: int, limit: int) -> None:
        super().__init__(413, _too_large_text(received, limit, at_least=True))


def _too_large(received: int, limit: int, *, at_least: bool = False) -> JSONResponse:
    return JSONResponse({"detail": _too_large_text(received, limit, at_least=at_least)}, status_code=413)


def _too_large_text(received: int, limit: int, *, at_least: bool = False) -> str:
    size = f"at least {received}" if at_least else str(received)
    upload = _size(limit - MULTIPART_OVERHEAD)
    return f"request body of {size} bytes is larger than the upload limit of {upload} (plus form encoding)"


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", ()):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


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

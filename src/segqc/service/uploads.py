"""Upload handling of the HTTP service: size limits, format sniffing and decoding of untrusted bytes.

Bad input is always an :class:`~fastapi.HTTPException` with a 4xx status, never a 500:

* 413: the upload (or the request body) is over the size limit, or the image declares more pixels than
  allowed (checked on the header, before decoding);
* 415: not an image (empty, text, unknown format) or a format the service does not accept;
* 422: an accepted image format that cannot be decoded (truncated, corrupt), or an image of several
  frames (an animation or a multi-page TIFF: as ``segqc predict``, never only the first frame).
"""

from __future__ import annotations

import io

import numpy as np
from fastapi import HTTPException, UploadFile
from fastapi.responses import JSONResponse
from PIL import Image, UnidentifiedImageError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from segqc.assess.ids import safe_id
from segqc.data.readers import (
    INPUT_FORMATS,
    ImageTooLargeError,
    identify_format,
    open_image,
    single_frame,
    starts_like_accepted,
    to_rgb,
)
from segqc.errors import DataError
from segqc.service.middleware import run_or_answer

MiB = 1024 * 1024
DEFAULT_MAX_UPLOAD_BYTES = 20 * MiB
DEFAULT_MAX_PIXELS = 40_000_000
#: Image formats the service decodes (Pillow names), the same as ``segqc predict``. Others (EPS, PSD,
#: ...) are refused with 415 before decoding: fewer decoders exposed to untrusted bytes.
FORMATS = INPUT_FORMATS
#: Room for the multipart boundaries and part headers on top of the file itself.
MULTIPART_OVERHEAD = 64 * 1024
_CHUNK = MiB


def decode_upload(data: bytes, name: str, max_pixels: int) -> np.ndarray:
    """Upload bytes -> ``(H, W, 3)`` uint8 RGB (EXIF-rotated), or an HTTPException (413/415/422)."""
    if not data:
        raise HTTPException(415, f"{name}: the file is empty (0 bytes); send an image")
    fmt = sniff_format(data, name, max_pixels)
    try:
        img = open_image(io.BytesIO(data), name, max_pixels=max_pixels, formats=FORMATS)
    except ImageTooLargeError as err:
        raise HTTPException(413, str(err)) from None
    except DataError as err:
        raise HTTPException(422, f"{err} (a corrupt or truncated {fmt} file?)") from None
    try:
        single_frame(img, name)  # as `segqc predict`: never assess only the first frame of a stack
    except DataError as err:
        raise HTTPException(422, str(err)) from None
    try:
        rgb = to_rgb(img)
    except (OSError, ValueError, SyntaxError, TypeError, KeyError) as err:
        detail = f"{name}: cannot convert the {fmt} image to RGB ({type(err).__name__}: {err})"
        raise HTTPException(422, detail) from None
    if rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise HTTPException(422, f"{name}: the image has no pixels")
    return rgb


def sniff_format(data: bytes, name: str, max_pixels: int) -> str:
    """The Pillow format of ``data`` if it is an accepted one of at most ``max_pixels`` pixels; else 413
    (too many pixels), 415 (not an image, or a format not accepted) or 422 (it starts like an accepted
    format but its header is corrupt). Reads headers only."""
    return probe_upload(data, name, max_pixels)[0]


def probe_upload(data: bytes, name: str, max_pixels: int) -> tuple[str, int, int]:
    """``(format, width, height)`` declared by the header of ``data``, refused as :func:`sniff_format`
    says. Reads headers only (Pillow's ``Image.open`` is lazy): nothing is decoded."""
    if not data:
        raise HTTPException(415, f"{name}: the file is empty (0 bytes); send an image")
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
        return fmt, width, height
    other = identify_format(io.BytesIO(data))
    if other is not None:
        raise HTTPException(415, f"{name}: {other} images are not accepted; send one of {', '.join(FORMATS)}")
    damaged = starts_like_accepted(data[:16])
    if damaged is not None:  # a corrupt image (422), not a non-image (415)
        raise HTTPException(422, f"{name}: starts like a {damaged} file but its header is corrupt")
    raise HTTPException(
        415, f"{name}: not an image (its content is no known image format); send one of {', '.join(FORMATS)}"
    )


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
    """Result id: the file name without its extension, made safe as ``segqc predict`` makes its ids
    (:func:`segqc.assess.ids.safe_id`: no control or bidi characters, no leading ``= + - @``)."""
    stem = name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name
    return safe_id(stem) if stem else "upload"


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

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise _BodyTooLarge(received, self.max_body_bytes)
            return message

        await run_or_answer(
            self.app, scope, receive, send, limited_receive, _BodyTooLarge,
            lambda _: _too_large(received, self.max_body_bytes),
        )  # fmt: skip


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

"""The service on bad and odd input: the right 4xx (never a 500), correct results for odd but valid
images, and a service that keeps answering afterwards. Every file is made here."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from segqc.assess import assess_images
from segqc.data.readers import to_rgb
from segqc.errors import BundleError
from segqc.service import create_app
from segqc.service.uploads import BodyLimitMiddleware
from tests.service.conftest import (
    MAX_PIXELS,
    MAX_UPLOAD,
    assert_healthy,
    copy_bundle,
    decode_png,
    drop_config_key,
    encode,
    exif_rotated_jpeg,
    png_bomb,
    post_image,
    random_rgb,
    serve_cli,
    tamper_weights,
)


def garbage(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def half(data: bytes) -> bytes:
    return data[: len(data) // 2]


#: Pillow identifies this header as EPS; decoding it would run Ghostscript.
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n"


#: (case, file name, bytes, status, text the error must contain)
# fmt: off
def multi_frame(fmt: str) -> bytes:
    """Two different frames in one file: the service must not silently assess only the first."""
    frames = [Image.fromarray(random_rgb(20, 20, seed)) for seed in (0, 1)]
    buf = io.BytesIO()
    frames[0].save(buf, format=fmt, save_all=True, append_images=frames[1:])
    return buf.getvalue()


REFUSED: list[tuple[str, str, Callable[[], bytes], int, str]] = [
    ("zero-byte", "empty.png", lambda: b"", 415, "empty"),
    ("multi-frame-gif", "anim.gif", lambda: multi_frame("GIF"), 422, "2 frames"),
    ("multi-page-tiff", "pages.tif", lambda: multi_frame("TIFF"), 422, "2 frames"),
    ("text-named-jpg", "notes.jpg", lambda: b"Patient notes: lesion, left arm.\n" * 20, 415, "not an image"),
    ("html-named-png", "index.png", lambda: b"<!DOCTYPE html><html></html>", 415, "not an image"),
    ("zip-archive", "images.zip", lambda: b"PK\x03\x04" + garbage(300), 415, "not an image"),
    ("unaccepted-format-eps", "scan.eps", lambda: EPS, 415, "EPS images are not accepted"),
    ("truncated-jpeg", "cut.jpg", lambda: half(encode(random_rgb(64, 64), "JPEG")), 422, "truncated"),
    ("truncated-png", "cut.png", lambda: half(encode(random_rgb(40, 40))), 422, "truncated"),
    ("corrupt-png-header", "bad.png", lambda: b"\x89PNG\r\n\x1a\n" + garbage(200), 422, "PNG"),
    ("corrupt-jpeg-header", "bad.jpg", lambda: b"\xff\xd8\xff" + garbage(200), 422, "JPEG"),
    ("decompression-bomb", "bomb.png", png_bomb, 413, "too large"),
    ("bomb-under-pillow-error-limit", "bomb2.png", lambda: png_bomb(10_000, 10_000), 413, "10000x10000"),
    ("over-max-pixels", "big.png", lambda: encode(np.zeros((400, 400, 3), np.uint8)), 413, str(MAX_PIXELS)),
    ("over-max-upload", "noise.png", lambda: encode(random_rgb(300, 300)), 413, "upload limit"),
]
# fmt: on


@pytest.mark.parametrize(
    ("name", "make", "status", "text"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED]
)
def test_refused_with_the_right_status(client, name, make, status, text):
    data = make()
    if status == 413 and "upload" in text:
        assert len(data) > MAX_UPLOAD  # the case really is over the limit
    response = post_image(client, name, data)
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and text in detail
    if data and "upload limit" not in text:  # (a body refused unread has no file name yet)
        assert detail.startswith(name)  # the message names the upload
    assert_healthy(client)


def _grey16() -> bytes:
    return encode(np.linspace(0, 60000, 24 * 18).reshape(18, 24).astype(np.uint16))


def _rgba() -> bytes:
    alpha = np.tile(np.linspace(0, 255, 23, dtype=np.uint8), (19, 1))
    return encode(np.dstack([random_rgb(19, 23, seed=4), alpha]))


def _tiff16() -> bytes:
    return encode(Image.fromarray(np.full((7, 9), 50000, np.uint16)), "TIFF")


def _cmyk_jpeg() -> bytes:
    return encode(Image.new("CMYK", (13, 8), (0, 50, 90, 10)), "JPEG")


def _palette(fmt: str = "PNG") -> bytes:
    return encode(Image.fromarray(random_rgb(15, 26)).convert("P"), fmt)


#: (case, file name, bytes, (width, height) after EXIF rotation, expected id)
# fmt: off
ODD_BUT_VALID: list[tuple[str, str, Callable[[], bytes], tuple[int, int], str]] = [
    ("grey", "grey.png", lambda: encode(random_rgb(21, 17)[..., 0]), (17, 21), "grey"),
    ("grey-16-bit", "deep.png", _grey16, (24, 18), "deep"),
    ("rgba", "alpha.png", _rgba, (23, 19), "alpha"),
    ("palette", "pal.png", _palette, (26, 15), "pal"),
    ("one-pixel", "dot.png", lambda: encode(np.full((1, 1, 3), 200, np.uint8)), (1, 1), "dot"),
    ("exif-rotated-jpeg", "phone.jpg", exif_rotated_jpeg, (24, 40), "phone"),
    ("non-ascii-name", "Läsion_ü€ 日本.png", lambda: encode(random_rgb(12, 14)), (14, 12), "Läsion_ü€ 日本"),
    ("windows-path-name", "C:\\scans\\case.v2.png", lambda: encode(random_rgb(9, 11)), (11, 9), "case.v2"),
    ("cmyk-jpeg", "print.jpg", _cmyk_jpeg, (13, 8), "print"),
    ("bilevel", "bw.png", lambda: encode(Image.new("1", (10, 6), 1)), (10, 6), "bw"),
    ("tiff-16-bit", "deep.tif", _tiff16, (9, 7), "deep"),
    ("gif", "anim.gif", lambda: _palette("GIF"), (26, 15), "anim"),
    ("webp", "web.webp", lambda: encode(random_rgb(10, 18), "WEBP"), (18, 10), "web"),
    ("bmp", "old.bmp", lambda: encode(random_rgb(10, 12), "BMP"), (12, 10), "old"),
]
# fmt: on


@pytest.mark.parametrize(
    ("name", "make", "size", "id_"), [c[1:] for c in ODD_BUT_VALID], ids=[c[0] for c in ODD_BUT_VALID]
)
def test_odd_but_valid_images_are_assessed(client, bundle, name, make, size, id_):
    data = make()
    response = post_image(client, name, data, include_mask=True, include_uncertainty=True)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == id_
    assert (body["width"], body["height"]) == size
    assert decode_png(body["mask_png"]).size == size
    assert decode_png(body["uncertainty_png"]).size == size
    # Same answer as the library on the same file decoded by the shared reader.
    rgb = to_rgb(Image.open(io.BytesIO(data)))
    assert rgb.shape[:2] == (size[1], size[0])
    expected = assess_images(bundle, [rgb])[0]
    assert body["predicted_jaccard"] == pytest.approx(expected.predicted_jaccard, abs=1e-6)
    assert body["decision"] == expected.decision
    assert_healthy(client)


def test_exif_rotation_turns_the_mask_too(client):
    body = post_image(client, "phone.jpg", exif_rotated_jpeg(40, 24), include_mask=True).json()
    mask = np.asarray(decode_png(body["mask_png"]))
    assert mask.shape == (40, 24)  # (height, width) of the displayed (rotated) image


MALFORMED_REQUESTS = [
    ("no-file-field", {"data": {"other": "x"}}, 422, "missing the form field 'file'"),
    ("wrong-field-name", {"files": {"image": ("a.png", b"abc")}}, 422, "missing the form field 'file'"),
    ("file-as-text", {"data": {"file": "abc"}}, 422, "must be a file upload"),
    ("json-body", {"json": {"file": "abc"}}, 422, "multipart/form-data"),
    (
        "bad-query",
        {"files": {"file": ("a.png", b"x")}, "params": {"include_mask": "maybe"}},
        422,
        "include_mask",
    ),
    (
        "bad-format-choice",
        {"files": {"file": ("a.png", b"x")}, "params": {"uncertainty_format": "rainbow"}},
        422,
        "uncertainty_format",
    ),
    (
        "broken-multipart",
        {"content": b"--zzz\r\ngarbage", "headers": {"content-type": "multipart/form-data; boundary=abc"}},
        400,
        "multipart",
    ),
]


@pytest.mark.parametrize(
    ("kwargs", "status", "text"), [c[1:] for c in MALFORMED_REQUESTS], ids=[c[0] for c in MALFORMED_REQUESTS]
)
def test_malformed_requests(client, kwargs, status, text):
    response = client.post("/v1/assess", **kwargs)
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and text in detail
    assert_healthy(client)


def test_wrong_method_and_route_are_json_errors(client):
    assert client.get("/v1/assess").status_code == 405
    missing = client.get("/v2/assess")
    assert missing.status_code == 404 and missing.json() == {"detail": "Not Found"}


def test_chunked_upload_over_the_limit(client):
    """No Content-Length (chunked): the body is counted while FastAPI parses the form, then refused."""

    def body():
        for _ in range(50):  # 50 x 64 KiB = 3.2 MB, 16 x the limit
            yield b"\0" * 65536

    response = client.post(
        "/v1/assess", content=body(), headers={"content-type": "multipart/form-data; boundary=abc"}
    )
    assert response.status_code == 413 and "upload limit" in response.json()["detail"]
    assert_healthy(client)


def test_body_limit_stops_reading_an_endless_body():
    """The middleware stops pulling body chunks as soon as the limit is passed (the test client above
    hands the whole body over at once, so this drives the middleware with a never-ending stream)."""
    pulled, sent = 0, []

    async def receive():
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": b"\0" * 65536, "more_body": True}

    async def send(message):
        sent.append(message)

    async def app_reading_everything(scope, receive, send):
        while (await receive()).get("more_body"):
            pass

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/assess",
        "headers": [(b"transfer-encoding", b"chunked")],
    }
    asyncio.run(BodyLimitMiddleware(app_reading_everything, max_body_bytes=200_000)(scope, receive, send))
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 413
    assert pulled == 4  # 4 x 64 KiB is the first total over 200 000 bytes
    assert "larger than the upload limit" in json.loads(sent[1]["body"])["detail"]


def test_declared_content_length_over_the_limit_is_refused_before_reading(client):
    response = client.post(
        "/v1/assess",
        content=b"x" * 10,
        headers={"content-type": "multipart/form-data; boundary=abc", "content-length": str(10 * MAX_UPLOAD)},
    )
    assert response.status_code == 413 and str(10 * MAX_UPLOAD) in response.json()["detail"]


def test_upload_limit_of_the_file_itself(bundle):
    """A file just over max_upload_bytes is refused even though the whole request fits the body limit."""
    from fastapi.testclient import TestClient

    limit = 5000
    data = encode(random_rgb(60, 60, seed=8))  # about 11 kB of incompressible noise
    assert limit < len(data)
    with TestClient(create_app(bundle, max_upload_bytes=limit, warmup=False)) as small:
        response = post_image(small, "n.png", data)
        assert response.status_code == 413
        assert "upload" in response.json()["detail"]
        assert post_image(small, "tiny.png", encode(random_rgb(4, 4))).status_code == 200


def test_mixed_junk_folder(client, tmp_path):
    """Send every file of a folder as found on a shared drive; each gets the right answer, in turn."""
    folder = tmp_path / "incoming"
    folder.mkdir()
    expected = {
        "lesion_001.png": 200,
        "lesion_002.JPG": 200,
        "scan_grey.tif": 200,
        ".DS_Store": 415,
        "Thumbs.db": 415,
        "readme.txt": 415,
        "labels.json": 415,
        "empty.jpg": 415,
        "copy_failed.png": 422,
        "half_upload.jpg": 422,
        "huge_scan.png": 413,
        "report.pdf": 415,
    }
    contents = {
        "lesion_001.png": encode(random_rgb(30, 30, seed=1)),
        "lesion_002.JPG": encode(random_rgb(25, 35, seed=2), "JPEG"),
        "scan_grey.tif": encode(random_rgb(16, 20, seed=3)[..., 1], "TIFF"),
        ".DS_Store": b"\x00\x00\x00\x01Bud1" + garbage(200, 1),
        "Thumbs.db": b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + garbage(500, 2),
        "readme.txt": "Bilder für die Studie — bitte nicht löschen\n".encode(),
        "labels.json": b'{"lesion_001": "melanoma"}',
        "empty.jpg": b"",
        "copy_failed.png": half(encode(random_rgb(30, 30, seed=4))),
        "half_upload.jpg": half(encode(random_rgb(50, 50, seed=5), "JPEG", quality=95)),
        "huge_scan.png": encode(np.zeros((500, 300, 3), np.uint8)),
        "report.pdf": b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n",
    }
    for name, data in contents.items():
        (folder / name).write_bytes(data)
    (folder / "subfolder").mkdir()  # not a file: skipped, like a client would

    first = post_image(client, "lesion_001.png", (folder / "lesion_001.png").read_bytes()).json()
    first.pop("request_id")
    got = {}
    for path in sorted(folder.iterdir()):
        if path.is_file():
            response = post_image(client, path.name, path.read_bytes())
            got[path.name] = response.status_code
            assert isinstance(response.json().get("detail", ""), str)
            assert_healthy(client)
    assert got == expected
    # Still the same answer for a good image after all that.
    last = post_image(client, "lesion_001.png", (folder / "lesion_001.png").read_bytes()).json()
    last.pop("request_id")
    assert last == first


# -- bad bundles: refused at startup ------------------------------------------------------------------------


@pytest.fixture()
def no_server(monkeypatch):
    """``segqc serve`` must fail before starting a server; fail the test loudly if it gets that far."""
    import uvicorn

    def refuse(*args, **kwargs):
        raise AssertionError("uvicorn.run was reached with a bad bundle")

    monkeypatch.setattr(uvicorn, "run", refuse)


def _serve(model: Path):
    serve = serve_cli()

    return CliRunner().invoke(serve, ["--model", str(model)])


def _bad_bundle_fails_cleanly(model: Path, text: str) -> None:
    with pytest.raises(BundleError, match=text):
        create_app(model)
    result = _serve(model)
    assert result.exit_code == 1, result.output
    assert result.output.startswith("error: ") and text in result.output
    assert "Traceback" not in result.output


def test_tampered_weights_refused(bundle_dir, tmp_path, no_server):
    model = copy_bundle(bundle_dir, tmp_path / "model")
    weights = tamper_weights(model)
    _bad_bundle_fails_cleanly(model, "checksum mismatch")
    assert weights.name in _serve(model).output  # the message names the file


def test_config_missing_a_key_refused(bundle_dir, tmp_path, no_server):
    model = copy_bundle(bundle_dir, tmp_path / "model")
    drop_config_key(model, "image_size")
    _bad_bundle_fails_cleanly(model, "lacks the key 'image_size'")


def test_missing_bundle_folder_refused(tmp_path, no_server):
    _bad_bundle_fails_cleanly(tmp_path / "nowhere", "not found")


@pytest.mark.parametrize("fmt", ["GIF", "TIFF", "PNG", "WEBP"])
def test_multi_frame_upload_is_refused_like_predict(client, fmt):
    # predict lists a multi-frame file in errors.csv; the service used to assess its first frame alone.
    frames = [Image.fromarray(np.full((20, 20, 3), v, np.uint8)) for v in (10, 200)]
    buf = io.BytesIO()
    frames[0].save(buf, format=fmt, save_all=True, append_images=frames[1:])
    response = post_image(client, f"anim.{fmt.lower()}", buf.getvalue())
    assert response.status_code == 422, response.text
    assert "holds 2 frames" in response.json()["detail"]
    assert_healthy(client)


@pytest.mark.parametrize(
    ("name", "id_"),
    [("\u202egnp.exe.png", "_gnp.exe"), ("=HYPERLINK(1).png", "_HYPERLINK(1)"), ("+1.png", "_1")],
)
def test_upload_ids_are_made_safe_like_predict_ids(client, name, id_):
    # The id echoed the client's file name verbatim: bidi overrides, line breaks, formula starts.
    response = post_image(client, name, encode(random_rgb(12, 12)))
    assert response.status_code == 200, response.text
    assert response.json()["id"] == id_

"""Fixtures of the service tests: one tiny bundle per session, an app with small limits, image bytes."""

from __future__ import annotations

import base64
import io
import json
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pytest.importorskip("python_multipart")

from fastapi.testclient import TestClient  # noqa: E402

from segqc.bundle import Bundle, load_bundle  # noqa: E402
from segqc.config import PipelineConfig  # noqa: E402
from segqc.service import create_app  # noqa: E402
from segqc.training import train_bundle  # noqa: E402

#: Limits of the shared test app: small, so that the limit tests need no big files.
MAX_UPLOAD = 200_000
MAX_PIXELS = 100_000


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory, tiny_data) -> Path:
    """A bundle trained for 1 epoch on 48 synthetic 32x32 images (in-memory data: faster than the
    320 + 160 image synthetic default of ``train_bundle(None, ...)``)."""
    cfg = PipelineConfig(
        image_size=32, base_width=4, quality_width=4, seg_epochs=1, quality_epochs=1, device="cpu"
    )
    out = tmp_path_factory.mktemp("service") / "model"
    train_bundle(tiny_data[0], None, cfg, out, progress=False, force=True)  # 1 epoch: unfit, forced
    return out


@pytest.fixture(scope="session")
def bundle(bundle_dir: Path) -> Bundle:
    return load_bundle(bundle_dir, device="cpu")


@pytest.fixture(scope="session")
def client(bundle: Bundle) -> Iterator[TestClient]:
    """The app with small limits (``MAX_UPLOAD`` bytes, ``MAX_PIXELS`` pixels), shared by the tests."""
    app = create_app(bundle, max_upload_bytes=MAX_UPLOAD, max_pixels=MAX_PIXELS)
    with TestClient(app) as test_client:
        yield test_client


def copy_bundle(bundle_dir: Path, dest: Path) -> Path:
    return Path(shutil.copytree(bundle_dir, dest))


def tamper_weights(bundle_dir: Path) -> Path:
    """Flip bytes in the middle of a weight file (keeps it a valid-looking file of the same size)."""
    weights = sorted(bundle_dir.glob("*.safetensors"))[0]
    blob = bytearray(weights.read_bytes())
    mid = len(blob) // 2
    blob[mid : mid + 8] = bytes(b ^ 0xFF for b in blob[mid : mid + 8])
    weights.write_bytes(bytes(blob))
    return weights


def drop_config_key(bundle_dir: Path, key: str = "image_size") -> Path:
    config = bundle_dir / "bundle.json"
    data = json.loads(config.read_text())
    del data[key]
    config.write_text(json.dumps(data))
    return config


# -- image bytes -------------------------------------------------------------------------------------------


def random_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def encode(arr: np.ndarray | Image.Image, fmt: str = "PNG", **save: object) -> bytes:
    img = arr if isinstance(arr, Image.Image) else Image.fromarray(arr)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny, well-formed PNG whose header declares ``width x height`` RGB pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + png_chunk(b"IEND", b"")
    )


def exif_rotated_jpeg(width: int = 40, height: int = 24) -> bytes:
    """A ``width x height`` JPEG whose EXIF orientation (6) says: rotate 90 degrees to display."""
    img = Image.fromarray(random_rgb(height, width, seed=5))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(img, "JPEG", exif=exif.tobytes())


def decode_png(b64: str) -> Image.Image:
    img = Image.open(io.BytesIO(base64.b64decode(b64)))
    assert img.format == "PNG"
    img.load()
    return img


def post_image(client, name: str, data: bytes, **params: object):
    return client.post("/v1/assess", params=params, files={"file": (name, data, "application/octet-stream")})


def assert_healthy(client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


# -- a real server -------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_cli():
    """The ``serve`` click command."""
    from segqc.cli.serve import serve

    return serve


def serve_command(model_dir: Path, *args: str) -> list[str]:
    """``python -m segqc serve --model MODEL_DIR ARGS``."""
    return [sys.executable, "-m", "segqc", "serve", "--model", str(model_dir), *args]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    """Poll ``/healthz`` until it answers, the process dies, or ``timeout`` seconds pass."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited early with code {proc.returncode}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise AssertionError(f"server did not answer /healthz within {timeout:.0f} s")


def stop(proc: subprocess.Popen) -> int:
    proc.terminate()
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(timeout=30)


@contextmanager
def live_server(app) -> Iterator[str]:
    """Run ``app`` on a real uvicorn server in a thread, on a free loopback port; yields its URL."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise AssertionError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@pytest.fixture()
def serve_env(monkeypatch):
    """Restore every variable ``segqc serve --workers N`` sets (for its app factory) after the test."""
    from segqc.service.app import ENV_SETTINGS

    for var in ["SEGQC_SERVE_MODEL", "SEGQC_API_KEY_FILE", *(v for v, _ in ENV_SETTINGS.values())]:
        monkeypatch.setenv(var, "placeholder")
        monkeypatch.delenv(var)
    monkeypatch.delenv("SEGQC_API_KEY", raising=False)
    return monkeypatch

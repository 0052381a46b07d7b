"""The service on an ONNX export: the same answers as on the bundle it came from, and no torch needed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from segqc.service import create_app
from tests.conftest import run_without_torch
from tests.service.conftest import (
    MAX_PIXELS,
    MAX_UPLOAD,
    decode_png,
    encode,
    post_image,
    random_rgb,
    serve_cli,
)

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

#: onnxruntime vs PyTorch on float32 graphs (``tests/test_export.py`` measures ~1e-7).
ATOL = 1e-4


@pytest.fixture(scope="module")
def export_dir(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's tiny ``msp`` bundle, exported to ONNX with the fast (legacy) exporter."""
    from segqc.runtime.export import export_onnx

    return export_onnx(bundle_dir, tmp_path_factory.mktemp("service-onnx") / "onnx", exporter="torchscript")


def _uploads() -> list[tuple[str, bytes]]:
    return [
        ("square.png", encode(random_rgb(32, 32, seed=21))),
        ("wide.png", encode(random_rgb(30, 57, seed=22))),
        ("tall.jpg", encode(random_rgb(70, 25, seed=23), "JPEG")),
    ]


def test_bundle_and_its_export_answer_alike(bundle_dir, export_dir):
    """POST the same images to an app on the bundle and one on its export: equal JSON but for float noise.

    Compared: every field of ``/v1/assess`` (``predicted_jaccard`` and ``mean_uncertainty`` within
    ``ATOL``, the rest equal), the mask PNG pixel for pixel, the grey uncertainty PNG within one grey
    level (8-bit rounding of values equal within ``ATOL``), and the ``/v1/model`` answers.
    """
    params = {"include_mask": True, "include_uncertainty": True}
    apps = {
        "torch": create_app(bundle_dir, max_upload_bytes=MAX_UPLOAD, max_pixels=MAX_PIXELS),
        "onnx": create_app(export_dir, max_upload_bytes=MAX_UPLOAD, max_pixels=MAX_PIXELS),
    }
    answers: dict[str, list[dict]] = {}
    models: dict[str, dict] = {}
    for backend, app in apps.items():
        assert app.state.model.backend == backend
        with TestClient(app) as client:
            responses = [post_image(client, name, data, **params) for name, data in _uploads()]
            assert [r.status_code for r in responses] == [200, 200, 200]
            answers[backend] = [r.json() for r in responses]
            models[backend] = client.get("/v1/model").json()

    worst, worst_grey = 0.0, 0
    for a, b in zip(answers["torch"], answers["onnx"]):
        assert set(a) == set(b)
        for key in ("predicted_jaccard", "mean_uncertainty"):
            worst = max(worst, abs(a[key] - b[key]))
            assert a[key] == pytest.approx(b[key], abs=ATOL), key
        same = ("id", "decision", "threshold", "method", "width", "height", "uncertainty_scale")
        assert {k: a[k] for k in same} == {k: b[k] for k in same}
        np.testing.assert_array_equal(
            np.asarray(decode_png(a["mask_png"])), np.asarray(decode_png(b["mask_png"]))
        )
        grey_a = np.asarray(decode_png(a["uncertainty_png"]), dtype=np.int16)
        grey_b = np.asarray(decode_png(b["uncertainty_png"]), dtype=np.int16)
        worst_grey = max(worst_grey, int(np.abs(grey_a - grey_b).max()))
        assert grey_a.shape == (a["height"], a["width"]) and worst_grey <= 1
    print(f"max |torch - onnx|: {worst:.3g} (predicted_jaccard, mean_uncertainty), {worst_grey} grey levels")

    torch_info, onnx_info = models["torch"], models["onnx"]
    assert torch_info["backend"] == "torch" and onnx_info["backend"] == "onnx"
    for key in ("method", "threshold", "image_size", "predictor", "service"):
        assert torch_info[key] == onnx_info[key], key
    assert onnx_info["parity"]["passed"]


NO_TORCH_SERVE = """
    import numpy as np
    from fastapi.testclient import TestClient
    from PIL import Image
    import io

    from segqc.service import create_app

    buf = io.BytesIO()
    Image.fromarray(np.full((20, 30, 3), 128, np.uint8)).save(buf, format="PNG")
    with TestClient(create_app(sys.argv[1])) as client:
        response = client.post("/v1/assess", files={"file": ("a.png", buf.getvalue(), "image/png")})
        backend = client.get("/v1/model").json()["backend"]
    torch_modules = [m for m in sys.modules if m == "torch" or m.startswith("torch.")]
    print("RESULT", json.dumps({"status": response.status_code, "backend": backend, "torch": torch_modules}))
"""


def test_serving_an_export_needs_no_torch(export_dir):
    """create_app on an export, and a request, in a fresh interpreter where importing torch fails."""
    result, output = run_without_torch(NO_TORCH_SERVE, str(export_dir))
    assert result == {"status": 200, "backend": "onnx", "torch": []}, output


def test_serve_command_takes_an_export(export_dir, monkeypatch):
    """``segqc serve --model EXPORT_DIR`` loads the export and hands its app to uvicorn."""
    import uvicorn
    from click.testing import CliRunner

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(app))
    result = CliRunner().invoke(serve_cli(), ["--model", str(export_dir), "--port", "8124"])
    assert result.exit_code == 0, result.output
    assert calls and calls[-1].state.model.backend == "onnx"
    assert "msp" in result.output

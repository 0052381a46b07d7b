"""The service on good input: routes, results equal to the library's, concurrency, the CLI, a real server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from segqc.assess import assess_images
from segqc.errors import SegQCError
from segqc.service import app as service_app
from segqc.service import assessor as service_assessor
from segqc.service import create_app
from tests.service.conftest import (
    MAX_PIXELS,
    MAX_UPLOAD,
    assert_healthy,
    decode_png,
    encode,
    free_port,
    png_bomb,
    post_image,
    random_rgb,
    serve_cli,
    serve_command,
    stop,
    wait_healthy,
)


def test_healthz(client):
    assert_healthy(client)


def test_model_route_reports_the_bundle_and_limits(client, bundle):
    info = client.get("/v1/model").json()
    assert info["method"] == bundle.method == "msp"
    assert info["threshold"] == pytest.approx(bundle.threshold)
    assert info["image_size"] == bundle.image_size == 32
    assert info["predictor"] == bundle.metadata()["predictor"]
    assert info["service"]["max_upload_bytes"] == MAX_UPLOAD
    assert info["service"]["max_pixels"] == MAX_PIXELS
    assert "PNG" in info["service"]["formats"] and "JPEG" in info["service"]["formats"]
    # The gate, without its matrices: the tiny test model is unfit (forced), and says so.
    assert info["gate"]["fitness"]["fit"] is False and "precision" not in info["gate"]["ood"]
    assert info["gate"]["ood"]["limit"] == pytest.approx(bundle.gate.ood.limit)
    assert info["manifest_sha256"] == bundle.manifest_sha256


def test_assess_matches_the_library(client, bundle):
    rgb = random_rgb(30, 44, seed=1)
    response = post_image(client, "case_017.png", encode(rgb))
    assert response.status_code == 200
    body = response.json()
    expected = assess_images(bundle, [rgb], ["case_017"])[0]
    assert body["id"] == "case_017"
    assert body["predicted_jaccard"] == pytest.approx(expected.predicted_jaccard, abs=1e-6)
    assert body["mean_uncertainty"] == pytest.approx(expected.mean_uncertainty, abs=1e-6)
    assert body["decision"] == expected.decision == ("refer" if expected.predicted_jaccard < 0.7 else "pass")
    assert body["threshold"] == pytest.approx(bundle.threshold)
    assert (body["width"], body["height"], body["method"]) == (44, 30, "msp")
    assert "mask_png" not in body and "uncertainty_png" not in body  # only when asked


def test_mask_and_grey_uncertainty_pngs(client, bundle):
    rgb = random_rgb(27, 35, seed=2)
    body = post_image(client, "a.png", encode(rgb), include_mask=True, include_uncertainty=True).json()
    expected = assess_images(bundle, [rgb])[0]
    mask = decode_png(body["mask_png"])
    assert mask.mode == "L" and mask.size == (35, 27)
    arr = np.asarray(mask)
    assert set(np.unique(arr)) <= {0, 255}
    np.testing.assert_array_equal(arr // 255, expected.mask)
    grey = decode_png(body["uncertainty_png"])
    assert grey.mode == "L" and grey.size == (35, 27)
    scale = body["uncertainty_scale"]
    assert scale == pytest.approx(bundle.uncertainty_vmax)
    # Decoding the documented way gives back the map, to within one grey level.
    z = np.asarray(grey, np.float32) / 255 * scale
    np.testing.assert_allclose(z, np.minimum(expected.uncertainty, scale), atol=scale / 255 + 1e-6)


def test_heatmap_uncertainty_png(client):
    body = post_image(
        client,
        "b.jpg",
        encode(random_rgb(20, 24), "JPEG"),
        include_uncertainty=True,
        uncertainty_format="heatmap",
    ).json()
    heat = decode_png(body["uncertainty_png"])
    assert heat.mode == "RGB" and heat.size == (24, 20)
    assert "mask_png" not in body


def test_openapi_schema_and_docs(client):
    schema = client.get("/openapi.json").json()
    assert {"/v1/assess", "/v1/model", "/healthz"} <= set(schema["paths"])
    assess = schema["paths"]["/v1/assess"]["post"]
    assert {"200", "413", "415", "422"} <= set(assess["responses"])
    assert "multipart/form-data" in assess["requestBody"]["content"]
    assert client.get("/docs").status_code == 200


def test_limits_must_be_positive(bundle):
    with pytest.raises(SegQCError, match="positive"):
        create_app(bundle, max_pixels=0, warmup=False)


def test_app_factory_from_environment(bundle_dir, serve_env, tmp_path):
    serve_env.setenv("SEGQC_SERVE_MODEL", str(bundle_dir))
    serve_env.setenv("SEGQC_SERVE_MAX_PIXELS", "1234")
    serve_env.setenv("SEGQC_SERVE_PIXEL_BUDGET", "5000")
    serve_env.setenv("SEGQC_SERVE_QUEUE_TIMEOUT", "2.5")
    serve_env.setenv("SEGQC_SERVE_AUDIT_LOG", str(tmp_path / "audit.jsonl"))
    serve_env.setenv("SEGQC_API_KEY", "env-key")
    app = service_app.create_app_from_env()
    assert app.state.assessor.max_pixels == 1234
    assert (app.state.budget.total, app.state.budget.wait_s) == (5000, 2.5)
    assert app.state.audit_log.path == tmp_path / "audit.jsonl"
    from fastapi.testclient import TestClient

    with TestClient(app) as client:
        assert client.get("/v1/model").status_code == 401
        assert client.get("/v1/model", headers={"X-API-Key": "env-key"}).status_code == 200
    serve_env.setenv("SEGQC_SERVE_PIXEL_BUDGET", "lots")
    with pytest.raises(SegQCError, match="SEGQC_SERVE_PIXEL_BUDGET='lots' is not a valid int"):
        service_app.create_app_from_env()


def test_concurrent_requests_match_sequential_answers(bundle, monkeypatch):
    """16 requests at once (good and bad) get the same answers as one at a time; the model never runs
    two requests at once."""
    from fastapi.testclient import TestClient

    payloads = [(f"img{i}.png", encode(random_rgb(20 + 3 * i, 48 - 2 * i, seed=10 + i))) for i in range(10)]
    payloads += [("jpeg.jpg", encode(random_rgb(33, 21, seed=99), "JPEG"))]
    payloads += [
        ("empty.png", b""),
        ("notes.jpg", b"not an image at all\n" * 20),
        ("cut.png", encode(random_rgb(30, 30, seed=7))[:150]),
        ("bomb.png", png_bomb()),
        ("huge.png", encode(np.zeros((400, 400, 3), np.uint8))),
    ]
    active, peak, lock = 0, 0, threading.Lock()
    real = service_assessor.assess_images

    def counting(*args, **kwargs):
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        try:
            return real(*args, **kwargs)
        finally:
            with lock:
                active -= 1

    monkeypatch.setattr(service_assessor, "assess_images", counting)
    app = create_app(bundle, max_upload_bytes=MAX_UPLOAD, max_pixels=MAX_PIXELS)
    with TestClient(app) as client:

        def ask(item):
            response = post_image(client, *item, include_mask=True)
            return response.status_code, response.json()

        sequential = [ask(item) for item in payloads]
        assert all(body.pop("request_id", "") for status, body in sequential if status == 200)
        start = threading.Barrier(len(payloads))

        def ask_together(item):
            start.wait(timeout=60)
            return ask(item)

        with ThreadPoolExecutor(len(payloads)) as pool:
            concurrent = list(pool.map(ask_together, payloads))
        assert_healthy(client)
    assert [s for s, _ in sequential] == [200] * 11 + [415, 415, 422, 413, 413]
    for (name, _), seq, conc in zip(payloads, sequential, concurrent):
        conc[1].pop("request_id", None)  # a fresh uuid4 for every request
        assert conc == seq, name
    assert peak == 1


def test_serve_command_passes_settings_to_uvicorn(bundle_dir, serve_env):
    import uvicorn

    serve = serve_cli()

    calls = []
    serve_env.setattr(uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    port = free_port()
    args = ["--model", str(bundle_dir), "--port", str(port), "--max-upload-mb", "2", "--max-pixels", "5000"]
    result = CliRunner().invoke(serve, args)
    assert result.exit_code == 0, result.output
    app, kw = calls[-1]
    assert app.state.assessor.max_pixels == 5000
    assert (kw["host"], kw["port"]) == ("127.0.0.1", port)

    result = CliRunner().invoke(serve, [*args, "--workers", "2"])
    assert result.exit_code == 0, result.output
    app, kw = calls[-1]
    assert app == "segqc.service.app:create_app_from_env" and kw["factory"] and kw["workers"] == 2
    assert os.environ["SEGQC_SERVE_MAX_UPLOAD_BYTES"] == str(2 * 1024 * 1024)
    assert Path(os.environ["SEGQC_SERVE_MODEL"]) == bundle_dir.resolve()


def test_serve_port_0_is_resolved_and_named_in_the_start_up_line(bundle_dir, serve_env):
    import uvicorn

    calls = []
    serve_env.setattr(uvicorn, "run", lambda app, **kw: calls.append(kw))
    result = CliRunner().invoke(serve_cli(), ["--model", str(bundle_dir), "--port", "0"])
    assert result.exit_code == 0, result.output
    port = calls[-1]["port"]
    assert port > 0 and f"http://127.0.0.1:{port} " in result.output


def test_serve_on_a_taken_port_is_one_error_line_before_the_model_loads(bundle_dir, serve_env):
    import socket

    import uvicorn

    serve_env.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("uvicorn started on a taken port"))
    serve_env.setattr(service_app, "create_app", lambda *a, **k: pytest.fail("the model was loaded"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(serve_cli(), ["--model", str(bundle_dir), "--port", str(port)])
    assert result.exit_code == 1, result.output
    assert f"error: cannot listen on 127.0.0.1:{port}" in result.output and "Traceback" not in result.output


def test_serve_on_a_machine_without_ipv6_names_the_address(monkeypatch):
    # socket.socket(AF_INET6) itself fails there: the error named no address ("Address family ...").
    import errno
    import socket

    from segqc.cli.serve import free_port_to_listen

    def no_ipv6(family=socket.AF_INET, *args, **kwargs):
        if family == socket.AF_INET6:
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
        return real(family, *args, **kwargs)

    real = socket.socket
    monkeypatch.setattr(socket, "socket", no_ipv6)
    with pytest.raises(SegQCError, match=r"cannot listen on ::1:8000: Address family not supported"):
        free_port_to_listen("::1", 8000)


def test_serve_turns_uvicorns_start_up_failure_into_exit_code_1(bundle_dir, serve_env):
    """A port taken between segqc's check and uvicorn's bind: uvicorn exits 3, which segqc keeps for
    unread inputs; serve says it did not start, with exit code 1."""
    import uvicorn

    def fail_to_start(*args, **kwargs):
        raise SystemExit(3)

    serve_env.setattr(uvicorn, "run", fail_to_start)
    result = CliRunner().invoke(serve_cli(), ["--model", str(bundle_dir), "--port", "0"])
    assert result.exit_code == 1, result.output
    assert "error: the server did not start (uvicorn exited with status 3" in result.output


def test_serve_without_the_web_extra_says_how_to_install(bundle_dir, monkeypatch):
    serve = serve_cli()

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if not installed
    result = CliRunner().invoke(serve, ["--model", str(bundle_dir)])
    assert result.exit_code == 1
    assert "pip install 'segqc[serve]'" in result.output and "uvicorn" in result.output
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_segqc_serve_end_to_end(bundle_dir, tmp_path):
    """A real uvicorn server in a subprocess on a free loopback port: answers, survives bad input, stops."""
    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            serve_command(bundle_dir, "--port", str(port), "--max-upload-mb", "1"), stdout=log, stderr=log
        )
        try:
            wait_healthy(url, proc)
            rgb = random_rgb(50, 60, seed=3)
            good = httpx.post(f"{url}/v1/assess", files={"file": ("scan 1.png", encode(rgb))}, timeout=60)
            assert good.status_code == 200, good.text
            assert (good.json()["id"], good.json()["width"], good.json()["height"]) == ("scan 1", 60, 50)
            bad = httpx.post(f"{url}/v1/assess", files={"file": ("x.jpg", b"hello")}, timeout=60)
            assert bad.status_code == 415 and "not an image" in bad.json()["detail"]
            cut = httpx.post(f"{url}/v1/assess", files={"file": ("c.png", encode(rgb)[:300])}, timeout=60)
            assert cut.status_code == 422
            big = np.random.default_rng(0).integers(0, 256, 2 * 1024 * 1024, dtype=np.uint8).tobytes()
            try:
                over = httpx.post(f"{url}/v1/assess", files={"file": ("big.png", big)}, timeout=60)
                assert over.status_code == 413
            except httpx.HTTPError:
                pass  # the server may close the connection before the client has sent everything
            again = httpx.post(f"{url}/v1/assess", files={"file": ("scan 1.png", encode(rgb))}, timeout=60)
            assert good.headers["x-request-id"] == good.json()["request_id"]
            first, second = good.json(), again.json()
            assert first.pop("request_id") != second.pop("request_id")  # a fresh id per request
            assert second == first
            assert httpx.get(f"{url}/v1/model", timeout=10).json()["image_size"] == 32
            assert httpx.get(f"{url}/healthz", timeout=10).json() == {"status": "ok"}
        finally:
            code = stop(proc)
    output = log_path.read_text(errors="replace")
    # A clean shutdown; recent uvicorn versions re-raise the SIGTERM they handled, hence -15.
    assert code in (0, -signal.SIGTERM), output
    assert "Application shutdown complete" in output
    assert "segqc serve: model" in output and "Traceback" not in output

"""Who may use the service and what it records: HEAD /healthz, /docs without a CDN, the optional API
key, request ids, the audit log, and the reason and jaccard_lower fields of an answer."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from segqc.assess import assess_images
from segqc.errors import SegQCError
from segqc.service import app as service_app
from segqc.service import create_app
from segqc.service import middleware as service_middleware
from tests.service.conftest import (
    MAX_PIXELS,
    MAX_UPLOAD,
    encode,
    live_server,
    png_bomb,
    post_image,
    random_rgb,
    serve_cli,
)

KEY = "k3y-with-enough-entropy-4f9a1c"


def test_head_healthz_has_no_body(client):
    response = client.head("/healthz")
    assert response.status_code == 200 and response.content == b""


def test_answer_carries_reason_jaccard_lower_and_request_id(client, bundle):
    rgb = random_rgb(24, 30, seed=3)
    response = post_image(client, "r.png", encode(rgb))
    body = response.json()
    expected = assess_images(bundle, [rgb])[0]
    assert body["reason"] == expected.reason
    assert "jaccard_lower" in body and body["jaccard_lower"] == expected.jaccard_lower  # null if none
    assert body["request_id"] == response.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}", body["request_id"])
    assert client.get("/v1/model").headers["x-request-id"] != body["request_id"]


# -- /docs --------------------------------------------------------------------------------------------------


def _assets(html: str) -> list[str]:
    """URLs of the scripts, style sheets and icons a page loads."""
    return re.findall(r"<script[^>]*\bsrc=[\"']([^\"']+)", html) + re.findall(
        r"<link[^>]*\bhref=[\"']([^\"']+)", html
    )


def test_docs_load_nothing_from_the_internet(client):
    page = client.get("/docs")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assets = _assets(page.text)
    assert any(a.endswith(".js") for a in assets) and any(a.endswith(".css") for a in assets)
    for url in assets:
        assert not url.startswith(("http://", "https://", "//")), url
        served = client.get(url)
        assert served.status_code == 200 and len(served.content) > 100, url
    assert "validatorUrl" in page.text  # the online spec validator is off
    assert client.get("/redoc").status_code == 404  # ReDoc would load from a CDN
    assert client.get("/openapi.json").status_code == 200


def test_no_docs_rather_than_a_cdn_without_the_package(bundle, monkeypatch):
    from segqc.service import docs

    monkeypatch.setattr(docs, "swagger_ui_dir", lambda: None)
    with TestClient(create_app(bundle, warmup=False)) as client:
        assert client.get("/docs").status_code == 404
        assert client.get("/openapi.json").status_code == 200


@pytest.mark.browser
def test_docs_render_in_a_browser_offline(bundle):
    """Headless Chromium renders the routes on /docs and asks no other host for anything."""
    chromium = Path("/usr/bin/chromium")
    if not chromium.is_file():
        pytest.skip(f"{chromium} not found")
    sync_api = pytest.importorskip("playwright.sync_api")
    with live_server(create_app(bundle, warmup=False)) as url, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            requests, problems = [], []
            page.on("request", lambda req: requests.append(req.url))
            page.on("pageerror", lambda err: problems.append(str(err)))
            page.goto(f"{url}/docs")
            page.wait_for_selector(".opblock-summary-path[data-path='/v1/assess']", timeout=20_000)
        finally:
            browser.close()
    assert not problems
    assert requests and all(r.startswith(url) or r.startswith("data:") for r in requests), requests


# -- API key ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed(bundle):
    with TestClient(create_app(bundle, api_key=KEY, warmup=False)) as test_client:
        yield test_client


def test_api_key_is_required_everywhere_but_healthz(keyed):
    assert keyed.get("/healthz").status_code == 200
    assert keyed.head("/healthz").status_code == 200
    for method, path in [
        ("GET", "/v1/model"),
        ("GET", "/docs"),
        ("GET", "/openapi.json"),
        ("POST", "/v1/assess"),
    ]:
        response = keyed.request(method, path)
        assert response.status_code == 401, path
        assert "API key" in response.json()["detail"]
        assert response.headers["www-authenticate"] == "Bearer" and response.headers["x-request-id"]


def test_api_key_as_bearer_or_x_api_key(keyed):
    image = {"file": ("a.png", encode(random_rgb(10, 10)))}
    assert keyed.get("/v1/model", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert keyed.get("/v1/model", headers={"X-API-Key": KEY}).status_code == 200
    assert keyed.post("/v1/assess", files=image, headers={"X-API-Key": KEY}).status_code == 200
    for wrong in [KEY[:-1], KEY + "x", "", f"Basic {KEY}"]:
        assert keyed.get("/v1/model", headers={"X-API-Key": wrong}).status_code == 401
    assert keyed.get("/v1/model", headers={"Authorization": KEY}).status_code == 401  # no "Bearer "
    assert keyed.post("/v1/assess", files=image, headers={"X-API-Key": "nope"}).status_code == 401


def test_api_key_compared_in_constant_time(keyed, monkeypatch):
    calls = []
    real = service_middleware.hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(service_middleware.hmac, "compare_digest", spy)
    assert keyed.get("/v1/model", headers={"X-API-Key": "guess"}).status_code == 401
    assert calls == [(b"guess", KEY.encode())]


def test_api_key_from_a_file_or_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(service_middleware.API_KEY_ENV, raising=False)
    assert service_middleware.read_api_key() is None
    key_file = tmp_path / "key"
    key_file.write_text(f"  {KEY}\n")
    assert service_middleware.read_api_key(key_file) == KEY
    monkeypatch.setenv(service_middleware.API_KEY_ENV, "from-env")
    assert service_middleware.read_api_key() == "from-env"
    assert service_middleware.read_api_key(key_file) == KEY  # the file wins
    monkeypatch.setenv(service_middleware.API_KEY_ENV, " ")
    with pytest.raises(SegQCError, match="SEGQC_API_KEY is set but empty"):
        service_middleware.read_api_key()
    with pytest.raises(SegQCError, match="is empty"):
        create_app(object(), api_key="", warmup=False)  # type: ignore[arg-type]


def test_serve_refuses_an_empty_key_file(bundle_dir, tmp_path, monkeypatch):
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("started with an empty key file"))
    empty = tmp_path / "key"
    empty.write_text("\n")
    result = CliRunner().invoke(serve_cli(), ["--model", str(bundle_dir), "--api-key-file", str(empty)])
    assert result.exit_code == 1
    assert (
        result.output
        == f"error: {empty}: the API key file is empty; write the key into it, or drop the option\n"
    )
    missing = CliRunner().invoke(
        serve_cli(), ["--model", str(bundle_dir), "--api-key-file", str(tmp_path / "no")]
    )
    assert missing.exit_code == 1 and "cannot read the API key file" in missing.output


def test_serve_passes_the_key_and_audit_log(bundle_dir, tmp_path, serve_env):
    import uvicorn

    calls = []
    serve_env.setattr(uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    key_file, log = tmp_path / "key", tmp_path / "logs" / "audit.jsonl"
    key_file.write_text(KEY)
    args = ["--model", str(bundle_dir), "--api-key-file", str(key_file), "--audit-log", str(log)]
    result = CliRunner().invoke(serve_cli(), [*args, "--pixel-budget", "5000000", "--read-timeout", "3"])
    assert result.exit_code == 0, result.output
    assert "API key required" in result.output and "audit log" in result.output
    app = calls[-1][0]
    with TestClient(app) as client:
        assert client.get("/v1/model").status_code == 401
        info = client.get("/v1/model", headers={"X-API-Key": KEY}).json()["service"]
    assert info["pixel_budget"] == 5_000_000 and info["read_timeout"] == 3.0
    assert info["api_key_required"] and info["audit_log"]
    assert app.state.audit_log.path == log and log.is_file()

    result = CliRunner().invoke(serve_cli(), [*args, "--workers", "2"])
    assert result.exit_code == 0, result.output
    assert os.environ["SEGQC_SERVE_AUDIT_LOG"] == str(log.resolve())
    assert os.environ["SEGQC_API_KEY_FILE"] == str(key_file.resolve()) and "SEGQC_API_KEY" not in os.environ
    factory_app = service_app.create_app_from_env()
    with TestClient(factory_app) as client:
        assert client.get("/v1/model").status_code == 401
        assert client.get("/v1/model", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert factory_app.state.audit_log.path == log.resolve()


# -- audit log ----------------------------------------------------------------------------------------------


@pytest.fixture()
def audited(bundle, tmp_path):
    log = tmp_path / "audit.jsonl"
    app = create_app(bundle, max_upload_bytes=MAX_UPLOAD, max_pixels=MAX_PIXELS, audit_log=log, warmup=False)
    with TestClient(app) as test_client:
        yield test_client, log


def _records(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_audit_log_records_each_assessment(audited, bundle):
    client, log = audited
    rgb = random_rgb(26, 31, seed=4)
    data = encode(rgb)
    response = post_image(client, "case.png", data)
    body = response.json()
    (record,) = _records(log)
    assert record["request_id"] == body["request_id"] == response.headers["x-request-id"]
    assert record["input_sha256"] == hashlib.sha256(data).hexdigest()
    assert record["image_size"] == [26, 31]
    assert record["model_sha256"] == bundle.manifest_sha256 and len(record["model_sha256"]) == 64
    for key in ("predicted_jaccard", "jaccard_lower", "decision", "reason"):
        assert record[key] == body[key], key
    assert record["source"] == "serve" and record["status"] == 200
    assert 0 < record["latency_ms"] < 60_000 and record["time"].endswith("+00:00")


def test_audit_log_records_refused_uploads_with_a_hash(audited):
    client, log = audited
    cases = [
        ("notes.jpg", b"not an image\n" * 10, 415),
        ("cut.png", encode(random_rgb(30, 30))[:200], 422),
        ("bomb.png", png_bomb(), 413),
    ]
    for name, data, status in cases:
        assert post_image(client, name, data).status_code == status
    # No hash: refused before the upload was read (no file field, two files, too large a body).
    assert client.post("/v1/assess", data={"other": "x"}).status_code == 422
    two = [("file", ("a.png", b"a")), ("file", ("b.png", b"b"))]
    assert client.post("/v1/assess", files=two).status_code == 422
    records = _records(log)
    assert [(r["decision"], r["status"]) for r in records] == [("error", s) for _, _, s in cases]
    for record, (name, data, _) in zip(records, cases):
        assert record["input_sha256"] == hashlib.sha256(data).hexdigest()
        assert record["reason"].startswith(name) and record["predicted_jaccard"] is None
    assert records[2]["image_size"] is None  # the header was refused before its size was trusted


def test_audit_log_that_cannot_be_written_fails_closed(audited, monkeypatch):
    client, log = audited

    def broken(**fields):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(client.app.state.audit_log, "record", broken)
    response = post_image(client, "a.png", encode(random_rgb(10, 10)))
    assert response.status_code == 503
    assert "audit log cannot be written" in response.json()["detail"] and "decision" not in response.json()


def test_audit_log_that_cannot_be_opened_stops_the_start(bundle, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SegQCError, match=r"cannot create the audit log: .*file is a file, not a folder"):
        create_app(bundle, audit_log=blocker / "audit.jsonl", warmup=False)
    with pytest.raises(SegQCError, match=r"cannot open the audit log for appending \(Is a directory\)"):
        create_app(bundle, audit_log=tmp_path, warmup=False)

"""The service under load: the decoded-pixel budget (413/503), body-read timeouts (408) on a real
server, and one image per request (422)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from fastapi import HTTPException
from fastapi.testclient import TestClient

from segqc.service import assessor as service_assessor
from segqc.service import create_app
from segqc.service.budget import PixelBudget
from tests.service.conftest import assert_healthy, encode, live_server, post_image, random_rgb

# -- the budget on its own -----------------------------------------------------------------------------------


def test_budget_waits_for_room_then_grants_in_arrival_order():
    async def scenario():
        budget = PixelBudget(100, wait_s=5)
        order: list[str] = []

        async def job(name: str, pixels: int, hold_s: float) -> None:
            async with budget.hold(pixels, name):
                order.append(name)
                await asyncio.sleep(hold_s)

        first = asyncio.create_task(job("a", 70, 0.2))
        await asyncio.sleep(0.01)
        big = asyncio.create_task(job("big", 90, 0.0))  # waits for "a"
        await asyncio.sleep(0.01)
        small = asyncio.create_task(job("small", 20, 0.0))  # would fit now, but queues behind "big"
        await asyncio.gather(first, big, small)
        assert order == ["a", "big", "small"]
        assert budget.free == 100 and not budget._waiters

    asyncio.run(scenario())


def test_budget_full_for_too_long_is_503_with_retry_after():
    async def scenario():
        budget = PixelBudget(100, wait_s=0.1)
        async with budget.hold(80, "a"):
            with pytest.raises(HTTPException) as info:
                async with budget.hold(30, "b.png"):
                    pass
        assert info.value.status_code == 503
        assert info.value.headers == {"Retry-After": "1"}
        assert "b.png" in info.value.detail and "busy" in info.value.detail
        assert budget.free == 100 and not budget._waiters

    asyncio.run(scenario())


def test_image_larger_than_the_whole_budget_is_413():
    async def scenario():
        with pytest.raises(HTTPException) as info:
            async with PixelBudget(100).hold(101, "huge.png"):
                pass
        assert info.value.status_code == 413 and "budget of 100 pixels" in info.value.detail

    asyncio.run(scenario())


def test_a_cancelled_waiter_gives_its_place_back():
    async def scenario():
        budget = PixelBudget(100, wait_s=5)
        async with budget.hold(60, "a"):
            waiter = asyncio.create_task(budget.hold(60, "b").__aenter__())
            await asyncio.sleep(0.01)
            waiter.cancel()  # the client went away while queued
            with pytest.raises(asyncio.CancelledError):
                await waiter
        assert budget.free == 100 and not budget._waiters

    asyncio.run(scenario())


# -- the budget in the service -------------------------------------------------------------------------------


def _tracking(monkeypatch, delay: float = 0.0):
    """Wrap the decoder: returns a dict with the peak of decoded pixels alive at once."""
    real = service_assessor.decode_upload
    state = {"now": 0, "peak": 0}
    lock = threading.Lock()

    def decode(data, name, max_pixels):
        rgb = real(data, name, max_pixels)
        pixels = rgb.shape[0] * rgb.shape[1]
        with lock:
            state["now"] += pixels
            state["peak"] = max(state["peak"], state["now"])
        time.sleep(delay)  # a slow decode keeps the pixels in flight
        with lock:
            state["now"] -= pixels
        return rgb

    monkeypatch.setattr(service_assessor, "decode_upload", decode)
    return state


def test_concurrent_images_stay_within_the_budget(bundle, monkeypatch):
    """8 images of 2400 pixels at once, budget 5000: at most two are decoded at a time; all answered."""
    state = _tracking(monkeypatch, delay=0.1)
    app = create_app(bundle, pixel_budget=5000, queue_timeout=30, warmup=False)
    with TestClient(app) as client:
        images = [encode(random_rgb(40, 60, seed=i)) for i in range(8)]
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda d: post_image(client, "x.png", d).status_code, images))
        assert app.state.budget.free == 5000
        service = client.get("/v1/model").json()["service"]
    assert statuses == [200] * 8
    assert service["pixels_in_flight"] == 0 and 2400 <= service["pixels_in_flight_peak"] <= 5000
    assert state["peak"] <= 5000


def test_budget_full_answers_503_and_the_service_recovers(bundle, monkeypatch, tmp_path):
    state = _tracking(monkeypatch, delay=1.0)
    log = tmp_path / "audit.jsonl"
    app = create_app(bundle, pixel_budget=3000, queue_timeout=0.2, audit_log=log, warmup=False)
    with TestClient(app) as client:
        images = [encode(random_rgb(40, 60, seed=i)) for i in range(2)]
        with ThreadPoolExecutor(2) as pool:
            responses = list(pool.map(lambda d: post_image(client, "x.png", d), images))
        assert sorted(r.status_code for r in responses) == [200, 503]
        busy = next(r for r in responses if r.status_code == 503)
        assert busy.headers["retry-after"] == "1" and "busy" in busy.json()["detail"]
        assert post_image(client, "x.png", images[0]).status_code == 200  # room again
        assert_healthy(client)
    assert state["peak"] <= 3000
    refused = [r for r in map(json.loads, log.read_text().splitlines()) if r["decision"] == "error"]
    assert len(refused) == 1 and refused[0]["status"] == 503 and refused[0]["image_size"] == [40, 60]


def test_image_over_the_budget_is_413(bundle):
    with TestClient(create_app(bundle, pixel_budget=1000, warmup=False)) as client:
        response = post_image(client, "wide.png", encode(random_rgb(20, 60)))
        assert response.status_code == 413
        assert response.json()["detail"].startswith("wide.png: image of 1200 pixels")
        assert post_image(client, "ok.png", encode(random_rgb(20, 40))).status_code == 200


# -- one image per request -----------------------------------------------------------------------------------


def test_two_file_parts_are_refused(client):
    a, b = encode(random_rgb(10, 10, seed=1)), encode(random_rgb(12, 12, seed=2))
    response = client.post("/v1/assess", files=[("file", ("a.png", a)), ("file", ("b.png", b))])
    assert response.status_code == 422
    assert "got 2 form fields 'file'" in response.json()["detail"]
    mixed = client.post("/v1/assess", files={"file": ("a.png", a)}, data={"file": "text"})
    assert mixed.status_code == 422 and "2 form fields" in mixed.json()["detail"]
    assert post_image(client, "a.png", a).status_code == 200


# -- slow and stalled uploads on a real server ---------------------------------------------------------------


#: The start of a multipart body: the headers of the 'file' part.
_PART = b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'


def _head(port: int, length: int | None) -> bytes:
    lines = [
        "POST /v1/assess HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Content-Type: multipart/form-data; boundary=XyZ",
        f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _answer(sock: socket.socket, limit_s: float) -> tuple[bytes, bool]:
    """Everything the server sends until it closes the connection (or ``limit_s`` passes); closed?"""
    sock.settimeout(limit_s)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        return data, False
    return data, True


@pytest.fixture(scope="module")
def slow_server(bundle):
    app = create_app(bundle, read_timeout=0.5, upload_timeout=2.0, warmup=False)
    with live_server(app) as url:
        yield url


def test_stalled_upload_gets_408_and_the_connection_is_closed(slow_server):
    port = int(slow_server.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        start = time.monotonic()
        sock.sendall(_head(port, 100_000) + _PART + b"\x89PNG")  # then nothing more
        data, closed = _answer(sock, 10)
        elapsed = time.monotonic() - start
    assert data.startswith(b"HTTP/1.1 408"), data[:200]
    assert b"connection: close" in data.lower() and b"x-request-id" in data.lower()
    assert b"stalled: no data for 0.5 s" in data
    assert closed and 0.4 < elapsed < 5
    assert httpx.get(f"{slow_server}/healthz").status_code == 200


def test_headers_without_any_body_get_408(slow_server):
    port = int(slow_server.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(_head(port, None))  # chunked, and not one chunk
        data, closed = _answer(sock, 10)
    assert data.startswith(b"HTTP/1.1 408") and closed


def test_trickling_upload_hits_the_total_deadline(slow_server):
    """One byte every 0.1 s never trips the 0.5 s pause limit, but the body is not in after 2 s."""
    port = int(slow_server.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        start = time.monotonic()
        sock.sendall(_head(port, 100_000) + _PART)  # then the file's bytes, one at a time
        sock.settimeout(0.1)
        data = b""
        for _ in range(100):  # at most 10 s
            try:
                sock.sendall(b"A")
            except OSError:  # the server closed the connection
                break
            try:
                data += sock.recv(65536)
            except TimeoutError:
                continue
            if b"\r\n\r\n{" in data and data.endswith(b"}"):
                break
        elapsed = time.monotonic() - start
    assert data.startswith(b"HTTP/1.1 408"), data[:200]
    assert b"did not arrive within 2 s" in data
    assert 1.8 < elapsed < 6
    assert httpx.get(f"{slow_server}/healthz").status_code == 200


def test_a_normal_upload_is_not_affected_by_the_timeouts(slow_server):
    response = httpx.post(
        f"{slow_server}/v1/assess", files={"file": ("a.png", encode(random_rgb(20, 20)))}, timeout=30
    )
    assert response.status_code == 200, response.text

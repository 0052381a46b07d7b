"""Tests of segqc.data.download against a local HTTP server on 127.0.0.1 serving tiny ISIC-like archives."""

from __future__ import annotations

import hashlib
import io
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from segqc.cli.download import download_command
from segqc.data.download import (
    ISIC2017_MD5,
    ISIC2017_PARTS,
    OFFICIAL_BASE_URL,
    download_isic2017,
    resolve_parts,
)
from segqc.data.readers import find_pairs
from segqc.errors import DataError, UnknownNameError

# Distinct ids per split: the readers key pairs by id across all splits.
IDS = {
    "Training": ("ISIC_0000000", "ISIC_0000001"),
    "Validation": ("ISIC_0001000", "ISIC_0001001"),
    "Test_v2": ("ISIC_0002000", "ISIC_0002001"),
}
VAL_GT = "ISIC-2017_Validation_Part1_GroundTruth"
TRAIN_DATA = "ISIC-2017_Training_Data"
TRAIN_GT = "ISIC-2017_Training_Part1_GroundTruth"


def _jpeg(shade: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), (shade, 80, 160)).save(buf, format="JPEG")
    return buf.getvalue()


def _png_mask() -> bytes:
    img = Image.new("L", (8, 6), 0)
    img.paste(255, (2, 2, 6, 5))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _zip(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _members(stem: str, layout: str = "official") -> dict[str, bytes]:
    """Archive members for one part: images (+ superpixels + metadata CSV) or segmentation masks."""
    split = stem.removeprefix("ISIC-2017_").split("_")[0] if "Test_v2" not in stem else "Test_v2"
    files: dict[str, bytes] = {}
    for i, id_ in enumerate(IDS[split]):
        if stem.endswith("_Data"):
            files[f"{id_}.jpg"] = _jpeg(40 * i)
            files[f"{id_}_superpixels.png"] = _png_mask()
        else:
            files[f"{id_}_segmentation.png"] = _png_mask()
    if layout == "flat":
        return {**files, f"{stem}_metadata.csv": b"image_id,age\n"}
    members = {f"{stem}/{name}": data for name, data in files.items()}
    members[f"__MACOSX/{stem}/._{next(iter(files))}"] = b"\x00\x05\x16\x07junk"
    members[f"{stem}/.DS_Store"] = b"junk"
    if layout == "official":
        members[f"{stem}/{stem}_metadata.csv"] = b"image_id,age\n"
    else:  # "root_csv": the metadata file beside the folder rather than in it
        members[f"{stem}_metadata.csv"] = b"image_id,age\n"
    return members


@dataclass
class FakeServer:
    """State shared with the request handler: files served, request log, and failure injection."""

    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, path, Range)
    break_requests: int = 0  # the next N GETs send half of their body, then close the connection
    stall_requests: int = 0  # the next N GETs send their headers, then wait past the client's timeout
    ignore_range: bool = False  # answer ranged GETs with 200 and the whole file
    url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def gets(self) -> list[str | None]:
        return [rng for method, _, rng in self.requests if method == "GET"]


def _handler(state: FakeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # one request per connection: a close is the end of the body

        def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
            pass

        def do_HEAD(self) -> None:
            self._serve(head=True)

        def do_GET(self) -> None:
            self._serve(head=False)

        def _serve(self, head: bool) -> None:
            rng = self.headers.get("Range")
            with state.lock:
                state.requests.append((self.command, self.path, rng))
                data = state.files.get(self.path.lstrip("/"))
                broken = not head and state.break_requests > 0
                stalled = not head and not broken and state.stall_requests > 0
                if broken:
                    state.break_requests -= 1
                if stalled:
                    state.stall_requests -= 1
            if data is None:
                self.send_error(404)
                return
            start = 0
            if rng and not state.ignore_range:
                start = int(rng.removeprefix("bytes=").split("-")[0])
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if head:
                return
            if stalled:
                self.wfile.flush()
                time.sleep(0.6)
                return
            self.wfile.write(body[: len(body) // 2] if broken else body)

    return Handler


@pytest.fixture
def server() -> Iterator[FakeServer]:
    state = FakeServer()
    for stem in ISIC2017_PARTS:
        state.files[f"2017/{stem}.zip"] = _zip(_members(stem))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/2017/"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _get(server: FakeServer, to: Path, **kwargs: object) -> Path:
    kwargs = {"base_url": server.url, "progress": False, "retry_wait": 0.0, "timeout": 5.0, **kwargs}
    return download_isic2017(to, **kwargs)  # type: ignore[arg-type]


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_full_download_extracts_the_official_layout(server: FakeServer, tmp_path: Path) -> None:
    root = _get(server, tmp_path / "isic")
    assert root == tmp_path / "isic"
    assert sorted(p.name for p in root.iterdir()) == sorted(ISIC2017_PARTS)  # no .downloads, no temp folders
    for split, (data, gt) in {
        "Training": (TRAIN_DATA, TRAIN_GT),
        "Validation": ("ISIC-2017_Validation_Data", VAL_GT),
        "Test_v2": ("ISIC-2017_Test_v2_Data", "ISIC-2017_Test_v2_Part1_GroundTruth"),
    }.items():
        for id_ in IDS[split]:
            with Image.open(root / data / f"{id_}.jpg") as img:
                assert img.size == (8, 6)
            with Image.open(root / gt / f"{id_}_segmentation.png") as img:
                assert img.mode == "L"
        assert (root / data / f"{data}_metadata.csv").is_file()
    assert not list(root.rglob("__MACOSX")) and not list(root.rglob(".DS_Store"))
    pairs = find_pairs(root)
    assert len(pairs) == 6 and all(p.mask is not None for p in pairs.values())
    assert len(server.gets()) == 6 and all(rng is None for rng in server.gets())


@pytest.mark.parametrize("layout", ["flat", "root_csv"])
def test_other_archive_layouts_land_in_the_same_place(
    server: FakeServer, tmp_path: Path, layout: str
) -> None:
    server.files[f"2017/{VAL_GT}.zip"] = _zip(_members(VAL_GT, layout))
    _get(server, tmp_path, parts=[VAL_GT])
    names = sorted(p.name for p in (tmp_path / VAL_GT).iterdir())
    assert names == sorted([f"{VAL_GT}_metadata.csv"] + [f"{i}_segmentation.png" for i in IDS["Validation"]])


def test_broken_connection_is_resumed_with_a_range_request(server: FakeServer, tmp_path: Path) -> None:
    size = len(server.files[f"2017/{VAL_GT}.zip"])
    server.break_requests = 1
    _get(server, tmp_path, parts=[VAL_GT], progress=True)  # the bars too: one restarts at the offset
    assert server.gets() == [None, f"bytes={size // 2}-"]
    assert sorted(p.name for p in (tmp_path / VAL_GT).glob("ISIC_*_segmentation.png")) == [
        f"{i}_segmentation.png" for i in IDS["Validation"]
    ]
    assert not (tmp_path / ".downloads").exists()


def test_persistent_breakage_keeps_the_part_file_and_a_later_run_resumes(
    server: FakeServer, tmp_path: Path
) -> None:
    archive = server.files[f"2017/{VAL_GT}.zip"]
    server.break_requests = 100
    with pytest.raises(DataError) as info:
        _get(server, tmp_path, parts=[VAL_GT], retries=2)
    part = tmp_path / ".downloads" / f"{VAL_GT}.zip.part"
    kept = part.stat().st_size
    assert len(server.gets()) == 3  # first attempt + 2 retries, each resuming
    assert 0 < kept < len(archive) and part.read_bytes() == archive[:kept]
    message = str(info.value)
    assert f"{server.url}{VAL_GT}.zip" in message and f"{kept} bytes" in message and str(part) in message
    assert not (tmp_path / VAL_GT).exists()

    server.break_requests = 0
    server.requests.clear()
    _get(server, tmp_path, parts=[VAL_GT])
    assert server.gets() == [f"bytes={kept}-"]
    assert len(list((tmp_path / VAL_GT).glob("ISIC_*_segmentation.png"))) == 2
    assert not part.exists()


def test_server_ignoring_range_restarts_cleanly(server: FakeServer, tmp_path: Path) -> None:
    part = tmp_path / ".downloads" / f"{VAL_GT}.zip.part"
    part.parent.mkdir()
    part.write_bytes(b"stale bytes from another file")
    server.ignore_range = True
    _get(server, tmp_path, parts=[VAL_GT])
    assert server.gets() == ["bytes=29-"]  # answered with 200 and the whole file
    assert len(list((tmp_path / VAL_GT).glob("ISIC_*_segmentation.png"))) == 2


def test_complete_part_file_is_accepted_on_416(server: FakeServer, tmp_path: Path) -> None:
    archive = server.files[f"2017/{VAL_GT}.zip"]
    part = tmp_path / ".downloads" / f"{VAL_GT}.zip.part"
    part.parent.mkdir()
    part.write_bytes(archive)
    _get(server, tmp_path, parts=[VAL_GT])
    assert server.gets() == [f"bytes={len(archive)}-"]
    assert len(list((tmp_path / VAL_GT).glob("ISIC_*_segmentation.png"))) == 2


def test_stalled_server_times_out_and_is_retried(server: FakeServer, tmp_path: Path) -> None:
    server.stall_requests = 1
    _get(server, tmp_path, parts=[VAL_GT], timeout=0.2)
    assert len(server.gets()) == 2
    assert len(list((tmp_path / VAL_GT).glob("ISIC_*_segmentation.png"))) == 2


def _flip_inside(archive: bytes, payload: bytes) -> bytes:
    """``archive`` with one byte of a stored member's data changed: its CRC-32 no longer matches."""
    at = archive.index(payload) + len(payload) // 2
    return archive[:at] + bytes([archive[at] ^ 0xFF]) + archive[at + 1 :]


@pytest.mark.parametrize("corruption", ["not_a_zip", "bad_crc", "truncated"])
def test_corrupt_archive_is_reported_and_nothing_else_is_touched(
    server: FakeServer, tmp_path: Path, corruption: str
) -> None:
    _get(server, tmp_path, parts=[TRAIN_DATA])
    before = _snapshot(tmp_path / TRAIN_DATA)
    good = _zip(_members(TRAIN_GT), zipfile.ZIP_STORED)
    bad = {
        "not_a_zip": b"<html>Access denied</html>" * 20,
        "bad_crc": _flip_inside(good, _png_mask()),
        "truncated": good[: len(good) // 2],
    }[corruption]
    server.files[f"2017/{TRAIN_GT}.zip"] = bad
    server.requests.clear()

    with pytest.raises(DataError) as info:
        _get(server, tmp_path, parts=["training"])  # the Training images are skipped, already there
    archive = tmp_path / ".downloads" / f"{TRAIN_GT}.zip"
    assert str(archive) in str(info.value) and "delete" in str(info.value)
    assert archive.read_bytes() == bad  # kept for inspection, complete as served
    assert not (tmp_path / TRAIN_GT).exists()
    assert _snapshot(tmp_path / TRAIN_DATA) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [".downloads", TRAIN_DATA]  # no temp folder left
    assert server.gets() == [None]

    # Running again neither re-downloads nor extracts the bad archive: the error says what to do.
    with pytest.raises(DataError, match="delete"):
        _get(server, tmp_path, parts=[TRAIN_GT])
    assert server.gets() == [None]


def test_rerun_is_idempotent_and_does_not_touch_the_network(server: FakeServer, tmp_path: Path) -> None:
    _get(server, tmp_path)
    before = _snapshot(tmp_path)
    count = len(server.requests)
    _get(server, tmp_path)
    _get(server, tmp_path, parts=["validation"])
    assert len(server.requests) == count == 6
    assert _snapshot(tmp_path) == before


def test_keep_archives_reuses_the_archive_without_downloading(server: FakeServer, tmp_path: Path) -> None:
    _get(server, tmp_path, parts=[VAL_GT], keep_archives=True)
    assert (tmp_path / ".downloads" / f"{VAL_GT}.zip").is_file()
    # A deleted folder is re-extracted from the kept archive, with no request.
    for p in (tmp_path / VAL_GT).iterdir():
        p.unlink()
    (tmp_path / VAL_GT).rmdir()
    _get(server, tmp_path, parts=[VAL_GT], keep_archives=True)
    assert len(server.requests) == 1
    assert len(list((tmp_path / VAL_GT).glob("ISIC_*_segmentation.png"))) == 2


@pytest.mark.parametrize(
    "evil",
    ["../evil.png", f"{VAL_GT}/../../evil.png", "/tmp/segqc-evil.png", "..\\evil.png", "C:/evil.png"],
)
def test_zip_slip_member_is_rejected(server: FakeServer, tmp_path: Path, evil: str) -> None:
    members = _members(VAL_GT)
    members[evil] = b"pwned"
    server.files[f"2017/{VAL_GT}.zip"] = _zip(members)
    dest = tmp_path / "isic"
    with pytest.raises(DataError, match="outside the extraction folder") as info:
        _get(server, dest, parts=[VAL_GT])
    assert repr(evil) in str(info.value)
    assert not (dest / VAL_GT).exists()
    assert not (tmp_path / "evil.png").exists() and not Path("/tmp/segqc-evil.png").exists()
    assert sorted(p.name for p in dest.iterdir()) == [".downloads"]


def test_unexpected_archive_content_is_refused(server: FakeServer, tmp_path: Path) -> None:
    server.files[f"2017/{VAL_GT}.zip"] = _zip({"readme.txt": b"nothing here"})
    with pytest.raises(DataError, match="not the expected ISIC 2017 archive"):
        _get(server, tmp_path, parts=[VAL_GT])
    assert not (tmp_path / VAL_GT).exists()


def test_foreign_folder_is_never_overwritten(server: FakeServer, tmp_path: Path) -> None:
    (tmp_path / VAL_GT).mkdir()
    (tmp_path / VAL_GT / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="move it away"):
        _get(server, tmp_path, parts=[VAL_GT])
    assert (tmp_path / VAL_GT / "notes.txt").read_text() == "mine"
    assert server.requests == []


def test_http_404_fails_at_once_and_other_parts_still_complete(server: FakeServer, tmp_path: Path) -> None:
    del server.files[f"2017/{TRAIN_GT}.zip"]
    with pytest.raises(DataError, match="HTTP 404") as info:
        _get(server, tmp_path, parts=["training", "validation"])
    assert f"{TRAIN_GT}.zip" in str(info.value)
    assert len(server.gets()) == 4  # each part asked once: no retry of the 404
    assert {p.name for p in tmp_path.iterdir()} == {TRAIN_DATA, "ISIC-2017_Validation_Data", VAL_GT}


def test_checksums_are_checked_before_the_archive_is_accepted(server: FakeServer, tmp_path: Path) -> None:
    archive = server.files[f"2017/{VAL_GT}.zip"]
    with pytest.raises(DataError, match="MD5"):
        _get(server, tmp_path, parts=[VAL_GT], checksums={VAL_GT: "0" * 32})
    assert (tmp_path / ".downloads" / f"{VAL_GT}.zip.part").read_bytes() == archive
    assert not (tmp_path / VAL_GT).exists()
    (tmp_path / ".downloads" / f"{VAL_GT}.zip.part").unlink()
    _get(server, tmp_path, parts=[VAL_GT], checksums={VAL_GT: hashlib.md5(archive).hexdigest()})
    assert (tmp_path / VAL_GT).is_dir()


def test_official_checksums_apply_to_the_official_host_only(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen: dict[str, str | None] = {}

    def fake_get_part(name: str, *args: object, url: str, md5: str | None, **kwargs: object) -> None:
        seen[url] = md5

    monkeypatch.setattr("segqc.data.download._get_part", fake_get_part)  # no network in this test
    download_isic2017(tmp_path, parts=[VAL_GT], progress=False)
    assert seen == {f"{OFFICIAL_BASE_URL}{VAL_GT}.zip": ISIC2017_MD5[VAL_GT]}
    seen.clear()
    download_isic2017(tmp_path, parts=[VAL_GT], base_url="http://127.0.0.1:9/mirror", progress=False)
    assert seen == {f"http://127.0.0.1:9/mirror/{VAL_GT}.zip": None}
    seen.clear()
    download_isic2017(tmp_path, parts=[VAL_GT], checksums={}, progress=False)
    assert seen == {f"{OFFICIAL_BASE_URL}{VAL_GT}.zip": None}


def test_resolve_parts() -> None:
    assert resolve_parts(None) == ISIC2017_PARTS
    assert resolve_parts(["test", "ISIC-2017_training_data.zip"]) == (
        TRAIN_DATA,
        "ISIC-2017_Test_v2_Data",
        "ISIC-2017_Test_v2_Part1_GroundTruth",
    )
    assert resolve_parts("val") == ("ISIC-2017_Validation_Data", VAL_GT)
    with pytest.raises(UnknownNameError, match="unknown ISIC 2017 part 'Part3'"):
        resolve_parts(["Part3"])
    with pytest.raises(UnknownNameError):
        resolve_parts([])


def test_cli_command(server: FakeServer, tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["isic2017", "--to", str(tmp_path), "--base-url", server.url, "--no-progress"]
    result = runner.invoke(download_command, [*args, "--parts", "validation,test"])
    assert result.exit_code == 0, result.output
    assert "ready in" in result.output
    assert {p.name for p in tmp_path.iterdir()} == set(ISIC2017_PARTS[2:])

    result = runner.invoke(download_command, [*args, "--parts", "nonsense"])
    assert result.exit_code == 1 and "unknown ISIC 2017 part" in result.output

    del server.files[f"2017/{TRAIN_DATA}.zip"]
    result = runner.invoke(download_command, [*args, "--parts", TRAIN_DATA, "--retries", "0"])
    assert result.exit_code == 1 and "HTTP 404" in result.output and "Traceback" not in result.output

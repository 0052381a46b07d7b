"""Download the official ISIC 2017 Part 1 archives and extract them into the layout the readers expect.

(Longer than the ~400 lines segqc aims for: one concern, a resumable, verified, atomic download and
extraction, whose steps share their error handling and progress reporting.)

``download_isic2017(DIR)`` leaves::

    DIR/ISIC-2017_Training_Data/ISIC_*.jpg
    DIR/ISIC-2017_Training_Part1_GroundTruth/ISIC_*_segmentation.png
    DIR/ISIC-2017_Validation_Data/...             DIR/ISIC-2017_Validation_Part1_GroundTruth/...
    DIR/ISIC-2017_Test_v2_Data/...                DIR/ISIC-2017_Test_v2_Part1_GroundTruth/...

How it stays safe to interrupt and re-run:

* each archive is fetched into ``DIR/.downloads/NAME.zip.part``, resumed with an HTTP ``Range`` request when
  that file exists, and renamed to ``NAME.zip`` only once its size (and MD5, where known) checks out;
* connection errors are retried with backoff, each retry resuming from the bytes on disk; when the retries
  run out the ``.part`` file is kept so that the next run resumes;
* an archive is extracted into a temporary folder inside ``DIR`` which one ``os.replace`` moves into place,
  so ``DIR/NAME`` is either absent or complete; members that would land outside it are refused;
* parts whose folder already holds ISIC files are skipped without any network access.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import re
import shutil
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from segqc.errors import DataError, SettingsError, UnknownNameError

__all__ = [
    "ISIC2017_MD5",
    "ISIC2017_PARTS",
    "OFFICIAL_BASE_URL",
    "download_isic2017",
    "resolve_parts",
]

log = logging.getLogger(__name__)

#: Where the ISIC challenge hosts its 2017 archives (``{base}/{part}.zip``).
OFFICIAL_BASE_URL = "https://isic-challenge-data.s3.amazonaws.com/2017/"

#: The six Part 1 (lesion segmentation) archives, by stem; each extracts into ``DIR/<stem>/``.
ISIC2017_PARTS: tuple[str, ...] = (
    "ISIC-2017_Training_Data",
    "ISIC-2017_Training_Part1_GroundTruth",
    "ISIC-2017_Validation_Data",
    "ISIC-2017_Validation_Part1_GroundTruth",
    "ISIC-2017_Test_v2_Data",
    "ISIC-2017_Test_v2_Part1_GroundTruth",
)

#: MD5 of the official archives. ISIC publishes no checksum next to the files; these are the values that
#: several independent public downloaders check the S3 files against. They have not been recomputed here
#: (no internet access when this was written), hence the ``checksums={}`` / ``--no-checksum`` escape hatch.
ISIC2017_MD5: dict[str, str] = {
    "ISIC-2017_Training_Data": "a14a7e622c67a358797ae59abb8a0b0c",
    "ISIC-2017_Training_Part1_GroundTruth": "77fdbeb6fbec4139937224416b250f4c",
    "ISIC-2017_Validation_Data": "8d6419d942112f709894c0d82f6c9038",
    "ISIC-2017_Validation_Part1_GroundTruth": "64d3e68fa2deeb8a5e89aa8dec2efd44",
    "ISIC-2017_Test_v2_Data": "5f6a0b5e1f2972bd1f5ea02680489f09",
    "ISIC-2017_Test_v2_Part1_GroundTruth": "b1742de6bd257faca3b2b21a4aa3b781",
}

#: Short names accepted by ``parts=``: a split name selects its images and its ground truth.
_ALIASES: dict[str, tuple[str, ...]] = {
    "training": ISIC2017_PARTS[0:2],
    "train": ISIC2017_PARTS[0:2],
    "validation": ISIC2017_PARTS[2:4],
    "val": ISIC2017_PARTS[2:4],
    "test": ISIC2017_PARTS[4:6],
}

_IMAGE_FILE = re.compile(r"^ISIC_\d+\.jpg$", re.IGNORECASE)
_MASK_FILE = re.compile(r"^ISIC_\d+_segmentation\.png$", re.IGNORECASE)
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)\s*$", re.IGNORECASE)
_DRIVE = re.compile(r"^[A-Za-z]:")

_CHUNK = 1 << 20
_MAX_BACKOFF_S = 30.0
_RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
# Network failures worth another (resuming) attempt; HTTPError is a URLError and is sorted out first.
_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError)
_JUNK_DIRS = frozenset({"__MACOSX"})
_JUNK_FILES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})
_USER_AGENT = "segqc-download/1 (+python-urllib)"


class _Interrupted(Exception):
    """A transfer that stopped early for a reason worth another attempt (the ``.part`` file is kept)."""


def resolve_parts(parts: Sequence[str] | None) -> tuple[str, ...]:
    """Archive stems selected by ``parts``, in the official order.

    Args:
        parts: archive stems (``"ISIC-2017_Validation_Data"``, a trailing ``.zip`` and any case accepted) or
            split names (``training``/``train``, ``validation``/``val``, ``test``: images and ground truth).
            ``None`` selects all six archives.

    Raises:
        UnknownNameError: a name that is neither an archive stem nor a split, or an empty selection.
    """
    if parts is None:
        return ISIC2017_PARTS
    if isinstance(parts, str):  # a bare string would otherwise be read one character at a time
        parts = [parts]
    by_lower = {name.lower(): name for name in ISIC2017_PARTS}
    chosen: set[str] = set()
    for raw in parts:
        key = raw.strip().lower().removesuffix(".zip")
        if key in by_lower:
            chosen.add(by_lower[key])
        elif key in _ALIASES:
            chosen.update(_ALIASES[key])
        else:
            raise UnknownNameError(
                f"unknown ISIC 2017 part {raw!r}; choose from {', '.join(ISIC2017_PARTS)} "
                f"or a split: {', '.join(sorted(_ALIASES))}"
            )
    if not chosen:
        raise UnknownNameError("no ISIC 2017 part selected; pass parts=None for all of them")
    return tuple(name for name in ISIC2017_PARTS if name in chosen)


def download_isic2017(
    to: str | Path,
    *,
    parts: Sequence[str] | None = None,
    base_url: str = OFFICIAL_BASE_URL,
    retries: int = 3,
    timeout: float = 60.0,
    progress: bool = True,
    checksums: Mapping[str, str] | None = None,
    keep_archives: bool = False,
    retry_wait: float = 1.0,
) -> Path:
    """Download and extract the ISIC 2017 Part 1 archives into ``to``, resuming whatever is already there.

    Every selected part is attempted even when an earlier one fails; the failures are reported together at
    the end. Parts already extracted are skipped without network access, so re-running is cheap.

    Args:
        to: destination folder (created if needed); the archives go to ``to/.downloads/`` meanwhile.
        parts: which archives, see :func:`resolve_parts`; ``None`` for all six.
        base_url: folder URL holding ``<part>.zip``; point it at a mirror or a test server.
        retries: further attempts after a failed one, each resuming from the bytes already on disk.
        timeout: socket timeout in seconds, for connecting and for each read.
        progress: show a tqdm progress bar per archive.
        checksums: expected MD5 (hex) per part stem, checked before an archive is accepted. ``None``
            uses :data:`ISIC2017_MD5` when ``base_url`` is the official host and no check elsewhere;
            ``{}`` disables the check.
        keep_archives: keep ``to/.downloads/<part>.zip`` after extraction instead of deleting it.
        retry_wait: first backoff in seconds, doubled after each failed attempt (capped at 30 s).

    Returns:
        ``Path(to)``, ready for :func:`segqc.data.readers.find_pairs`.

    Raises:
        DataError: a download that failed after its retries (its ``.part`` file is kept for the next run),
            an HTTP error such as 404, a size or checksum mismatch, or a corrupt or unexpected archive.
        UnknownNameError: an unknown name in ``parts``.
    """
    names = resolve_parts(parts)
    if retries < 0:
        raise SettingsError(f"retries must be >= 0, got {retries}")
    if timeout <= 0:
        raise SettingsError(f"timeout must be > 0, got {timeout}")
    if checksums is None:
        checksums = ISIC2017_MD5 if base_url.rstrip("/") == OFFICIAL_BASE_URL.rstrip("/") else {}
    root = Path(to).expanduser()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"{root}: cannot create the destination folder ({err})") from None
    downloads = root / ".downloads"

    failures: list[str] = []
    for name in names:
        try:
            _get_part(
                name,
                root,
                downloads,
                url=f"{base_url.rstrip('/')}/{name}.zip",
                md5=checksums.get(name),
                retries=retries,
                timeout=timeout,
                retry_wait=retry_wait,
                progress=progress,
                keep_archive=keep_archives,
            )
        except DataError as err:
            failures.append(str(err))
            if name != names[-1]:  # reported in full at the end; say so now too, a download can be long
                log.warning("%s; continuing with the other archives", err)
    with contextlib.suppress(OSError):  # drop the scratch folder once nothing in it is needed any more
        downloads.rmdir()
    if len(failures) == 1:
        raise DataError(failures[0])
    if failures:
        lines = "\n".join(f"- {msg}" for msg in failures)
        raise DataError(f"{len(failures)} of {len(names)} ISIC 2017 archives failed:\n{lines}")
    return root


def _get_part(
    name: str,
    root: Path,
    downloads: Path,
    *,
    url: str,
    md5: str | None,
    retries: int,
    timeout: float,
    retry_wait: float,
    progress: bool,
    keep_archive: bool,
) -> None:
    """Download (unless done), verify and extract one archive into ``root/name``."""
    pattern = _MASK_FILE if "GroundTruth" in name else _IMAGE_FILE
    target = root / name
    if target.is_dir():
        entries = list(target.iterdir())
        if any(pattern.match(p.name) for p in entries):
            log.info("%s: already extracted, skipped", target)
            return
        if entries:  # never overwrite a folder holding something we did not put there
            raise DataError(
                f"{target}: folder exists but holds no {pattern.pattern} files; move it away to download "
                f"{name} again"
            )
    archive = downloads / f"{name}.zip"
    if not archive.is_file():
        downloads.mkdir(parents=True, exist_ok=True)
        _download(
            url,
            archive,
            md5=md5,
            retries=retries,
            timeout=timeout,
            retry_wait=retry_wait,
            progress=progress,
        )
    _extract(archive, target, pattern)
    if not keep_archive:
        archive.unlink()


def _download(
    url: str,
    final: Path,
    *,
    md5: str | None,
    retries: int,
    timeout: float,
    retry_wait: float,
    progress: bool,
) -> None:
    """Fetch ``url`` into ``final`` through ``final.part``, resuming and retrying; rename when verified."""
    part = final.with_name(final.name + ".part")
    failures = 0
    while True:
        offset = part.stat().st_size if part.exists() else 0
        try:
            total = _fetch(url, part, offset, timeout=timeout, progress=progress, desc=final.stem)
            break
        except _Interrupted as err:
            failures += 1
            kept = part.stat().st_size if part.exists() else 0
            if failures > retries:
                resume = (
                    f"{kept} bytes are kept in {part} and the next run resumes from there"
                    if kept
                    else "nothing was downloaded"
                )
                raise DataError(
                    f"{url}: download failed after {failures} attempts ({err}); {resume}"
                ) from None
            wait = min(retry_wait * 2 ** (failures - 1), _MAX_BACKOFF_S)
            log.warning("%s: %s; retrying from byte %d in %.1f s", url, err, kept, wait)
            time.sleep(wait)

    size = part.stat().st_size
    if total is None:
        log.warning("%s: the server sent no size; %d bytes could not be checked for completeness", url, size)
    elif size != total:  # the transfer code stops at the announced size, so this is a local inconsistency
        raise DataError(f"{part}: {size} bytes on disk but the server announced {total}; delete it to retry")
    if md5:
        digest = _md5(part)
        if digest != md5.lower():
            raise DataError(
                f"{part}: MD5 {digest} does not match the expected {md5} for {url}; delete the file to "
                "download it again (or skip the check with checksums={} / --no-checksum)"
            )
    os.replace(part, final)  # atomic: NAME.zip only ever exists complete


def _fetch(url: str, part: Path, offset: int, *, timeout: float, progress: bool, desc: str) -> int | None:
    """One HTTP attempt appending to ``part`` from ``offset``; returns the full size (``None`` if unknown).

    Raises:
        _Interrupted: a network error, a retryable HTTP status or a short body (bytes written are kept).
        DataError: an HTTP error that another attempt will not fix (403, 404, ...).
    """
    headers = {"User-Agent": _USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as err:
        with err:
            if err.code == 416 and offset:
                # Nothing left after ``offset``: the .part is complete, unless it is longer than the file.
                total = _content_range(err.headers.get("Content-Range", ""))[2] or _head_size(url, timeout)
                if total is None or total == offset:
                    return offset
                part.unlink()
                raise _Interrupted(
                    f"{part.name} holds {offset} bytes but the file has {total}; restarting"
                ) from None
            if err.code in _RETRY_STATUS:
                raise _Interrupted(f"HTTP {err.code} {err.reason}") from None
            raise DataError(f"{url}: HTTP {err.code} {err.reason}") from None
    except _NETWORK_ERRORS as err:
        raise _Interrupted(f"{type(err).__name__}: {err}") from None
    except ValueError as err:  # urllib's answer to a malformed URL or an unknown scheme
        raise DataError(f"{url}: not a usable URL ({err})") from None

    with response:
        if response.status == 206:
            start, _, total = _content_range(response.headers.get("Content-Range", ""))
            if start != offset:  # not the range we asked for: start the file over on the next attempt
                part.unlink(missing_ok=True)
                raise _Interrupted(f"server resumed at byte {start}, not {offset}; restarting")
            mode = "ab"
        else:  # a 200 answers with the whole file, e.g. from a server that ignores Range: start over
            offset, total, mode = 0, None, "wb"
        length = response.headers.get("Content-Length")
        body = int(length) if length and length.strip().isdigit() else None
        if total is None and body is not None:
            total = offset + body
        received = 0
        bar = tqdm(
            total=total,
            initial=offset,
            desc=desc,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            disable=not progress,
            dynamic_ncols=True,
        )
        with bar, open(part, mode) as fh:
            try:
                while chunk := response.read(_CHUNK):
                    fh.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            except _NETWORK_ERRORS as err:
                raise _Interrupted(f"connection lost at byte {offset + received} ({err})") from None
    # http.client does not raise on a body cut short of its Content-Length: compare the counts ourselves.
    if total is not None and offset + received < total:
        raise _Interrupted(f"connection closed at byte {offset + received} of {total}")
    return total


def _content_range(value: str) -> tuple[int | None, int | None, int | None]:
    """``(start, end, total)`` of a ``Content-Range`` header; ``None`` for what it does not say."""
    match = _CONTENT_RANGE.match(value or "")
    if not match:
        return None, None, None
    start, end, total = match.groups()
    return (
        int(start) if start else None,
        int(end) if end else None,
        int(total) if total and total != "*" else None,
    )


def _head_size(url: str, timeout: float) -> int | None:
    """``Content-Length`` from a HEAD request, ``None`` when the server does not tell."""
    request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": _USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
    except _NETWORK_ERRORS:
        return None
    return int(length) if length and length.strip().isdigit() else None


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while block := fh.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _member_path(info: zipfile.ZipInfo, archive: Path) -> PurePosixPath | None:
    """Relative path of a member, ``None`` for folders and junk; refuses paths escaping the target."""
    raw = info.filename
    name = raw.replace("\\", "/")  # zips made on Windows may use backslashes
    pieces = name.split("/")
    if name.startswith("/") or _DRIVE.match(name) or ".." in pieces or "\x00" in name:
        raise DataError(
            f"{archive}: member {raw!r} would be written outside the extraction folder; refusing to extract "
            "this archive (delete it if it is not the official one)"
        )
    pieces = [p for p in pieces if p not in ("", ".")]
    if info.is_dir() or not pieces:
        return None
    if pieces[0] in _JUNK_DIRS or pieces[-1] in _JUNK_FILES or pieces[-1].startswith("._"):
        return None
    return PurePosixPath(*pieces)


def _plan(zf: zipfile.ZipFile, archive: Path, name: str) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    """Members to extract and their paths inside ``DIR/name``, with the archive's top folder removed.

    Official archives hold one folder named like the archive; a different single top folder is removed
    as well, and an archive without a folder is taken as is. Files beside the folder (a metadata CSV)
    stay at the top of ``DIR/name``.
    """
    members = [(info, path) for info in zf.infolist() if (path := _member_path(info, archive)) is not None]
    tops = {path.parts[0] for _, path in members if len(path.parts) > 1}
    loose = [path for _, path in members if len(path.parts) == 1]
    if name in tops:
        strip: str | None = name
    elif len(tops) == 1 and not any(_IMAGE_FILE.match(p.name) or _MASK_FILE.match(p.name) for p in loose):
        strip = next(iter(tops))
    else:
        strip = None
    plan = []
    for info, path in members:
        if strip is not None and len(path.parts) > 1 and path.parts[0] == strip:
            path = PurePosixPath(*path.parts[1:])
        plan.append((info, path))
    return plan


def _extract(archive: Path, target: Path, pattern: re.Pattern[str]) -> None:
    """Extract ``archive`` into ``target`` through a temporary folder, verifying every member's CRC."""
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise DataError(
            f"{archive}: not a readable zip archive ({err}); delete it to download it again"
        ) from None
    with zf:
        plan = _plan(zf, archive, target.name)
        if not any(len(path.parts) == 1 and pattern.match(path.name) for _, path in plan):
            raise DataError(
                f"{archive}: no {pattern.pattern} files at the top of the archive or of its "
                f"{target.name}/ folder; not the expected ISIC 2017 archive (delete it to download it again)"
            )
        for stale in target.parent.glob(f".{target.name}.extract-*"):  # left by an interrupted run
            shutil.rmtree(stale, ignore_errors=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.extract-", dir=target.parent))
        try:
            # A plain mkdir (not mkdtemp's 0700) so the folder that gets moved in has the usual permissions.
            staging = scratch / target.name
            staging.mkdir()
            base = staging.resolve()
            current = ""
            for info, path in plan:
                current = info.filename
                out = staging.joinpath(*path.parts)
                if not out.resolve().is_relative_to(base):  # belt and braces after _member_path
                    raise DataError(f"{archive}: member {current!r} escapes the extraction folder")
                out.parent.mkdir(parents=True, exist_ok=True)
                # ZipExtFile checks the CRC-32 when a member has been read to its end.
                with zf.open(info) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst, _CHUNK)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as err:
            shutil.rmtree(scratch, ignore_errors=True)
            raise DataError(
                f"{archive}: corrupt archive, member {current!r} cannot be read ({err}); delete the file to "
                "download it again"
            ) from None
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
    if target.is_dir():  # empty (checked by the caller): os.replace may replace it on POSIX, not on Windows
        target.rmdir()
    try:
        os.replace(staging, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

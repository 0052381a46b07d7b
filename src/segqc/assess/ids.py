"""Ids of assessed images: safe as file names and in HTML, unique within an output folder, stable.

An image's id names its files in the output folder (``masks/<id>.png``, ...) and its rows in
``quality.csv`` and ``errors.csv``. The rules:

* **Readable**: the file stem, made safe (:func:`safe_id`).
* **Unique**: two different input files never share an id in one output folder. The first file to
  claim a stem gets it; another file with the same stem (compared ignoring case and Unicode
  normalisation, for case-insensitive file systems) gets the stem plus ``-`` and 8 hex digits of
  the SHA-256 of its resolved path (16, then 64 digits in the unlikely case that is taken too).
* **Stable**: the output folder remembers which file has which id (the ``source`` column of
  ``quality.csv`` and ``errors.csv``), so a later run gives a file the id it had before, whatever
  other files that run holds. A file's id can differ between two output folders; within one it
  never changes.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Iterable, Mapping, Sequence

#: Most UTF-8 bytes of an id; file names such as ``.<id>.png.XXXXXXXX.tmp`` stay far below 255 bytes.
MAX_ID_BYTES = 100
#: Characters replaced by ``_``: reserved in Windows file names, special in HTML, URLs or shells.
UNSAFE_CHARS = frozenset("<>:\"/\\|?*&'`#%")
#: Characters an id may not start with: hidden files (``.``), options (``-``), spreadsheet formulas.
UNSAFE_FIRST = frozenset(".-=+@~ ")
#: Names Windows reserves whatever the extension.
_RESERVED = frozenset(
    {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}
)

__all__ = ["MAX_ID_BYTES", "assign_ids", "id_key", "path_digest", "safe_id"]


def path_digest(source: str) -> str:
    """SHA-256 (hex) of a resolved path: the suffix that tells two files with one stem apart."""
    return hashlib.sha256(source.encode("utf-8", "surrogateescape")).hexdigest()


def _truncate(text: str, max_bytes: int) -> str:
    """The longest prefix of ``text`` of at most ``max_bytes`` UTF-8 bytes (whole characters)."""
    data = text.encode("utf-8")
    if len(data) <= max_bytes:
        return text
    return data[:max_bytes].decode("utf-8", "ignore")


def with_suffix(base: str, suffix: str) -> str:
    """``base-suffix``, ``base`` shortened so the whole is at most :data:`MAX_ID_BYTES` bytes."""
    return f"{_truncate(base, MAX_ID_BYTES - 1 - len(suffix.encode()))}-{suffix}"


def safe_id(stem: str) -> str:
    """A file stem made safe as a file name on any system and as text in HTML and spreadsheets.

    Characters in :data:`UNSAFE_CHARS` and non-printable ones (control characters, line breaks,
    undecodable bytes of a file name, odd spaces) become ``_``; a leading ``. - = + @ ~`` or space
    becomes ``_``; trailing dots and spaces are dropped; Windows device names (``CON``, ``NUL.txt``, ...)
    get a leading ``_``; the text is NFC-normalised. An id longer than :data:`MAX_ID_BYTES` bytes is cut and
    ends with ``-`` and 8 hex digits of the SHA-256 of the whole stem, so long names that share a
    beginning stay apart. An empty result is ``image``.
    """
    text = unicodedata.normalize("NFC", stem)
    chars = ["_" if (c in UNSAFE_CHARS or not c.isprintable()) else c for c in text]
    text = "".join(chars).rstrip(". ")
    if text and text[0] in UNSAFE_FIRST:
        text = "_" + text[1:]
    if not text:
        text = "image"
    if text.split(".")[0].casefold() in _RESERVED:
        text = "_" + text
    if len(text.encode("utf-8")) > MAX_ID_BYTES:
        digest = hashlib.sha256(stem.encode("utf-8", "surrogateescape")).hexdigest()[:8]
        text = with_suffix(text, digest)
    return text


def id_key(id_: str) -> str:
    """How ids are compared for clashes: ignoring case and Unicode normalisation."""
    return unicodedata.normalize("NFC", id_).casefold()


def assign_ids(
    sources: Sequence[str],
    stems: Sequence[str],
    recorded: Mapping[str, str],
    taken: Iterable[str] = (),
) -> list[str]:
    """One id per source, unique against each other and the ids an output folder already holds.

    Args:
        sources: resolved paths of the inputs (distinct).
        stems: their file stems.
        recorded: ``source -> id`` that the output folder already holds; such a source keeps its id.
        taken: other ids in use in the folder (rows of files not in this run); never given out.

    Returns:
        ids, in the order of ``sources``.
    """
    owner: dict[str, str] = {id_key(id_): "" for id_ in taken}
    owner.update({id_key(id_): src for src, id_ in recorded.items()})
    ids: list[str] = []
    for source, stem in zip(sources, stems):
        if source in recorded:
            ids.append(recorded[source])
            continue
        base = safe_id(stem)
        candidates = [base, *(with_suffix(base, path_digest(source)[:n]) for n in (8, 16, 64))]
        chosen = next((c for c in candidates if owner.get(id_key(c), source) == source), None)
        if chosen is None:  # 2**-256: not in this universe, but never reuse another file's id
            raise RuntimeError(f"{source}: no free id")
        owner[id_key(chosen)] = source
        ids.append(chosen)
    return ids

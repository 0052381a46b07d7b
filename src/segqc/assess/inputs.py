"""Input discovery for ``segqc predict``: which files to assess, their ids, and reading them."""

from __future__ import annotations

import glob
import hashlib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from segqc.data.readers import IMAGE_EXTENSIONS, open_image, to_rgb
from segqc.errors import DataError

_GLOB_CHARS = frozenset("*?[")


def collect_inputs(inputs: Sequence[str | Path], *, exclude: str | Path | None = None) -> list[Path]:
    """Image files named by ``inputs``: files, folders (searched recursively) and glob patterns.

    Folders contribute files with a known image extension (``.jpg .jpeg .png .bmp .tif .tiff``, any
    case), skipping hidden files and folders; a file named explicitly is taken whatever its name.
    Patterns (``*``, ``?``, ``[...]``, ``**``) are expanded here too, for quoted patterns. A file
    reached twice is listed once; anything under ``exclude`` (the output folder) is skipped.

    Raises:
        DataError: an input is neither a file, a folder nor a pattern matching something.
    """
    skip = Path(exclude).resolve() if exclude is not None else None
    found: dict[Path, Path] = {}

    def add(path: Path) -> None:
        resolved = path.resolve()
        if skip is not None and resolved.is_relative_to(skip):
            return
        found.setdefault(resolved, path)

    def add_folder(folder: Path) -> None:
        for path in sorted(folder.rglob("*")):
            parts = path.relative_to(folder).parts
            if (
                path.suffix.lower() in IMAGE_EXTENSIONS
                and path.is_file()
                and not any(p.startswith(".") for p in parts)
            ):
                add(path)

    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            add_folder(path)
        elif path.is_file():
            add(path)
        elif _GLOB_CHARS & set(str(raw)):
            matches = sorted(glob.glob(str(raw), recursive=True))
            if not matches:
                raise DataError(f"{raw}: no file matches this pattern")
            for match in map(Path, matches):
                if match.is_dir():
                    add_folder(match)
                else:
                    add(match)
        else:
            raise DataError(f"{raw}: no such file or folder")
    return list(found.values())


def unique_ids(paths: Sequence[Path]) -> list[str]:
    """One id per path: the file stem, or, when stems clash, the stem plus ``-`` and 8 hex digits of
    the SHA-1 of the absolute path (more digits if still clashing).

    Stems are compared ignoring case, because outputs ``masks/<id>.png`` must not collide on
    case-insensitive file systems. The ids depend only on the set of paths, so a re-run gets the
    same ids.
    """

    def digest(path: Path) -> str:
        return hashlib.sha1(str(path.resolve()).encode("utf-8", "surrogateescape")).hexdigest()

    ids = [p.stem for p in paths]
    for length in (8, 16, 40):
        counts = Counter(i.casefold() for i in ids)
        clashing = [k for k, i in enumerate(ids) if counts[i.casefold()] > 1]
        if not clashing:
            break
        for k in clashing:
            ids[k] = f"{paths[k].stem}-{digest(paths[k])[:length]}"
    return ids


def read_input(path: Path) -> np.ndarray:
    """Decode an input file as ``(H, W, 3)`` uint8 RGB (any mode, EXIF-rotated); DataError if it can't."""
    try:
        return to_rgb(open_image(path, str(path)))
    except DataError:
        raise
    except Exception as err:  # Pillow raises many types on corrupt files; one bad file must not stop a run
        raise DataError(f"{path}: cannot read image ({type(err).__name__}: {err})") from None

"""Input discovery for ``segqc predict``: which files to assess, their ids, and reading them."""

from __future__ import annotations

import glob
import hashlib
import io
import os
import stat
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segqc.assess.ids import assign_ids
from segqc.assess.outputs import is_output_folder
from segqc.data.readers import IMAGE_EXTENSIONS, INPUT_FORMATS, open_image, single_frame, to_rgb
from segqc.errors import DataError, SegQCWarning

_GLOB_CHARS = frozenset("*?[")


def _is_image_name(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


def resolved(path: Path) -> Path:
    """``path.resolve()``, or the absolute path when it cannot be resolved (a symlink loop, which
    Python before 3.13 raises on): such an input is then listed, and fails to read as an error."""
    try:
        return path.resolve()
    except (RuntimeError, OSError):
        return Path(os.path.abspath(path))


def collect_inputs(inputs: Sequence[str | Path], *, exclude: str | Path | None = None) -> list[Path]:
    """Image files named by ``inputs``: files, folders (searched recursively) and glob patterns.

    Folders contribute files with a known image extension (``.jpg .jpeg .png .bmp .tif .tiff``, any
    case), skipping hidden files and folders; a file named explicitly is taken whatever its name.
    Patterns (``*``, ``?``, ``[...]``, ``**``) are expanded here too, for quoted patterns. A file
    reached twice is listed once. Anything under ``exclude`` (this run's output folder) or inside any
    ``segqc predict`` output folder (:func:`~segqc.assess.outputs.is_output_folder`: an earlier run's
    masks and overlays are not patient images) is skipped. Entries named like images that are not
    regular files (broken links, symlink loops, FIFOs) are listed too: reading them fails, so they
    are reported in ``errors.csv`` rather than silently left out; so is a path that does not exist,
    when other inputs do (a batch reports its bad items and assesses the rest).

    A pattern that matches nothing, beside inputs that do, is a :class:`~segqc.errors.SegQCWarning`.

    Raises:
        DataError: no input exists (nothing named exists and no pattern matches); or an input is
            named explicitly but lies in a segqc output folder.
    """
    skip = Path(exclude).resolve() if exclude is not None else None
    found: dict[Path, Path] = {}
    missing: list[Path] = []
    unmatched: list[str] = []  # patterns
    marked: dict[Path, bool] = {}

    def output_folder(folder: Path) -> bool:
        if folder not in marked:
            marked[folder] = is_output_folder(folder)
        return marked[folder]

    def excluded(resolved: Path) -> Path | None:
        """The output folder ``resolved`` lies in, if any."""
        if skip is not None and resolved.is_relative_to(skip):
            return skip
        return next((p for p in (resolved, *resolved.parents) if output_folder(p)), None)

    def which(folder: Path) -> str:
        if skip is not None and folder == skip:  # the output folder of this very run
            return f"this run's --out ({folder}; choose another --out)"
        return f"a segqc output folder ({folder})"

    def add(path: Path, explicit: bool = False) -> None:
        full = resolved(path)
        folder = excluded(full.parent)
        if folder is None:
            found.setdefault(full, path)
        elif explicit:
            raise DataError(f"{path}: lies in {which(folder)}; not taken as an input")

    def add_folder(folder: Path, explicit: bool = False) -> None:
        where = excluded(folder.resolve())
        if where is not None:
            if explicit:
                raise DataError(f"{folder}: is or lies in {which(where)}; not an input")
            return
        files = []
        for root, dirs, names in os.walk(folder):
            here = Path(root)
            dirs[:] = [d for d in dirs if not d.startswith(".") and excluded((here / d).resolve()) is None]
            files += [here / n for n in names if not n.startswith(".") and _is_image_name(n)]
        for path in sorted(files):
            # Not only regular files: a broken link, a symlink loop or a FIFO named like an image is
            # listed too, so that it is reported in errors.csv rather than silently left out.
            add(path)

    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            add_folder(path, explicit=True)
        elif path.is_file() or os.path.lexists(path):
            # Not only regular files: a FIFO, a device or a broken link named here exists, and is
            # listed (reading it fails, so errors.csv says why) rather than called missing.
            add(path, explicit=True)
        elif _GLOB_CHARS & set(str(raw)):
            matches = sorted(glob.glob(str(raw), recursive=True))
            if not matches:  # e.g. 'scans/*.png' beside 'scans/*.jpg' when all are JPEGs
                unmatched.append(str(raw))
            for match in map(Path, matches):
                if match.is_dir():
                    add_folder(match)
                else:
                    add(match)
        else:
            missing.append(path)
    if not found and (missing or unmatched):  # nothing to assess: a usage error, as a typo usually is
        first = (
            f"{missing[0]}: no such file or folder"
            if missing
            else f"{unmatched[0]}: no file matches this pattern"
        )
        others = len(missing) + len(unmatched) - 1
        raise DataError(first + (f" (and {others} more)" if others else ""))
    for pattern in unmatched:
        warnings.warn(f"{pattern}: no file matches this pattern", SegQCWarning, stacklevel=2)
    for path in missing:  # the others are assessed; reading these fails, so errors.csv lists them
        found.setdefault(resolved(path), path)
    return list(found.values())


def unique_ids(paths: Sequence[Path]) -> list[str]:
    """One id per path, as :func:`~segqc.assess.assess_files` gives them in a new output folder: the
    file stem made safe (:func:`~segqc.assess.ids.safe_id`), or, for a later file whose stem clashes
    (ignoring case) with an earlier one, the stem plus ``-`` and 8 hex digits of the SHA-256 of its
    resolved path. See :mod:`segqc.assess.ids`.
    """
    return assign_ids([str(resolved(p)) for p in paths], [p.stem for p in paths], {})


class _Buffer(io.BytesIO):
    """File bytes in memory that Pillow's messages name as the file (``'scan.png'``, not an address)."""

    def __init__(self, data: bytes, path: Path) -> None:
        super().__init__(data)
        self._label = str(path)

    def __repr__(self) -> str:
        return repr(self._label)


@dataclass
class InputImage:
    """A decoded input: the pixels and the fingerprint of the exact bytes they were decoded from."""

    rgb: np.ndarray
    sha256: str


def load_input(path: Path) -> InputImage:
    """Read ``path`` once, hash its bytes and decode those same bytes (:func:`read_input`'s rules).

    Raises:
        DataError: the file cannot be read or decoded, or it holds more than one frame. The error
            carries the SHA-256 of the bytes as ``sha256`` when they could be read.
    """
    try:
        # Non-blocking open: a FIFO named like an image (reached by a glob) must not hang the run.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise DataError(f"{path}: not a regular file (a FIFO, device or socket); not an image")
            data = fh.read()
    except OSError as err:
        raise DataError(f"{path}: cannot read file ({err.strerror or err})") from None
    digest = hashlib.sha256(data).hexdigest()
    try:
        return InputImage(_decode(_Buffer(data, path), path), digest)
    except DataError as err:
        err.sha256 = digest  # type: ignore[attr-defined]
        raise


def _decode(source: Path | _Buffer, path: Path) -> np.ndarray:
    try:
        return to_rgb(single_frame(open_image(source, str(path), formats=INPUT_FORMATS), str(path)))
    except DataError:
        raise
    except Exception as err:  # Pillow raises many types on corrupt files; one bad file must not stop a run
        raise DataError(f"{path}: cannot read image ({type(err).__name__}: {err})") from None


def read_input(path: Path) -> np.ndarray:
    """Decode an input file as ``(H, W, 3)`` uint8 RGB (any mode, EXIF-rotated); DataError if it can't,
    or if it holds more than one frame (fail closed: never assess only the first frame of a stack)."""
    return _decode(path, path)

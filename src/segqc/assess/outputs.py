"""The files of a ``segqc predict`` output folder: checking the folder, the CSV tables, PNGs, ``run.json``.

Works with any loaded :class:`~segqc.runtime.Model`; imports no torch.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from segqc.assess.lock import LOCK_FILE
from segqc.errors import SegQCError
from segqc.utils import atomic_write, write_json

if TYPE_CHECKING:
    from segqc.runtime import Model

#: Columns of ``quality.csv``, one row per assessed image.
QUALITY_COLUMNS = (
    "id", "predicted_jaccard", "decision", "reason", "jaccard_lower", "threshold", "mean_uncertainty",
    "source", "input_sha256",
)  # fmt: skip
#: ``quality.csv`` as written before ``reason`` and ``jaccard_lower``: still read (they come back empty).
LEGACY_QUALITY_COLUMNS = ("id", "predicted_jaccard", "decision", "threshold", "mean_uncertainty", "source")
#: ``quality.csv`` as written before ``input_sha256``: still read (it comes back empty).
UNHASHED_QUALITY_COLUMNS = QUALITY_COLUMNS[:-1]
#: Columns of ``quality.csv`` that hold numbers: written as numbers, never quoted or escaped.
NUMERIC_COLUMNS = frozenset({"predicted_jaccard", "jaccard_lower", "threshold", "mean_uncertainty"})
#: Columns of ``errors.csv``, one row per input that could not be assessed.
ERROR_COLUMNS = ("id", "source", "reason")
#: Per-image output folders: binary mask (0/255), uncertainty heat map, mask overlay; all PNG.
OUTPUT_DIRS = ("masks", "uncertainty", "overlays")
RUN_FILE = "run.json"
AUDIT_FILE = "audit.jsonl"
#: What ``run.json`` says about who wrote the folder: how input discovery recognises an output folder.
WRITER = "segqc predict"
PNG_COMPRESS_LEVEL = 3
#: A cell starting with one of these is a formula to a spreadsheet (OWASP "CSV injection").
FORMULA_CHARS = ("=", "+", "-", "@", "\t", "\r")


def _png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    # Level 3 (not Pillow's 6): about twice as fast on 12-megapixel overlays, files ~20 % larger.
    Image.fromarray(array).save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def write_png(path: Path, array: np.ndarray) -> None:
    """Write a PNG via a temporary file, so the file is either complete or absent."""
    with atomic_write(path) as fh:
        fh.write(_png_bytes(array))


# -- CSV -----------------------------------------------------------------------------------------


def escape_cell(value: Any) -> str:
    """A text cell a spreadsheet will not run: a leading ``= + - @``, tab or CR gets a ``'`` (OWASP).

    Only for text columns (numeric ones are written as they are, so ``-0.5`` stays a number). A cell
    starting with ``'`` gets one more, so :func:`unescape_cell` can always take exactly one away.
    """
    text = "" if value is None else str(value)
    if text.startswith((*FORMULA_CHARS, "'")):
        return "'" + text
    return text


def unescape_cell(text: str) -> str:
    """The value :func:`escape_cell` was given."""
    return text[1:] if text.startswith("'") else text


def write_csv(path: Path, columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    """Write a table atomically, text cells escaped (:func:`escape_cell`), numeric columns as they are."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {c: (row.get(c, "") if c in NUMERIC_COLUMNS else escape_cell(row.get(c))) for c in columns}
        )
    with atomic_write(path) as fh:
        fh.write(text.getvalue().encode("utf-8", "surrogateescape"))


def read_csv(
    path: Path, columns: Sequence[str], legacy: Sequence[Sequence[str]] = ()
) -> list[dict[str, str]]:
    """Rows of a table written by :func:`write_csv` (or by an older segqc with ``legacy`` columns),
    each with every one of ``columns`` (missing ones empty); ``[]`` if the file does not exist.

    Raises:
        SegQCError: the file cannot be read or has other columns.
    """
    if not path.exists():
        return []
    try:
        with open(path, encoding="utf-8", errors="surrogateescape", newline="") as fh:
            reader = csv.DictReader(fh)
            found = tuple(reader.fieldnames or ())
            if found != tuple(columns) and found not in {tuple(c) for c in legacy}:
                raise SegQCError(
                    f"{path}: not a segqc output (columns {list(found)}, expected {list(columns)})"
                )
            rows = list(reader)
    except (OSError, csv.Error, UnicodeError) as err:
        raise SegQCError(f"{path}: cannot read ({err})") from None
    return [
        {c: (row.get(c) or "") if c in NUMERIC_COLUMNS else unescape_cell(row.get(c) or "") for c in columns}
        for row in rows
    ]


# -- the folder ----------------------------------------------------------------------------------


def check_output_folder(out: str | Path) -> Path:
    """Make sure ``out`` is (or can be made) a folder segqc can write, before any model work.

    Creates the folder. Raises :class:`SegQCError` (one line) when ``out`` or a folder above it is a
    file, when it cannot be created or written, or when a name segqc writes there is taken by
    something of the wrong kind (a folder called ``quality.csv``, a file called ``masks``).
    """
    out = Path(out)
    probe = out.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        where = "it" if probe == out.absolute() else str(probe)
        raise SegQCError(f"{out}: cannot use it as the output folder: {where} is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out, prefix=".segqc-probe.", suffix=".tmp")
        os.close(fd)
        Path(tmp).unlink(missing_ok=True)
    except OSError as err:
        raise SegQCError(f"{out}: cannot write there ({err.strerror or err})") from None
    for name in OUTPUT_DIRS:
        if (out / name).exists() and not (out / name).is_dir():
            raise SegQCError(f"{out / name}: is a file; segqc writes a folder there")
    for name in ("quality.csv", "errors.csv", RUN_FILE, AUDIT_FILE, "report.html"):
        if (out / name).exists() and not (out / name).is_file():
            raise SegQCError(f"{out / name}: is not a file; segqc writes a file there")
    return out


def is_output_folder(folder: Path) -> bool:
    """Whether ``folder`` was written by ``segqc predict`` (any version): its ``run.json`` or lock file
    says so, or it has a segqc ``quality.csv`` (by its header) beside one of the per-image folders."""
    if (folder / LOCK_FILE).is_file():
        return True
    run_file = folder / RUN_FILE
    if run_file.is_file():
        try:
            run = json.loads(run_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            run = None
        if isinstance(run, dict) and (
            run.get("written_by") == WRITER or {"weights_sha256", "threshold"} <= run.keys()
        ):
            return True
    if not any((folder / d).is_dir() for d in OUTPUT_DIRS):
        return False
    try:
        with open(folder / "quality.csv", encoding="utf-8", errors="replace") as fh:
            return fh.readline().startswith("id,predicted_jaccard,")
    except OSError:
        return False


def check_run_file(out: Path, model: Model) -> None:
    """Refuse to mix the outputs of two models in one folder; record the model on first use."""
    run_file = out / RUN_FILE
    weights = model.config.get("sha256")
    if run_file.is_file():
        try:
            previous = json.loads(run_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise SegQCError(f"{run_file}: cannot read ({err})") from None
        if not isinstance(previous, dict):
            raise SegQCError(f"{run_file}: not a segqc predict run file")
        # The manifest digest covers the whole gate (a re-calibrated detector with the same weights
        # and threshold is another model); folders written before it was recorded compare the rest.
        other_manifest = previous.get("model_sha256", model.manifest_sha256) != model.manifest_sha256
        if (
            other_manifest
            or previous.get("weights_sha256") != weights
            or previous.get("threshold") != model.threshold
        ):
            raise SegQCError(
                f"{out} holds the results of another model ({previous.get('model')}); "
                "choose another --out folder, or delete this one"
            )
        return
    if (out / "quality.csv").exists():
        raise SegQCError(f"{out}: has a quality.csv but no {RUN_FILE}; not a segqc predict folder")
    write_json(
        run_file,
        {"written_by": WRITER, "model": str(model.path.resolve()), "weights_sha256": weights,
         "threshold": model.threshold, "method": model.method, "image_size": model.image_size,
         "backend": model.backend, "model_sha256": model.manifest_sha256},
    )  # fmt: skip


def clean_temporaries(out: Path) -> None:
    """Remove temporary files a killed run may have left (``atomic_write`` names them ``.<name>.*.tmp``).

    Call it only while holding the folder's lock: another run's temporaries are not leftovers.
    """
    for folder in (out, *(out / d for d in OUTPUT_DIRS)):
        if folder.is_dir():
            for tmp in folder.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)


def done(out: Path, id_: str) -> bool:
    """Whether the three images of ``id_`` exist."""
    return all((out / d / f"{id_}.png").is_file() for d in OUTPUT_DIRS)

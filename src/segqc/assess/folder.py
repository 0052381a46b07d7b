"""Files in, files out: what ``segqc predict`` does. Assess image files and write a resumable output folder
(masks, uncertainty heat maps, overlays, ``quality.csv``, ``errors.csv``, ``audit.jsonl``, ``run.json``,
``report.html``). The files themselves are written by :mod:`segqc.assess.outputs`.

Works with any loaded :class:`~segqc.runtime.Model`; imports no torch itself.
"""

from __future__ import annotations

import hashlib
import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from segqc.assess.assess import Assessment, assess_images
from segqc.assess.ids import assign_ids, id_key, safe_id
from segqc.assess.inputs import collect_inputs, load_input, read_input, resolved
from segqc.assess.lock import output_lock
from segqc.assess.outputs import (
    AUDIT_FILE,
    ERROR_COLUMNS,
    LEGACY_QUALITY_COLUMNS,
    OUTPUT_DIRS,
    QUALITY_COLUMNS,
    UNHASHED_QUALITY_COLUMNS,
    check_output_folder,
    check_run_file,
    clean_temporaries,
    done,
    read_csv,
    write_csv,
    write_png,
)
from segqc.audit import AuditLog
from segqc.errors import DataError, SegQCError
from segqc.external.predictions import PredictionFolder, check_method, precomputed_method

if TYPE_CHECKING:
    from segqc.assess.review_page import ReviewCase
    from segqc.runtime import Model

__all__ = [
    "ERROR_COLUMNS",
    "OUTPUT_DIRS",
    "QUALITY_COLUMNS",
    "PredictSummary",
    "assess_files",
    "collect_inputs",
    "write_png",
]


@dataclass
class PredictSummary:
    """What :func:`assess_files` did.

    Attributes:
        out: the output folder.
        assessed: ids assessed in this run.
        skipped: ids skipped because an earlier run into the same folder had done them.
        errors: ``(id, source, reason)`` of the inputs that could not be assessed in this run.
        rows: every row of ``quality.csv`` (this run's and earlier ones').
        all_errors: every row of ``errors.csv`` (this run's, and earlier ones' not assessed since).
        report: path of ``report.html``.
    """

    out: Path
    assessed: list[str]
    skipped: list[str]
    errors: list[dict[str, str]]
    rows: list[dict[str, Any]]
    all_errors: list[dict[str, str]] = field(default_factory=list)
    report: Path | None = None

    @property
    def n_referred(self) -> int:
        return sum(r["decision"] == "refer" for r in self.rows)


def _plan(
    out: Path,
    paths: Sequence[Path],
    ids: Sequence[str] | None,
    rows: dict[str, dict[str, Any]],
    errors: dict[str, dict[str, str]],
) -> tuple[list[str], list[str]]:
    """The resolved source and the id of each path; drops the folder's rows that the new ids replace."""
    sources = [str(resolved(p)) for p in paths]  # absolute, so a re-run from elsewhere still matches
    if len(set(sources)) != len(sources):
        raise DataError("the same file is listed twice")
    here = set(sources)
    recorded: dict[str, str] = {}
    for row in [*errors.values(), *rows.values()]:  # a quality row wins over an error row
        # An id an older segqc gave unsafely is kept only if its files are there (nothing to redo).
        if row["source"] in here and (safe_id(row["id"]) == row["id"] or done(out, row["id"])):
            recorded[row["source"]] = row["id"]
    # Every other row keeps its id: no input of this run may take it.
    others = [r for r in [*errors.values(), *rows.values()] if r["source"] not in here]
    owner = {id_key(r["id"]): r["source"] for r in others}
    if ids is None:
        ids = assign_ids(sources, [p.stem for p in paths], recorded, taken=owner)
    else:
        ids = [str(i) for i in ids]
        if len(ids) != len(paths):
            raise DataError(f"got {len(paths)} paths but {len(ids)} ids")
        for id_, source in zip(ids, sources):
            if safe_id(id_) != id_:
                raise DataError(f"id {id_!r} is not safe as a file name (safe: {safe_id(id_)!r})")
            if owner.get(id_key(id_), source) != source:
                raise DataError(f"id {id_!r} is taken by {owner[id_key(id_)] or 'another row'} in {out}")
            owner[id_key(id_)] = source
    mine = dict(zip(sources, ids))
    for table in (rows, errors):  # a row of one of these inputs under another id: superseded
        for key, row in list(table.items()):
            if row["source"] in mine and mine[row["source"]] != row["id"]:
                del table[key]
    return sources, ids


def assess_files(
    model: Model,
    paths: Sequence[Path],
    out_dir: str | Path,
    *,
    ids: Sequence[str] | None = None,
    batch_size: int = 16,
    progress: bool = True,
    report: bool = True,
    predictions: PredictionFolder | None = None,
) -> PredictSummary:
    """Assess image files and write the results under ``out_dir``.

    Writes, for each image, ``masks/<id>.png`` (0/255 at the image's own resolution),
    ``uncertainty/<id>.png`` (heat map) and ``overlays/<id>.png``; one row per image in
    ``quality.csv`` (:data:`QUALITY_COLUMNS`); the inputs that cannot be assessed in ``errors.csv``
    (:data:`ERROR_COLUMNS`, always written); one JSON line per decision or error in ``audit.jsonl``
    (:mod:`segqc.audit`, appended, never rewritten); the model used in ``run.json``; and ``report.html``.

    The folder accumulates: ``quality.csv`` holds every image any run into it assessed, once, and
    ``errors.csv`` every input that failed and has not been assessed since. Ids are unique in the
    folder and a file keeps its id in every run (:mod:`segqc.assess.ids`). Every file is written to a
    temporary file and renamed, and the tables are rewritten after each batch, so an interrupted run
    leaves only complete files. A re-run skips the images already in ``quality.csv`` whose three
    images exist and whose file still has the recorded ``input_sha256`` (a replaced file is redone).
    One run at a time holds the folder (:mod:`segqc.assess.lock`).

    Args:
        model: a loaded model (:func:`segqc.runtime.load_model`).
        paths: image files (see :func:`collect_inputs`).
        out_dir: output folder, created if needed.
        ids: one id per path, each safe as a file name. Defaults to :mod:`segqc.assess.ids`' ids.
        batch_size: images decoded and assessed together. Defaults to 16.
        progress: show a progress bar. Defaults to True.
        report: write ``report.html``. Defaults to True.
        predictions: precomputed outputs of f, looked up by each image's id
            (:mod:`segqc.external.predictions`); f is then not run. An image without its map, or with a
            map of the wrong size, range or kind, goes to ``errors.csv``. Every image is then assessed
            again, none skipped: a row records its image's digest, not its maps', so a map replaced
            since (or another folder) would otherwise keep the decision on the old one. Defaults to
            none (f runs).

    Raises:
        SegQCError: ``out_dir`` cannot be written, another run is using it
            (:class:`~segqc.assess.lock.OutputInUseError`), it holds results of another model, or its
            tables are not ours.
        DataError: a path is listed twice, or ``ids`` are unsafe, repeated or taken.
    """
    out = check_output_folder(out_dir)
    with output_lock(out):
        return _assess_locked(model, paths, out, ids, batch_size, progress, report, predictions)


def _assess_locked(
    model: Model, paths: Sequence[Path], out: Path, ids: Sequence[str] | None, batch_size: int,
    progress: bool, report: bool, predictions: PredictionFolder | None = None,
) -> PredictSummary:  # fmt: skip
    from segqc.assess.review_page import ReviewCase, thumbnail, write_review_page
    from segqc.visualize import heatmap, mask_overlay

    check_run_file(out, model)
    clean_temporaries(out)
    try:
        audit = AuditLog(out / AUDIT_FILE)
    except OSError as err:
        reason = err.strerror or err
        raise SegQCError(f"{out / AUDIT_FILE}: cannot append to the audit log ({reason})") from None
    quality_csv, errors_csv = out / "quality.csv", out / "errors.csv"
    legacy = [LEGACY_QUALITY_COLUMNS, UNHASHED_QUALITY_COLUMNS]
    rows = {r["id"]: r for r in read_csv(quality_csv, QUALITY_COLUMNS, legacy)}
    old_errors = {r["source"] or r["id"]: r for r in read_csv(errors_csv, ERROR_COLUMNS)}
    sources, ids = _plan(out, paths, ids, rows, old_errors)
    todo, skipped = [], []
    # With precomputed maps never skipped: the row cannot tell whether its maps changed since.
    redo = predictions is not None
    for k, (id_, source) in enumerate(zip(ids, sources)):
        row = rows.get(id_)
        if (
            not redo
            and row is not None
            and row["source"] == source
            and done(out, id_)
            and _unchanged(row, paths[k])
        ):
            skipped.append(id_)
            old_errors.pop(source, None)
        else:
            rows.pop(id_, None)  # stale or partial: redone below
            todo.append(k)

    run_id, model_sha = uuid.uuid4().hex, model.manifest_sha256
    vmax = model.uncertainty_vmax
    cases: dict[str, ReviewCase] = {}
    errors: list[dict[str, str]] = []
    assessed: list[str] = []

    def log(k: int, **fields: Any) -> None:
        audit.record(request_id=f"{run_id}/{ids[k]}", source=str(paths[k]), model_sha256=model_sha, **fields)

    reader = None  # the model's method, reading out the precomputed outputs
    if predictions is not None:
        predictions.expect(ids)  # so that <id>_s0.npy of an image "<id>_s0" is not read as a sample of <id>

    def save_tables() -> None:
        write_csv(quality_csv, QUALITY_COLUMNS, list(rows.values()))
        write_csv(errors_csv, ERROR_COLUMNS, list(old_errors.values()))

    def review_page() -> Path:
        for id_, row in rows.items():
            if id_ not in cases:
                cases[id_] = _case_from_disk(out, row)
        rule = (model.config.get("threshold_rule") or {}).get("description", "")
        return write_review_page(
            out / "report.html",
            list(cases.values()),
            errors=[(e["source"], e["reason"]) for e in old_errors.values()],
            title="segqc review",
            subtitle=f"model {model.path.name}: method {model.method}, refer when predicted Jaccard < "
            f"{model.threshold:g}" + (f" ({rule})" if rule else ""),
        )

    try:
        with tqdm(total=len(todo), desc="assess", unit="image", disable=not progress) as bar:
            for start in range(0, len(todo), batch_size):
                chunk = todo[start : start + batch_size]
                began = time.perf_counter()
                images, digests, good, maps = [], [], [], []
                for k in chunk:
                    try:
                        loaded = load_input(paths[k])
                        if predictions is not None:
                            try:
                                kind = predictions.kind(ids[k])
                                if kind is not None:
                                    check_method(kind, model.method)
                                stack = predictions.load(ids[k], loaded.rgb.shape[:2])
                                if reader is None:
                                    reader = precomputed_method(
                                        model.method, model.config.get("method_params")
                                    )
                                try:
                                    reader.check_precomputed(stack)
                                except DataError as err:
                                    raise DataError(f"{predictions.folder}: {ids[k]!r}: {err}") from None
                                maps.append(stack)
                            except DataError as err:
                                err.sha256 = loaded.sha256  # type: ignore[attr-defined]
                                raise
                    except DataError as err:
                        error = {"id": ids[k], "source": sources[k], "reason": str(err)}
                        errors.append(error)
                        old_errors[sources[k]] = error
                        log(k, input_sha256=getattr(err, "sha256", None), image_size=None,
                            predicted_jaccard=None, jaccard_lower=None, decision="error", reason=str(err),
                            latency_ms=None)  # fmt: skip
                        continue
                    images.append(loaded.rgb)
                    digests.append(loaded.sha256)
                    good.append(k)
                given = maps if predictions is not None else None
                results = assess_images(
                    model, images, [ids[k] for k in good], batch_size=batch_size, probabilities=given
                )
                latency = (time.perf_counter() - began) * 1000 / max(len(chunk), 1)
                for k, rgb, digest, a in zip(good, images, digests, results):
                    # Logged before the decision reaches quality.csv: no decision is ever shown unlogged.
                    log(k, input_sha256=digest, image_size=list(rgb.shape[:2]),
                        predicted_jaccard=a.predicted_jaccard, jaccard_lower=a.jaccard_lower,
                        decision=a.decision, reason=a.reason, latency_ms=round(latency, 3))  # fmt: skip
                    uncertainty_rgb = heatmap(a.uncertainty, vmax)
                    overlay = mask_overlay(rgb, a.mask)
                    write_png(out / "masks" / f"{a.id}.png", a.mask * np.uint8(255))
                    write_png(out / "uncertainty" / f"{a.id}.png", uncertainty_rgb)
                    write_png(out / "overlays" / f"{a.id}.png", overlay)
                    rows[a.id] = {**_format_row(a), "source": sources[k], "input_sha256": digest}
                    old_errors.pop(sources[k], None)
                    assessed.append(a.id)
                    if report:
                        cases[a.id] = ReviewCase(
                            **_case_fields(rows[a.id]), image=thumbnail(rgb), overlay=thumbnail(overlay),
                            uncertainty=thumbnail(uncertainty_rgb),
                        )  # fmt: skip
                bar.update(len(chunk))
                save_tables()
    except KeyboardInterrupt:
        # Keep every finished image (a row is added only once its files are written) in quality.csv
        # and the review page, then stop; a rerun assesses the rest.
        save_tables()
        if report:
            review_page()
        raise
    save_tables()

    summary = PredictSummary(out, assessed, skipped, errors, list(rows.values()), list(old_errors.values()))
    if report:
        summary.report = review_page()
    return summary


def _unchanged(row: dict[str, Any], path: Path) -> bool:
    """Whether ``path`` still holds the bytes its row was decided on: a file replaced under the same
    name is assessed again, never shown with the decision on the old bytes. Rows written before
    ``input_sha256`` existed have no fingerprint and are taken as they are."""
    if not row.get("input_sha256"):
        return True
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest() == row["input_sha256"]
    except OSError:
        return False  # redone: this run records why it cannot be read now


def _format_row(a: Assessment) -> dict[str, Any]:
    return {
        "id": a.id,
        "predicted_jaccard": f"{a.predicted_jaccard:.6f}",
        "decision": a.decision,
        "reason": a.reason,
        "jaccard_lower": "" if a.jaccard_lower is None else f"{a.jaccard_lower:.6f}",
        "threshold": f"{a.threshold:g}",
        "mean_uncertainty": f"{a.mean_uncertainty:.6f}",
    }


def _case_fields(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "predicted_jaccard": float(row["predicted_jaccard"]),
        "decision": row["decision"],
        "threshold": float(row["threshold"]),
        "mean_uncertainty": float(row["mean_uncertainty"]),
        "source": row["source"],
        "reason": row.get("reason") or "",
        "jaccard_lower": _float_or_none(row.get("jaccard_lower")),
    }


def _float_or_none(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _case_from_disk(out: Path, row: dict[str, Any]) -> ReviewCase:
    """A review case for an image assessed by an earlier run: thumbnails from its files."""
    from segqc.assess.review_page import ReviewCase, thumbnail

    def thumb(path: Path) -> bytes | None:
        try:
            return thumbnail(read_input(path))
        except (DataError, OSError):
            return None  # e.g. the source image was moved since

    id_ = row["id"]
    return ReviewCase(
        **_case_fields(row),
        image=thumb(Path(row["source"])),
        overlay=thumb(out / "overlays" / f"{id_}.png"),
        uncertainty=thumb(out / "uncertainty" / f"{id_}.png"),
    )

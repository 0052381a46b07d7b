"""assess_files into a shared output folder (segqc.assess.folder): no record lost, none duplicated."""

from __future__ import annotations

import csv
import hashlib
import json
import os
from pathlib import Path

import pytest
from PIL import Image

from segqc.assess import QUALITY_COLUMNS, assess_files, collect_inputs
from segqc.assess.ids import path_digest
from segqc.assess.outputs import LEGACY_QUALITY_COLUMNS
from segqc.errors import DataError, SegQCError
from tests.assess.conftest import write_image


def rows_of(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def run(model, paths, out, **kwargs):
    return assess_files(model, list(paths), out, progress=False, batch_size=2, **kwargs)


def test_same_stem_from_two_folders_in_two_runs_keeps_both_once(fake_model, tmp_path):
    a = write_image(tmp_path / "a" / "IMG_0001.png", red=200)
    b = write_image(tmp_path / "b" / "IMG_0001.png", red=40)
    out = tmp_path / "out"
    run(fake_model, [a], out)
    run(fake_model, [b], out)
    b_id = f"IMG_0001-{path_digest(str(b.resolve()))[:8]}"
    rows = {r["id"]: r for r in rows_of(out / "quality.csv")}
    assert set(rows) == {"IMG_0001", b_id}
    assert rows["IMG_0001"]["source"] == str(a.resolve()) and rows["IMG_0001"]["decision"] == "pass"
    assert rows[b_id]["source"] == str(b.resolve()) and rows[b_id]["decision"] == "refer"
    # Both again, in the other order: the same ids, nothing redone, nothing added.
    summary = run(fake_model, [b, a], out)
    assert summary.assessed == [] and summary.skipped == [b_id, "IMG_0001"]
    assert {r["id"]: r for r in rows_of(out / "quality.csv")} == rows
    # A third file with that stem (case differs) while the others are not in the run: a new id.
    c = write_image(tmp_path / "c" / "img_0001.png")
    summary = run(fake_model, [c], out)
    assert summary.assessed == [f"img_0001-{path_digest(str(c.resolve()))[:8]}"]
    assert len(rows_of(out / "quality.csv")) == 3 and len(list((out / "masks").iterdir())) == 3


def test_reruns_add_new_inputs_and_never_duplicate(fake_model, tmp_path):
    first = [write_image(tmp_path / "in" / f"x{i}.png") for i in range(3)]
    more = [write_image(tmp_path / "in" / f"y{i}.png") for i in range(2)]
    out = tmp_path / "out"
    run(fake_model, first, out)
    summary = run(fake_model, first[1:] + more, out)
    assert summary.skipped == ["x1", "x2"] and summary.assessed == ["y0", "y1"]
    ids = [r["id"] for r in rows_of(out / "quality.csv")]
    assert sorted(ids) == ["x0", "x1", "x2", "y0", "y1"] and len(summary.rows) == 5


def test_quality_csv_has_reason_and_jaccard_lower(fake_model, tmp_path):
    paths = [write_image(tmp_path / "ok.png", red=220), write_image(tmp_path / "bad.png", red=20)]
    run(fake_model, paths, tmp_path / "out")
    rows = {r["id"]: r for r in rows_of(tmp_path / "out" / "quality.csv")}
    assert tuple(next(iter(rows.values()))) == QUALITY_COLUMNS
    assert QUALITY_COLUMNS.index("reason") == QUALITY_COLUMNS.index("decision") + 1
    assert rows["ok"]["reason"] == "ok" and rows["bad"]["reason"] == "low predicted quality"
    # The fake gate's conformal margin is 0.1: the bound is 0.1 below the prediction.
    assert float(rows["ok"]["jaccard_lower"]) == pytest.approx(float(rows["ok"]["predicted_jaccard"]) - 0.1)


def test_an_older_folder_without_the_new_columns_resumes(fake_model, tmp_path):
    out = tmp_path / "out"
    done = write_image(tmp_path / "in" / "done.png")
    new = write_image(tmp_path / "in" / "new.png")
    gone = str(tmp_path / "moved-away.png")
    (out / "masks").mkdir(parents=True)
    for folder in ("masks", "uncertainty", "overlays"):
        (out / folder).mkdir(exist_ok=True)
        for id_ in ("done", "gone"):
            Image.new("L", (4, 4)).save(out / folder / f"{id_}.png")
    (out / "run.json").write_text(json.dumps({"weights_sha256": {"f": "0" * 64}, "threshold": 0.5}))
    with open(out / "quality.csv", "w", encoding="utf-8") as fh:
        fh.write(",".join(LEGACY_QUALITY_COLUMNS) + "\n")
        fh.write(f"done,0.900000,pass,0.5,0.100000,{done.resolve()}\n")
        fh.write(f"gone,0.200000,refer,0.5,0.100000,{gone}\n")
    summary = run(fake_model, [done, new], out)
    assert summary.skipped == ["done"] and summary.assessed == ["new"]
    rows = {r["id"]: r for r in rows_of(out / "quality.csv")}
    assert set(rows) == {"done", "gone", "new"}  # the row of a file not in this run is kept
    assert rows["done"]["reason"] == "" and rows["new"]["reason"] == "ok"


def test_multi_frame_and_unreadable_inputs_are_errors_kept_until_assessed(fake_model, tmp_path):
    frames = [Image.new("RGB", (8, 8), (200, 0, 0)) for _ in range(2)]
    stack = tmp_path / "stack.tif"
    frames[0].save(stack, save_all=True, append_images=frames[1:])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    good = write_image(tmp_path / "good.png")
    out = tmp_path / "out"
    summary = run(fake_model, [stack, broken, good], out)
    assert summary.assessed == ["good"] and [e["id"] for e in summary.errors] == ["stack", "broken"]
    errors = {e["id"]: e for e in rows_of(out / "errors.csv")}
    assert "2 frames" in errors["stack"]["reason"] and set(errors) == {"stack", "broken"}
    reason = errors["broken"]["reason"]
    assert "broken.png: not an image (its content is no known image format)" in reason
    assert " at 0x" not in reason  # named, not a buffer
    assert [r["id"] for r in rows_of(out / "quality.csv")] == ["good"]
    # A run without those inputs keeps their errors; once fixed, an input leaves errors.csv.
    run(fake_model, [good], out)
    assert {e["id"] for e in rows_of(out / "errors.csv")} == {"stack", "broken"}
    write_image(broken)
    summary = run(fake_model, [broken], out)
    assert summary.assessed == ["broken"] and [e["id"] for e in rows_of(out / "errors.csv")] == ["stack"]


def test_audit_log_has_one_record_per_decision_and_error(fake_model, tmp_path):
    good = write_image(tmp_path / "good.png", red=220, size=(20, 24))
    bad = write_image(tmp_path / "bad.png", red=10)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"junk")
    out = tmp_path / "out"
    run(fake_model, [good, bad, junk], out)
    lines = (out / "audit.jsonl").read_text().splitlines()
    records = {Path(r["source"]).name: r for r in map(json.loads, lines)}
    assert set(records) == {"good.png", "bad.png", "junk.png"}
    g = records["good.png"]
    assert g["source"] == str(good) and g["image_size"] == [20, 24] and g["decision"] == "pass"
    assert g["reason"] == "ok" and g["model_sha256"] == "f" * 64 and g["latency_ms"] >= 0
    import hashlib

    assert g["input_sha256"] == hashlib.sha256(good.read_bytes()).hexdigest()
    assert 0.8 < g["predicted_jaccard"] < 0.9 and g["jaccard_lower"] == pytest.approx(
        g["predicted_jaccard"] - 0.1
    )
    run_id = g["request_id"].split("/")[0]
    assert g["request_id"] == f"{run_id}/good" and records["bad.png"]["decision"] == "refer"
    j = records["junk.png"]
    assert j["decision"] == "error" and "junk.png" in j["reason"] and j["predicted_jaccard"] is None
    assert j["input_sha256"] == hashlib.sha256(b"junk").hexdigest()
    # Appended, never rewritten: a re-run logs only what it decides (the junk again), in a new run id.
    run(fake_model, [good, bad, junk], out)
    again = (out / "audit.jsonl").read_text().splitlines()
    assert again[:3] == lines and len(again) == 4
    assert json.loads(again[3])["decision"] == "error" and run_id not in again[3]


def test_long_and_odd_names_are_assessed_and_resumed(fake_model, tmp_path):
    names = ["x" * 246 + ".png", "x" * 245 + "y.png", ".hidden-ish.png", "=1+1.png", "@cmd.png", "-rf.png"]
    paths = [write_image(tmp_path / "in" / n) for n in names]
    out = tmp_path / "out"
    summary = run(fake_model, paths, out)
    assert len(summary.assessed) == 6 and summary.errors == []
    ids = summary.assessed
    assert len(set(ids)) == 6 and all(len(i.encode()) <= 100 for i in ids)
    assert all(i[0] not in ".=+-@" for i in ids)
    assert run(fake_model, paths, out).skipped == ids
    for line in (out / "quality.csv").read_text().splitlines()[1:]:
        assert not any(cell.startswith(("=", "+", "-", "@")) for cell in line.split(","))


def test_bad_output_folders_fail_before_any_model_work(fake_model, tmp_path):
    class Untouchable(type(fake_model)):
        def segment(self, images):
            raise AssertionError("model used")

    model = Untouchable(tmp_path / "m")
    image = write_image(tmp_path / "x.png")
    (tmp_path / "file").write_text("x")
    with pytest.raises(SegQCError, match="is a file"):
        run(model, [image], tmp_path / "file")
    with pytest.raises(SegQCError, match="is a file"):
        run(model, [image], tmp_path / "file" / "sub")
    (tmp_path / "o" / "quality.csv").mkdir(parents=True)
    with pytest.raises(SegQCError, match="quality.csv: is not a file"):
        run(model, [image], tmp_path / "o")


def test_explicit_ids_are_checked(fake_model, tmp_path):
    a, b = write_image(tmp_path / "a.png"), write_image(tmp_path / "b.png")
    with pytest.raises(DataError, match="not safe"):
        run(fake_model, [a], tmp_path / "out", ids=["../a"])
    run(fake_model, [a], tmp_path / "out", ids=["case-1"])
    with pytest.raises(DataError, match="taken by"):
        run(fake_model, [b], tmp_path / "out", ids=["CASE-1"])
    with pytest.raises(DataError, match="listed twice"):
        run(fake_model, [a, tmp_path / "." / "a.png"], tmp_path / "out")


def test_a_file_replaced_under_the_same_name_is_assessed_again(fake_model, tmp_path):
    # A re-run used to skip by path alone: the new bytes were never looked at and kept the old "pass".
    path = write_image(tmp_path / "in" / "scan.png", red=220)
    out = tmp_path / "out"
    run(fake_model, [path], out)
    assert rows_of(out / "quality.csv")[0]["decision"] == "pass"
    write_image(path, red=20)  # another image, same name
    summary = run(fake_model, [path], out)
    assert summary.assessed == ["scan"] and summary.skipped == []
    (row,) = rows_of(out / "quality.csv")
    assert row["decision"] == "refer" and row["input_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    audit = [json.loads(line) for line in (out / "audit.jsonl").read_text().splitlines()]
    assert [r["decision"] for r in audit] == ["pass", "refer"]
    assert run(fake_model, [path], out).skipped == ["scan"]  # unchanged now: skipped


def test_a_model_with_another_gate_but_the_same_weights_is_another_model(fake_model, tmp_path):
    # run.json compared only the weights and the threshold: a re-calibrated gate (e.g. a looser OOD
    # limit) mixed its decisions with the earlier model's, which re-runs kept as "done".
    out = tmp_path / "out"
    run(fake_model, [write_image(tmp_path / "a.png")], out)
    fake_model.manifest_sha256 = "e" * 64
    with pytest.raises(SegQCError, match="holds the results of another model"):
        run(fake_model, [write_image(tmp_path / "b.png")], out)


def test_symlink_loops_broken_links_and_fifos_are_reported_not_lost(fake_model, tmp_path):
    # A glob matching a symlink loop crashed with a traceback (Path.resolve); in a folder, loops,
    # broken links and FIFOs named like images were silently left out of both tables. (A broken
    # link's source is where it points, as every source is the resolved path.)
    folder = tmp_path / "in"
    write_image(folder / "ok.png")
    (folder / "a.png").symlink_to("b.png")
    (folder / "b.png").symlink_to("a.png")
    (folder / "broken.png").symlink_to("missing.png")
    if hasattr(os, "mkfifo"):
        os.mkfifo(folder / "pipe.png")
    for n, inputs in enumerate(([str(folder)], [str(folder / "*.png")])):
        out = tmp_path / f"out{n}"
        summary = run(fake_model, collect_inputs(inputs), out)
        assert summary.assessed == ["ok"]
        failed = {Path(e["source"]).name for e in rows_of(out / "errors.csv")}
        assert failed == {"a.png", "b.png", "missing.png"} | (
            {"pipe.png"} if hasattr(os, "mkfifo") else set()
        )

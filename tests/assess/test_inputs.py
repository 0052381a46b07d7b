"""The input helpers of `segqc predict` (segqc.assess.inputs): which files, and their ids."""

from __future__ import annotations

from pathlib import Path

import pytest

from segqc.assess import collect_inputs, unique_ids
from segqc.errors import DataError
from tests.conftest import write_rgb


def test_unique_ids_keep_stems_and_hash_clashes(tmp_path):
    paths = [tmp_path / "a.png", tmp_path / "x" / "a.jpg", tmp_path / "b.png", tmp_path / "B.tif"]
    ids = unique_ids(paths)
    assert ids[0].startswith("a-") and ids[1].startswith("a-") and ids[0] != ids[1]
    assert ids[2].startswith("b-") and ids[3].startswith("B-")  # clash ignoring case
    assert all(len(i.split("-")[-1]) == 8 for i in ids)
    assert unique_ids(paths) == ids  # stable across runs
    assert unique_ids([tmp_path / "été.png", tmp_path / "c.png"]) == ["été", "c"]


def test_collect_inputs_files_folders_globs(tmp_path):
    write_rgb(tmp_path / "d" / "one.png")
    write_rgb(tmp_path / "d" / "sub" / "two.JPG", fmt="JPEG")
    write_rgb(tmp_path / "d" / ".hidden" / "three.png")
    write_rgb(tmp_path / "d" / "out" / "masks" / "one.png")
    (tmp_path / "d" / "notes.txt").write_text("x")
    explicit = tmp_path / "odd.name"
    explicit.write_text("not an image, but named explicitly")
    found = collect_inputs(
        [tmp_path / "d", explicit, str(tmp_path / "d" / "*.png")], exclude=tmp_path / "d" / "out"
    )
    assert [p.name for p in found] == ["one.png", "two.JPG", "odd.name"]
    assert [p.name for p in collect_inputs([str(tmp_path / "d" / "**" / "*.JPG")])] == ["two.JPG"]
    with pytest.raises(DataError, match="no such file"):
        collect_inputs([tmp_path / "missing.png"])
    with pytest.raises(DataError, match="no file matches"):
        collect_inputs([str(tmp_path / "*.bmp")])
    assert collect_inputs([Path(tmp_path / "d" / ".hidden")]) == [tmp_path / "d" / ".hidden" / "three.png"]

"""The input helpers of `segqc predict` (segqc.assess.inputs): which files, and their ids."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from segqc.assess import collect_inputs, unique_ids
from segqc.assess.inputs import load_input
from segqc.errors import DataError, SegQCWarning
from tests.conftest import write_rgb


def test_unique_ids_keep_stems_and_hash_later_clashes(tmp_path):
    paths = [tmp_path / "a.png", tmp_path / "x" / "a.jpg", tmp_path / "b.png", tmp_path / "B.tif"]
    ids = unique_ids(paths)
    assert ids[0] == "a" and ids[1].startswith("a-") and ids[2] == "b" and ids[3].startswith("B-")
    assert all(len(i.split("-")[-1]) == 8 for i in ids[1::2])  # clash ignoring case
    assert unique_ids(paths) == ids  # deterministic
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
    with pytest.raises(DataError, match=r"missing\.png: no such file or folder \(and 1 more\)"):
        collect_inputs([tmp_path / "missing.png", tmp_path / "gone"])
    # Beside inputs that exist, a missing path is listed, so that reading it fails into errors.csv.
    assert [p.name for p in collect_inputs([explicit, tmp_path / "missing.png"])] == [
        "odd.name",
        "missing.png",
    ]
    with pytest.raises(DataError, match="no file matches"):
        collect_inputs([str(tmp_path / "*.bmp")])
    # Beside inputs that exist, a pattern matching nothing is a warning ('*.png' and '*.jpg' when all
    # are JPEGs), not the end of the batch.
    with pytest.warns(SegQCWarning, match=r"\*\.bmp: no file matches this pattern"):
        assert collect_inputs([explicit, str(tmp_path / "*.bmp")]) == [explicit]
    assert collect_inputs([Path(tmp_path / "d" / ".hidden")]) == [tmp_path / "d" / ".hidden" / "three.png"]


def test_output_folders_are_never_inputs(tmp_path):
    """An earlier run's output folder inside the input folder is skipped, whatever it is called."""
    d = tmp_path / "d"
    write_rgb(d / "patient.png")
    old = d / "results-2023"  # an earlier --out, not this run's
    write_rgb(old / "masks" / "patient.png")
    write_rgb(old / "overlays" / "patient.png")
    (old / "run.json").write_text('{"written_by": "segqc predict"}')
    legacy = d / "legacy"  # an older segqc: no marker in run.json, but its quality.csv and folders
    write_rgb(legacy / "uncertainty" / "x.png")
    (legacy / "quality.csv").write_text("id,predicted_jaccard,decision\n")
    mine = d / "mine"  # a user's folder that merely has masks/ and a quality.csv of their own
    write_rgb(mine / "masks" / "m.png")
    (mine / "quality.csv").write_text("name,score\n")
    found = collect_inputs([d])
    assert sorted(p.relative_to(d).as_posix() for p in found) == ["mine/masks/m.png", "patient.png"]
    assert [p.name for p in collect_inputs([str(d / "**" / "*.png")])] == ["m.png", "patient.png"]
    with pytest.raises(DataError, match="segqc output folder"):
        collect_inputs([old / "masks" / "patient.png"])
    with pytest.raises(DataError, match="segqc output folder"):
        collect_inputs([old])
    # The input folder given as this run's --out too: said as such, not as an earlier output folder.
    this_out = r"is or lies in this run's --out \(.*; choose another --out\); not an input"
    with pytest.raises(DataError, match=this_out):
        collect_inputs([d], exclude=d)


def test_multi_frame_files_are_refused(tmp_path):
    from PIL import Image

    from segqc.assess.inputs import load_input, read_input

    frames = [Image.new("RGB", (8, 8), (i * 60, 0, 0)) for i in range(3)]
    frames[0].save(tmp_path / "stack.tif", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    for name in ("stack.tif", "anim.gif"):
        with pytest.raises(DataError, match="3 frames"):
            read_input(tmp_path / name)
        with pytest.raises(DataError, match="3 frames") as info:
            load_input(tmp_path / name)
        assert len(info.value.sha256) == 64  # the bytes were read: the audit log can name them
    single = load_input(write_rgb(tmp_path / "one.tif", fmt="TIFF"))
    assert single.rgb.shape == (30, 40, 3) and len(single.sha256) == 64


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX FIFOs")
def test_a_fifo_named_like_an_image_is_an_error_not_a_hang(tmp_path):
    # A glob matches a FIFO called scan.png; reading it used to block for ever (no writer).
    fifo = tmp_path / "in" / "scan.png"
    fifo.parent.mkdir()
    os.mkfifo(fifo)
    (path,) = collect_inputs([str(tmp_path / "in" / "*.png")])
    result: list = []
    worker = threading.Thread(target=lambda: result.append(_error_of(path)), daemon=True)
    worker.start()
    worker.join(10)
    assert result and "not a regular file" in result[0]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX FIFOs")
def test_an_existing_fifo_or_broken_link_named_alone_is_listed_not_called_missing(tmp_path):
    # "scan.png: no such file or folder" was said of a FIFO (or /dev/zero) that is there.
    fifo, link = tmp_path / "scan.png", tmp_path / "gone.png"
    os.mkfifo(fifo)
    link.symlink_to(tmp_path / "nowhere.png")
    assert collect_inputs([fifo]) == [fifo]
    assert collect_inputs([link]) == [link]
    assert "not a regular file" in _error_of(fifo)
    assert "No such file" in _error_of(link)


def _error_of(path: Path) -> str:
    try:
        load_input(path)
    except DataError as err:
        return str(err)
    return "read"


@pytest.mark.parametrize("fmt", ["ICO", "PCX", "TGA", "SGI", "DDS"])
def test_only_the_service_formats_are_decoded(tmp_path, fmt):
    # predict decoded any format Pillow knows (EPS runs Ghostscript) from a file named *.png; the
    # service accepted 7. Both now decode the same ones.
    from PIL import Image

    from segqc.data.readers import INPUT_FORMATS

    path = tmp_path / "scan.png"
    Image.new("RGB", (16, 16), (200, 10, 10)).save(path, format=fmt)
    with pytest.raises(DataError, match=rf"scan\.png: {fmt} images are not accepted \(accepted: PNG, JPEG"):
        load_input(path)
    assert fmt not in INPUT_FORMATS

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segqc.data.dataset import load_folder, load_split
from segqc.data.readers import (
    INPUT_FORMATS,
    find_pairs,
    identify_format,
    open_image,
    read_image,
    read_mask,
    read_pair,
    read_protocol,
)
from segqc.errors import DataError, SegQCWarning
from tests.conftest import write_mask, write_rgb


def make_folder(root: Path, n: int = 3, pattern: str = "{id}_segmentation.png") -> Path:
    for i in range(n):
        write_rgb(root / "images" / f"case{i}.jpg", seed=i)
        write_mask(root / "masks" / pattern.format(id=f"case{i}"))
    return root


@pytest.mark.parametrize("pattern", ["{id}_segmentation.png", "{id}_lesion.png", "{id}.png"])
def test_generic_folder_detects_mask_pattern(tmp_path, pattern):
    pairs = find_pairs(make_folder(tmp_path, pattern=pattern))
    assert sorted(pairs) == ["case0", "case1", "case2"]
    assert all(p.mask is not None and p.mask.name == pattern.format(id=p.id) for p in pairs.values())


def test_one_missing_mask_leaves_out_that_image_only(tmp_path):
    root = make_folder(tmp_path, n=4, pattern="{id}_mask.png")
    (root / "masks" / "case0_mask.png").unlink()  # the first image: it must not decide the pattern
    with pytest.warns(SegQCWarning, match="1 image without a ground-truth mask is left out"):
        data = load_folder(root, size=16, cache_dir=None)
    assert data.ids == ["case1", "case2", "case3"]


def test_the_naming_most_masks_follow_serves_the_folder(tmp_path):
    # a mask copied into images/ by mistake is not an image with its own mask (masks/c0_mask.png
    # would be its "{id}.png" mask): it is left out with the unlabelled warning
    root = make_folder(tmp_path / "a", n=3, pattern="{id}_mask.png")
    (root / "images" / "case0_mask.png").write_bytes((root / "masks" / "case0_mask.png").read_bytes())
    pairs = find_pairs(root)
    assert pairs["case0_mask"].mask is None and all(pairs[f"case{i}"].mask is not None for i in range(3))
    # ids that look like mask names, with one consistent naming, are paired as named
    root = make_folder(tmp_path / "b", n=0)
    for i in ("x", "x_segmentation"):
        write_rgb(root / "images" / f"{i}.jpg", seed=1)
        write_mask(root / "masks" / f"{i}_segmentation.png")
    assert {i: p.mask.name for i, p in find_pairs(root).items()} == {
        "x": "x_segmentation.png",
        "x_segmentation": "x_segmentation_segmentation.png",
    }


def test_load_folder_resizes_and_binarises(tmp_path):
    data = load_folder(make_folder(tmp_path), size=16, cache_dir=None)
    assert data.images.shape == (3, 16, 16, 3) and data.images.dtype == np.uint8
    assert data.masks.shape == (3, 16, 16) and set(np.unique(data.masks)) == {0, 1}
    assert data.ids == ["case0", "case1", "case2"]


def test_cache_is_used_and_invalidated(tmp_path):
    root = make_folder(tmp_path / "d")
    first = load_folder(root, size=16, cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    again = load_folder(root, size=16, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(first.images, again.images)
    write_rgb(root / "images" / "case0.jpg", seed=99)  # changed file -> new cache entry
    changed = load_folder(root, size=16, cache_dir=tmp_path / "cache")
    assert not np.array_equal(first.images[0], changed.images[0])
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2


def test_read_mask_accepts_0_1(tmp_path):
    mask = read_mask(write_mask(tmp_path / "m.png", values=(0, 1)))
    assert set(np.unique(mask)) == {0, 1}


def test_non_binary_mask(tmp_path):
    path = write_mask(tmp_path / "m.png", values=(0, 128))
    with pytest.raises(DataError, match=r"m\.png.*not binary"):
        read_mask(path)


def test_mask_of_other_size(tmp_path):
    root = make_folder(tmp_path, n=1)
    write_mask(root / "masks" / "case0_segmentation.png", size=(20, 20))
    with pytest.raises(DataError, match=r"case0_segmentation\.png.*20x20.*40x30"):
        load_folder(root, size=16, cache_dir=None)


def test_missing_mask(tmp_path):
    root = make_folder(tmp_path, n=2)
    (root / "masks" / "case1_segmentation.png").unlink()
    pairs = find_pairs(root)
    with pytest.raises(DataError, match=r"case1\.jpg.*no ground-truth mask"):
        read_pair(pairs["case1"])
    # Loading by explicit id reports it too, naming the file.
    with pytest.raises(DataError, match="case1"):
        load_folder(root, size=16, ids=["case0", "case1"], cache_dir=None)
    # Without ids, every labelled pair is used, and the unlabelled image is named in a warning.
    with pytest.warns(SegQCWarning, match=r"1 image without a ground-truth mask is left out.*case1\.jpg"):
        assert load_folder(root, size=16, cache_dir=None).ids == ["case0"]


def test_cli_prints_segqc_warnings_as_one_line(tmp_path):
    """``segqc train`` on a folder with an unlabelled image says so in one ``warning:`` line."""
    from click.testing import CliRunner

    from segqc.cli import cli

    root = make_folder(tmp_path / "data", n=2)
    (root / "masks" / "case1_segmentation.png").unlink()
    result = CliRunner().invoke(cli, ["train", "--data", str(root), "--out", str(tmp_path / "m")])
    assert "warning: " in result.output and "case1.jpg" in result.output
    assert "SegQCWarning" not in result.output
    with warnings.catch_warnings():  # as under python -W error: the warning stops the run, in one line
        warnings.simplefilter("error", SegQCWarning)
        result = CliRunner().invoke(cli, ["train", "--data", str(root), "--out", str(tmp_path / "m")])
    assert result.exit_code == 1 and "error: " in result.output and "Traceback" not in result.output


def test_unreadable_and_truncated_image(tmp_path):
    (tmp_path / "junk.jpg").write_text("not an image")
    with pytest.raises(DataError, match=r"junk\.jpg.*cannot read image"):
        read_image(tmp_path / "junk.jpg")
    good = write_rgb(tmp_path / "t.jpg", size=(64, 64))
    data = good.read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"t\.jpg.*cannot read image"):
        read_image(tmp_path / "t.jpg")
    with pytest.raises(DataError, match="not found"):
        read_image(tmp_path / "absent.png")


def test_bad_items_are_all_reported(tmp_path):
    root = make_folder(tmp_path, n=3)
    (root / "images" / "case0.jpg").write_bytes(b"")
    write_mask(root / "masks" / "case2_segmentation.png", values=(0, 7))
    with pytest.raises(DataError, match=r"2 of 3 items cannot be used: .*case0\.jpg.*; .*case2_segmentation"):
        load_folder(root, size=16, cache_dir=None)


def test_empty_and_missing_folders(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match="no images found"):
        find_pairs(tmp_path)
    with pytest.raises(DataError, match="not found"):
        find_pairs(tmp_path / "nope")
    (tmp_path / "other").mkdir()
    with pytest.raises(DataError, match="not a data folder"):
        find_pairs(tmp_path / "other")


def test_odd_image_modes_become_rgb(tmp_path):
    grey = tmp_path / "g.png"
    Image.fromarray(np.full((5, 6), 100, np.uint8)).save(grey)
    assert read_image(grey).shape == (5, 6, 3)
    deep = tmp_path / "d.png"
    Image.fromarray(np.full((5, 6), 65535, np.uint16)).save(deep)
    assert read_image(deep).max() == 255
    rgba = tmp_path / "a.png"
    Image.fromarray(np.zeros((5, 6, 4), np.uint8)).save(rgba)  # fully transparent -> white
    assert (read_image(rgba) == 255).all()


def test_protocol_errors(tmp_path):
    bad = tmp_path / "p.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="cannot read protocol"):
        read_protocol(bad)
    bad.write_text(json.dumps({"train": [1, 2]}))
    with pytest.raises(DataError, match="list of id strings"):
        read_protocol(bad)
    root = make_folder(tmp_path / "d", n=2)
    bad.write_text(json.dumps({"train": ["case0"], "test": ["case9"]}))
    with pytest.raises(DataError, match="case9"):
        load_split(root, bad, size=16, cache_dir=None)


def test_real_isic_layout(isic_root):
    pairs = find_pairs(isic_root)
    assert len(pairs) == 2150 and all(p.mask is not None for p in pairs.values())
    protocol = read_protocol(isic_root / "split.json")
    assert len(protocol["train"]) == 1550 and len(protocol["test"]) == 600
    ids = protocol["test"][:4]
    data = load_folder(isic_root, size=64, ids=ids, cache_dir=None)
    assert data.ids == ids and data.images.shape == (4, 64, 64, 3)
    assert set(np.unique(data.masks)) <= {0, 1} and data.masks.any()
    image, mask = read_pair(pairs[ids[0]])
    assert image.shape == (224, 224, 3) and mask.shape == (224, 224)


def _ico_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(buf, "ICO", sizes=[(32, 32)])
    return buf.getvalue()


_EPS = (
    b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"
    b"newpath 0 0 moveto 10 10 lineto stroke showpage\n%%EOF\n"
)


@pytest.mark.parametrize(("data", "fmt"), [(_ico_bytes(), "ICO"), (_EPS, "EPS")])
def test_identify_format_decodes_nothing(monkeypatch, tmp_path, data, fmt):
    # Pillow's ICO plugin decodes its largest icon (up to Pillow's own pixel limit) when merely opened,
    # and EPS decodes through Ghostscript: naming a refused format must run neither decoder.
    from PIL import EpsImagePlugin, ImageFile

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    monkeypatch.setattr(Image.Image, "load", no_decoding)
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", no_decoding)
    (tmp_path / "x.png").write_bytes(data)
    assert identify_format(io.BytesIO(data)) == fmt
    assert identify_format(tmp_path / "x.png") == fmt
    with pytest.raises(DataError, match=f"{fmt} images are not accepted"):
        open_image(tmp_path / "x.png", "x.png", formats=INPUT_FORMATS)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "GIF"])
@pytest.mark.parametrize("stream", [False, True])
def test_accepted_format_cut_in_its_header_cannot_be_read(tmp_path, fmt, stream):
    # A PNG cut short in its header is a damaged PNG, not "no known image format".
    buf = io.BytesIO()
    Image.new("RGB", (20, 10)).save(buf, fmt)
    (tmp_path / "cut.img").write_bytes(buf.getvalue()[:12])
    source = io.BytesIO(buf.getvalue()[:12]) if stream else tmp_path / "cut.img"
    with pytest.raises(DataError, match=rf"cut\.img: cannot read image: it starts like a {fmt} file"):
        open_image(source, "cut.img", formats=INPUT_FORMATS)


def test_a_protocol_listing_an_id_twice_or_in_train_and_test_is_refused(tmp_path):
    root = make_folder(tmp_path / "d", n=4)
    path = tmp_path / "split.json"
    for protocol, message in (
        ({"train": ["case0", "case1", "case0"], "test": ["case2"]}, "lists an id more than once: case0"),
        ({"train": ["case0", "case1"], "test": ["case1", "case2"]}, "1 id is in both 'train' and 'test'"),
    ):
        path.write_text(json.dumps(protocol))
        with pytest.raises(DataError, match=message):
            load_split(root, path, size=16, cache_dir=None)
    # lists the run does not read are not its business
    unread = {"val": ["case0"], "notes": ["x", "x"]}
    path.write_text(json.dumps({"train": ["case0"], **unread, "test": ["case1"]}))
    assert [d.ids for d in load_split(root, path, size=16, cache_dir=None)] == [["case0"], ["case1"]]


def test_ids_missing_from_the_data_are_named_for_every_split_at_once(tmp_path):
    root = make_folder(tmp_path / "d", n=3)
    protocol = tmp_path / "split.json"
    protocol.write_text(json.dumps({"train": ["case0", "nope1"], "test": ["case1", "nope2", "nope3"]}))
    expected = "3 ids of the protocol are not in the data: train: nope1; test: nope2, nope3"
    with pytest.raises(DataError, match=expected):
        load_split(root, protocol, size=16, cache_dir=None)


def test_protocol_ids_without_a_mask_are_named_with_the_missing_ones(tmp_path):
    root = make_folder(tmp_path / "d", n=3)
    (root / "masks" / "case2_segmentation.png").unlink()
    protocol = tmp_path / "split.json"
    protocol.write_text(json.dumps({"train": ["case0", "nope"], "test": ["case1", "case2"]}))
    expected = "is not in the data: train: nope; and 1 id .* is without a ground-truth mask: test: case2"
    with pytest.raises(DataError, match=expected):
        load_split(root, protocol, size=16, cache_dir=None)


def test_masks_are_found_whatever_the_case_of_their_name(tmp_path):
    (tmp_path / "Probe").touch()
    if (tmp_path / "probe").exists():
        pytest.skip("a case-insensitive file system: names that differ only in case are one file")
    root = make_folder(tmp_path, n=3, pattern="{id}_segmentation.PNG")
    pairs = find_pairs(root)
    assert all(p.mask is not None and p.mask.name == f"{p.id}_segmentation.PNG" for p in pairs.values())
    # two masks that differ only in case, neither named exactly: which one is meant is unknown
    mask = (root / "masks" / "case1_segmentation.PNG").read_bytes()
    (root / "masks" / "case1_Segmentation.png").write_bytes(mask)
    with pytest.raises(DataError, match="differ only in case"):
        find_pairs(root)
    # an exactly named one is taken
    (root / "masks" / "case1_segmentation.png").write_bytes(mask)
    assert find_pairs(root)["case1"].mask.name == "case1_segmentation.png"
    # ids that differ only in case: the other case of a name is not taken when it is another image's
    # own mask name, and two images never share one mask
    root = make_folder(tmp_path / "ids", n=0)
    write_rgb(root / "images" / "A.png", seed=1)
    write_rgb(root / "images" / "a.png", seed=2)
    write_mask(root / "masks" / "a_segmentation.png")
    pairs = find_pairs(root)
    assert pairs["a"].mask.name == "a_segmentation.png" and pairs["A"].mask is None
    (root / "masks" / "a_segmentation.png").rename(root / "masks" / "a_Segmentation.png")
    with pytest.raises(DataError, match="would share the mask a_Segmentation.png"):
        find_pairs(root)


def test_no_mask_at_all_says_where_masks_were_looked_for(tmp_path):
    root = make_folder(tmp_path, n=2)
    (root / "masks").rename(root / "Masks")
    with pytest.raises(
        DataError, match=r"no image has a ground-truth mask: there is no folder .*masks \(Masks/"
    ):
        load_folder(root, size=16, cache_dir=None)
    (root / "Masks").rename(root / "masks")
    for mask in (root / "masks").iterdir():
        mask.rename(mask.with_name("x" + mask.name))
    with pytest.raises(DataError, match=r"has no file named <id>_segmentation.png, <id>_lesion.png"):
        load_folder(root, size=16, cache_dir=None)

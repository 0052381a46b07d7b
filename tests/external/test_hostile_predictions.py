"""Hostile predictions folders: paths in ids, format and size bombs, an id that looks like a sample,
odd dtypes. Each is a one-line DataError naming the file, or read as what it is; never a traceback."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from segqc.errors import DataError
from segqc.external.predictions import PredictionFolder

SHAPE = (4, 5)


def _half(tmp_path, name, dtype=np.float32):
    np.save(tmp_path / name, np.full(SHAPE, 0.5, dtype))


@pytest.mark.parametrize("id_", ["../secret", "/tmp/secret", "a/b", "a\\b", "..", "", "a\0b"])
def test_an_id_that_is_a_path_never_reads_outside_the_folder(tmp_path, id_):
    (tmp_path / "maps").mkdir()
    _half(tmp_path, "secret.npy")
    with pytest.raises(DataError, match="not a plain file name"):
        PredictionFolder(tmp_path / "maps").load(id_, SHAPE)


def test_an_id_ending_in_s0_is_its_own_map_not_a_sample_of_another(tmp_path):
    """Images "x" and "x_s0": x_s0.npy is the map of "x_s0". Without the ids, "x" (whose map is missing)
    silently took it as its one sample; with x.npy present, "x" was refused as having two kinds."""
    _half(tmp_path, "x_s0.npy")
    folder = PredictionFolder(tmp_path, ids=["x", "x_s0"])
    with pytest.raises(DataError, match="no prediction for 'x'"):
        folder.load("x", SHAPE)
    assert folder.load("x_s0", SHAPE).shape == (1, *SHAPE) and folder.kind("x_s0") == "single"
    assert folder.folder_kind() == "single"
    _half(tmp_path, "x.npy")
    assert folder.kind("x") == "single" and folder.load("x", SHAPE).shape == (1, *SHAPE)
    plain = PredictionFolder(tmp_path)  # ids not given: samples as before
    assert plain.folder_kind() == "samples"


def test_a_huge_npy_header_is_refused_before_reading(tmp_path):
    """A header claiming 10^6 x 10^6 float64 made np.load try to allocate 7 TiB (MemoryError)."""
    buf = io.BytesIO()
    header = {"descr": "<f8", "fortran_order": False, "shape": (10**6, 10**6)}
    np.lib.format.write_array_header_1_0(buf, header)
    (tmp_path / "a.npy").write_bytes(buf.getvalue() + b"\0" * 64)
    with pytest.raises(DataError, match="a.npy: prediction of shape"):
        PredictionFolder(tmp_path).load("a", SHAPE)
    with pytest.raises(DataError, match="a.npy: a prediction must be a 2-d"):
        PredictionFolder(tmp_path).load("a", None)


@pytest.mark.parametrize(
    ("dtype", "ok"),
    [(np.float16, True), (">f8", True), (np.longdouble, True), (np.complex64, False), (bool, False),
     (np.int64, False), (object, False), ([("a", "<f4")], False)],
)  # fmt: skip
def test_npy_dtypes(tmp_path, dtype, ok):
    array = np.full(SHAPE, 0.5).astype(dtype) if dtype is not object else np.full(SHAPE, None, object)
    np.save(tmp_path / "a.npy", array, allow_pickle=True)
    folder = PredictionFolder(tmp_path)
    if ok:
        assert np.allclose(folder.load("a", SHAPE), 0.5)
    else:
        with pytest.raises(DataError, match="a.npy: a .npy prediction must hold floats"):
            folder.load("a", SHAPE)


def test_a_png_that_is_not_a_png_or_a_bomb_is_refused(tmp_path):
    Image.fromarray(np.full(SHAPE, 200, np.int32)).save(tmp_path / "t.tiff")  # 32-bit TIFF, mode I
    (tmp_path / "t.tiff").rename(tmp_path / "t.png")
    with pytest.raises(DataError, match="t.png: not a PNG file"):
        PredictionFolder(tmp_path).load("t", SHAPE)
    Image.new("1", (20000, 20000)).save(tmp_path / "b.png")  # 4e8 pixels: Pillow's bomb guard
    with pytest.raises(DataError, match="b.png: (cannot read the prediction|prediction of shape)"):
        PredictionFolder(tmp_path).load("b", SHAPE)
    with pytest.raises(DataError, match="b.png: cannot read the prediction"):
        PredictionFolder(tmp_path).load("b", None)


def test_16_bit_png_extremes(tmp_path):
    Image.fromarray(np.array([[0, 1, 65534, 65535, 32768]] * 4, np.uint16)).save(tmp_path / "a.png")
    got = PredictionFolder(tmp_path).load("a", SHAPE)[0, 0]
    np.testing.assert_allclose(got, [0, 1 / 65535, 65534 / 65535, 1, 32768 / 65535], rtol=1e-6)

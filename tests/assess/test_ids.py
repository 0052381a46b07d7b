"""Ids of assessed images (segqc.assess.ids): safe, unique in a folder, stable across runs."""

from __future__ import annotations

import pytest

from segqc.assess.ids import MAX_ID_BYTES, assign_ids, path_digest, safe_id


@pytest.mark.parametrize(
    ("stem", "expected"),
    [
        ("ISIC_0000001", "ISIC_0000001"),
        ("été_ü", "été_ü"),
        ("a/b\\c", "a_b_c"),
        ("<b>&x", "_b__x"),
        ("line\nbreak\ttab\x00nul", "line_break_tab_nul"),
        (".hidden", "_hidden"),
        ("..", "image"),
        ("-rf", "_rf"),
        ("=HYPERLINK(1)", "_HYPERLINK(1)"),
        ("@SUM", "_SUM"),
        ("trailing. ", "trailing"),
        ("CON", "_CON"),
        ("nul.tar", "_nul.tar"),
        ("", "image"),
        ("bad\udcffbyte", "bad_byte"),  # an undecodable byte of a file name (surrogateescape)
        ("e\u0301", "\u00e9"),  # NFD to NFC
    ],
)
def test_safe_id(stem, expected):
    assert safe_id(stem) == expected
    assert safe_id(expected) == expected  # idempotent: a safe id is its own safe id


def test_long_names_are_cut_with_a_hash_and_stay_unique():
    a, b = "x" * 240 + "a", "x" * 240 + "b"
    ids = [safe_id(a), safe_id(b), safe_id("é" * 200)]
    assert all(len(i.encode()) <= MAX_ID_BYTES for i in ids)
    assert ids[0] != ids[1] and ids[0].startswith("x" * 50)
    assert ids[2].encode().decode() == ids[2]  # cut at a character boundary
    assert safe_id(a) == ids[0]  # stable


def test_assign_ids_first_claim_keeps_the_stem_and_the_folder_remembers():
    src = ["/data/a/IMG_0001.jpg", "/data/b/IMG_0001.jpg", "/data/c/img_0001.png"]
    first = assign_ids(src[:1], ["IMG_0001"], {})
    assert first == ["IMG_0001"]
    # A later run with another file of that stem: the recorded file keeps its id, the new one is hashed.
    recorded = {src[0]: "IMG_0001"}
    second = assign_ids(src[1:], ["IMG_0001", "img_0001"], recorded)
    assert second == [f"IMG_0001-{path_digest(src[1])[:8]}", f"img_0001-{path_digest(src[2])[:8]}"]
    # Same files again, in another order, with the folder's records: the same ids, whatever else is there.
    recorded.update(zip(src[1:], second))
    assert assign_ids(src[::-1], ["img_0001", "IMG_0001", "IMG_0001"], recorded) == (first + second)[::-1]


def test_assign_ids_never_gives_out_a_taken_id():
    ids = assign_ids(["/x/a.png"], ["a"], {}, taken=["A"])
    assert ids == [f"a-{path_digest('/x/a.png')[:8]}"]
    long_stem = "y" * 300
    (id_,) = assign_ids(["/p/1"], [long_stem], {}, taken=[safe_id(long_stem)])
    assert len(id_.encode()) <= MAX_ID_BYTES and id_.endswith(path_digest("/p/1")[:8])

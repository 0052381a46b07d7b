"""The SPEC of an external model: defaults, parsing, one-line errors naming the key."""

from __future__ import annotations

import json

import pytest

from segqc.errors import SegQCError
from segqc.external import ExternalSpec


def test_defaults():
    spec = ExternalSpec.load(None)
    assert spec == ExternalSpec.from_dict({})
    assert spec.input_size is None and spec.layout == "NCHW" and spec.channel_order == "RGB"
    assert spec.scale == 255 and spec.mean == (0, 0, 0) and spec.std == (1, 1, 1)
    assert spec.output == "logits" and spec.foreground_channel is None


def test_round_trip(tmp_path):
    data = {"input_size": [24, 40], "layout": "nhwc", "channel_order": "BGR", "scale": 1, "mean": 0.5,
            "std": [0.2, 0.3, 0.4], "output": "probabilities", "foreground_channel": 2}  # fmt: skip
    file = tmp_path / "SPEC.json"
    file.write_text(json.dumps(data))
    spec = ExternalSpec.load(file)
    assert spec.input_size == (24, 40) and spec.layout == "NHWC" and spec.mean == (0.5, 0.5, 0.5)
    assert ExternalSpec.from_dict(spec.to_dict()) == spec
    assert ExternalSpec.from_dict({"input_size": 32}).input_size == (32, 32)


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"input_sise": [1, 2]}, "input_sise"),
        ({"input_size": [0, 2]}, "input_size"),
        ({"input_size": [32]}, "input_size"),
        ({"layout": "CHW"}, "layout"),
        ({"channel_order": "RBG"}, "channel_order"),
        ({"scale": 0}, "scale"),
        ({"mean": [0, 0]}, "mean"),
        ({"std": [1, 0, 1]}, "std"),
        ({"std": "1"}, "std"),
        ({"output": "softmax"}, "output"),
        ({"foreground_channel": -1}, "foreground_channel"),
        ({"foreground_channel": True}, "foreground_channel"),
    ],
)
def test_bad_values_name_the_key(data, key):
    with pytest.raises(SegQCError, match=f"'{key}'") as err:
        ExternalSpec.from_dict(data, "SPEC.json")
    assert "\n" not in str(err.value) and str(err.value).startswith("SPEC.json: ")


def test_bad_files(tmp_path):
    with pytest.raises(SegQCError, match="cannot read"):
        ExternalSpec.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(SegQCError, match="not valid JSON"):
        ExternalSpec.load(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(SegQCError, match="JSON object"):
        ExternalSpec.load(tmp_path / "list.json")

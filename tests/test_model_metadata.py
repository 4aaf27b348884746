"""ModelMetadata.from_props turns every malformed metadata value into IndexFormatError (issue 12, item 8)."""

from __future__ import annotations

import json

import pytest

from hashindex.core.errors import IndexFormatError
from hashindex.core.onnx_contract import InputSpec, ModelMetadata, TrainingInfo, BackboneInfo
from hashindex.core.preprocess import FACE_PREPROCESSING

GOOD = ModelMetadata(
    bits=64,
    input=InputSpec.images(FACE_PREPROCESSING),
    training=TrainingInfo("csq", "lfw", "2024-01-01"),
    backbone=BackboneInfo("mfn", "0" * 64, 128),
).to_props()
INPUT = json.loads(GOOD["hashindex.input"])


def _with(**changes) -> dict:
    props = dict(GOOD)
    for key, value in changes.items():
        key = "hashindex." + key
        if value is None:
            props.pop(key)
        else:
            props[key] = value if isinstance(value, str) else json.dumps(value)
    return props


def _input(**changes) -> str:
    return json.dumps({**INPUT, **changes})


def test_good_metadata_round_trips():
    assert ModelMetadata.from_props(GOOD).to_props() == GOOD


BAD = {
    "input deeply nested": _with(input='{"name": ' + "[" * 100_000 + "]" * 100_000 + "}"),
    "training deeply nested": _with(training="[" * 100_000 + "]" * 100_000),
    "input is a list": _with(input=[1, 2]),
    "input is a number": _with(input="3"),
    "input is null": _with(input="null"),
    "training is a string": _with(training='"csq"'),
    "backbone is a list": _with(backbone=[1]),
    "input name is a dict": _with(input=_input(name={"a": 1})),
    "input shape is a string": _with(input=_input(shape="N3x112x112")),
    "input shape is a dict": _with(input=_input(shape={"N": 3})),
    "input shape holds floats": _with(input=_input(shape=["N", 3.0, 112.5, 112])),
    "input shape holds a huge number": _with(input='{"name": "images", "shape": ["N", 3, 1e999, 112], "dtype": "float32"}'),
    "input shape holds Infinity": _with(input='{"name": "images", "shape": ["N", 3, Infinity, 112], "dtype": "float32"}'),
    "input shape negative": _with(input=_input(shape=["N", 3, -112, 112])),
    "preprocessing is a list": _with(input=_input(preprocessing=[1, 2])),
    "preprocessing is a number": _with(input=_input(preprocessing=7)),
    "preprocessing size is a string": _with(input=_input(preprocessing={**INPUT["preprocessing"], "size": "ab"})),
    "preprocessing std NaN": _with(input=_input(preprocessing={**INPUT["preprocessing"], "std": "NaN"}).replace('"NaN"', "NaN")),
    "preprocessing mean is a dict": _with(input=_input(preprocessing={**INPUT["preprocessing"], "mean": {"r": 1}})),
    "training lacks loss": _with(training={"data": "x", "date": "y"}),
    "backbone output_dim is a list": _with(backbone={"name": "m", "sha256": "0", "output_dim": [128]}),
    "backbone output_dim is Infinity": _with(backbone='{"name": "m", "sha256": "0", "output_dim": Infinity}'),
    "bits is a float": _with(bits="64.0"),
    "bits is huge": _with(bits="9" * 5000),
    "bits zero": _with(bits="0"),
    "bits not multiple of 8": _with(bits="12"),
    "format is a float": _with(format="1.0"),
    "format is huge": _with(format="1" * 5000),
    "format missing": _with(format=None),
    "value is not a string": {**GOOD, "hashindex.bits": 64},
    "value oversized": _with(training=json.dumps({"loss": "x" * 100_000, "data": "y", "date": "z"})),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_metadata_is_an_index_format_error(case):
    with pytest.raises(IndexFormatError):
        ModelMetadata.from_props(BAD[case], source="m.onnx")


def test_a_non_mapping_is_refused():
    with pytest.raises(IndexFormatError):
        ModelMetadata.from_props([("hashindex.bits", "8")])

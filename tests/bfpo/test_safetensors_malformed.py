"""Malformed safetensors files end in ModelError naming the file and the field, never another exception: the
cases found by hand (truncated data, offsets past the end or overlapping, a 2^62 header length, a header that is a
list) and a hypothesis fuzzer over the header's fields and the file's bytes."""

import json
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bfpo import ModelError
from bfpo.model import safetensors_io

TENSORS = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones((4,), np.int32)}


def valid_file(path):
    safetensors_io.write(path, [(n, t.shape, t.dtype) for n, t in TENSORS.items()], TENSORS.__getitem__)
    return path.read_bytes()


def with_header(path, header: object, data: bytes) -> None:
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)


def parts(raw: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def read_all(path) -> None:
    f = safetensors_io.SafetensorsFile(path)
    for name in f.keys():
        np.asarray(f.get(name)).sum()


def test_a_valid_file_reads_back(tmp_path):
    valid_file(tmp_path / "m.safetensors")
    f = safetensors_io.SafetensorsFile(tmp_path / "m.safetensors")
    np.testing.assert_array_equal(f.get("a"), TENSORS["a"])


@pytest.mark.parametrize("case,match", [
    ("truncated", "data_offsets .* within the file's"),
    ("past_end", "data_offsets .* within the file's"),
    ("overlap", "overlap in the data"),
    ("huge_length", "header length 4611686018427387904 exceeds"),
    ("list_header", "the header is a JSON list"),
    ("wrong_size", "hold 20 bytes, but shape"),
    ("bad_shape", "shape .* is not a list of non-negative integers"),
    ("bad_dtype", "has dtype 'F99'"),
    ("not_an_entry", "expected an object with dtype, shape and data_offsets"),
])
def test_each_known_malformation_names_its_field(tmp_path, case, match):
    path = tmp_path / "m.safetensors"
    header, data = parts(valid_file(path))
    if case == "truncated":
        path.write_bytes(path.read_bytes()[:-5])
    elif case == "huge_length":
        path.write_bytes(struct.pack("<Q", 2 ** 62) + path.read_bytes()[8:])
    elif case == "list_header":
        with_header(path, [header], data)
    else:
        edits = {"past_end": ("b", "data_offsets", [24, 400]), "overlap": ("b", "data_offsets", [20, 36]),
                 "wrong_size": ("a", "data_offsets", [0, 20]), "bad_shape": ("a", "shape", [2, -3]),
                 "bad_dtype": ("a", "dtype", "F99")}
        if case == "not_an_entry":
            header["a"] = [1, 2]
        else:
            name, key, value = edits[case]
            header[name][key] = value
        with_header(path, header, data)
    with pytest.raises(ModelError, match=rf"{path}: .*{match}"):
        read_all(path)


_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 64, 2 ** 64), st.text(max_size=4),
                    st.lists(st.integers(-50, 400), max_size=3), st.dictionaries(st.text(max_size=3), st.integers()))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tensor=st.sampled_from(["a", "b", "__metadata__", "c"]), key=st.sampled_from(["dtype", "shape", "data_offsets"]),
       value=_VALUES, cut=st.integers(0, 80), flip=st.integers(0, 200))
def test_fuzzed_files_end_in_model_error_or_read_correctly(tmp_path, tensor, key, value, cut, flip):
    path = tmp_path / "fuzz.safetensors"
    header, data = parts(valid_file(path))
    if tensor == "__metadata__":
        header[tensor] = value
    else:
        header.setdefault(tensor, {})[key] = value
    with_header(path, header, data)
    raw = bytearray(path.read_bytes())
    raw = raw[:len(raw) - cut] if cut % 3 == 0 else raw
    if flip < len(raw) and flip % 5 == 0:
        raw[flip] ^= 0xFF
    path.write_bytes(bytes(raw))
    try:
        read_all(path)
    except ModelError as e:
        assert str(path) in str(e)

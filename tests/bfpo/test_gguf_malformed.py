"""Malformed GGUF files end in the package's own error naming the file, never another exception, and a value of
the wrong type is refused rather than converted: a hypothesis fuzzer over the metadata (keys dropped, values of
other types, out of range), the tensor table (tensors dropped, reshaped, retyped, added) and the raw bytes
(flipped or cut short)."""

import re
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

gguf = pytest.importorskip("gguf")

sys.path.insert(0, str(Path(__file__).parent))
from lm_reference import CHAT_TEMPLATE, tiny_bpe  # noqa: E402

from bfpo.errors import BFPOError  # noqa: E402
from bfpo.model.gguf_file import GGUFFile  # noqa: E402
from bfpo.model.load_gguf import config_from_gguf, load_gguf, tokenizer_from_gguf  # noqa: E402

pytestmark = pytest.mark.unsharded  # loads onto one device, on purpose

V = gguf.GGUFValueType
LAYERS, D, FFN, HEADS, KV_HEADS = 2, 16, 32, 2, 1
TOKENS, TOKEN_TYPES, MERGES = tiny_bpe()


def base_metadata() -> dict[str, tuple[V, object]]:
    return {
        "llama.block_count": (V.UINT32, LAYERS),
        "llama.context_length": (V.UINT32, 128),
        "llama.embedding_length": (V.UINT32, D),
        "llama.feed_forward_length": (V.UINT32, FFN),
        "llama.attention.head_count": (V.UINT32, HEADS),
        "llama.attention.head_count_kv": (V.UINT32, KV_HEADS),
        "llama.rope.freq_base": (V.FLOAT32, 10000.0),
        "llama.attention.layer_norm_rms_epsilon": (V.FLOAT32, 1e-5),
        "llama.vocab_size": (V.UINT32, len(TOKENS)),
        "tokenizer.ggml.model": (V.STRING, "gpt2"),
        "tokenizer.ggml.tokens": (V.ARRAY, list(TOKENS)),
        "tokenizer.ggml.token_type": (V.ARRAY, list(TOKEN_TYPES)),
        "tokenizer.ggml.merges": (V.ARRAY, list(MERGES)),
        "tokenizer.ggml.bos_token_id": (V.UINT32, 1),
        "tokenizer.ggml.eos_token_id": (V.UINT32, 2),
        "tokenizer.chat_template": (V.STRING, CHAT_TEMPLATE),
    }


def base_tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    head = D // HEADS
    shapes = {"token_embd.weight": (len(TOKENS), D), "output_norm.weight": (D,), "output.weight": (len(TOKENS), D)}
    for i in range(LAYERS):
        shapes.update({f"blk.{i}.attn_norm.weight": (D,), f"blk.{i}.ffn_norm.weight": (D,),
                       f"blk.{i}.attn_q.weight": (D, D), f"blk.{i}.attn_k.weight": (KV_HEADS * head, D),
                       f"blk.{i}.attn_v.weight": (KV_HEADS * head, D), f"blk.{i}.attn_output.weight": (D, D),
                       f"blk.{i}.ffn_gate.weight": (FFN, D), f"blk.{i}.ffn_up.weight": (FFN, D),
                       f"blk.{i}.ffn_down.weight": (D, FFN)})
    return {name: rng.normal(size=shape).astype(np.float32) for name, shape in shapes.items()}


def write(path: Path, metadata: dict, tensors: dict[str, np.ndarray], arch: object = "llama") -> Path:
    w = gguf.GGUFWriter(str(path), arch="llama")
    if arch != "llama":  # the writer adds general.architecture itself; replace it
        w.kv_data[0].pop("general.architecture", None)
        if arch is not None:
            w.add_key_value("general.architecture", *arch)
    for key, (vtype, value) in metadata.items():
        w.add_key_value(key, value, vtype)
    for name, x in tensors.items():
        w.add_tensor(name, x)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def outcome(path: Path) -> str:
    """"ok" or the package error's message; anything else fails the test."""
    try:
        GGUFFile(path)
        config_from_gguf(GGUFFile(path))
        load_gguf(path)
        tokenizer_from_gguf(path)
    except BFPOError as e:
        assert str(path) in str(e), f"the error does not name the file: {e}"
        return str(e)
    return "ok"


def test_the_base_file_loads(tmp_path):
    path = write(tmp_path / "m.gguf", base_metadata(), base_tensors())
    assert outcome(path) == "ok"
    assert config_from_gguf(GGUFFile(path)).num_kv_heads == KV_HEADS


WRONG_VALUES = st.sampled_from([
    (V.STRING, "2"), (V.FLOAT32, 2.5), (V.FLOAT32, float("nan")), (V.BOOL, True), (V.INT32, -3), (V.INT32, 0),
    (V.UINT64, 2**63), (V.ARRAY, [1, 2]), (V.ARRAY, ["a", "b"]), (V.UINT32, 7), (V.UINT32, 10**9),
    (V.STRING, ""), (V.FLOAT64, 1e300), (V.ARRAY, [0.5]),
])


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_metadata_fuzz(tmp_path, data):
    metadata = base_metadata()
    key = data.draw(st.sampled_from(sorted(metadata)), label="key")
    if data.draw(st.booleans(), label="drop"):
        del metadata[key]
    else:
        metadata[key] = data.draw(WRONG_VALUES, label="value")
    outcome(write(tmp_path / "m.gguf", metadata, base_tensors()))


def test_a_value_of_the_wrong_type_is_refused_not_converted(tmp_path):
    for key, value, match in [
        ("llama.block_count", (V.STRING, "2"), r"llama.block_count. = .2. \(type STRING\) must be an integer >= 1"),
        ("llama.attention.head_count_kv", (V.FLOAT32, 1.0),
         r"head_count_kv. = 1.0 \(type FLOAT32\) must be an integer >= 1"),
        ("llama.rope.freq_base", (V.STRING, "1e4"), r"llama.rope.freq_base.* must be a number"),
        ("tokenizer.ggml.eos_token_id", (V.UINT32, 99999), r"tokenizer.ggml.eos_token_id.* 99999"),
    ]:
        metadata = {**base_metadata(), key: value}
        assert re.search(match, outcome(write(tmp_path / "m.gguf", metadata, base_tensors()))), key


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_tensor_table_fuzz(tmp_path, data):
    tensors = base_tensors()
    name = data.draw(st.sampled_from(sorted(tensors)), label="tensor")
    change = data.draw(st.sampled_from(["drop", "transpose", "flatten", "int32", "float16", "extra", "rename"]),
                       label="change")
    x = tensors[name]
    if change == "drop":
        del tensors[name]
    elif change == "transpose":
        tensors[name] = np.ascontiguousarray(x.T if x.ndim == 2 else x[None])
    elif change == "flatten":
        tensors[name] = x.reshape(-1)
    elif change == "int32":
        tensors[name] = x.astype(np.int32)
    elif change == "float16":
        tensors[name] = x.astype(np.float16)
    elif change == "extra":
        tensors["blk.9.attn_q.weight"] = x
    else:
        tensors[name.replace("weight", "wieght")] = tensors.pop(name)
    outcome(write(tmp_path / "m.gguf", base_metadata(), tensors))


@pytest.fixture(scope="module")
def valid_file(tmp_path_factory) -> Path:
    return write(tmp_path_factory.mktemp("gguf") / "m.gguf", base_metadata(), base_tensors())


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_byte_fuzz(tmp_path, valid_file, data):
    valid_bytes = valid_file.read_bytes()
    raw = bytearray(valid_bytes)
    header_end = valid_bytes.index(b"blk.0.ffn_down.weight") + 200  # the metadata and tensor table
    if data.draw(st.booleans(), label="truncate"):
        raw = raw[:data.draw(st.integers(0, len(raw) - 1), label="length")]
    else:
        for _ in range(data.draw(st.integers(1, 4), label="flips")):
            at = data.draw(st.integers(0, header_end), label="at")
            raw[at] = data.draw(st.integers(0, 255), label="byte")
    path = tmp_path / "m.gguf"
    path.write_bytes(bytes(raw))
    outcome(path)

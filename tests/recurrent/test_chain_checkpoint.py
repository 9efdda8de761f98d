"""The chain checkpoint (safetensors + JSON): a compiled program read back is the same chain array for array
and answers as the program does; every malformed directory is refused naming the file and the field."""

import json

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from recurrent import CompileError, compile_program
from recurrent.chain import evaluate
from recurrent.export.chain_checkpoint import load_chain, save_chain
from recurrent.lsrl.interpreter import run
from recurrent.programs.tok2tok import Tok2TokSpec, random_dictionary, tok2tok_answers, tok2tok_program
from recurrent.programs.tok2tok import tok2tok_prompts


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    prog = tok2tok_program(Tok2TokSpec(key_length=2))
    chain = compile_program(prog)
    out = tmp_path_factory.mktemp("chain") / "tok2tok"
    save_chain(chain, out, program={"name": "tok2tok", "key_length": 2})
    return prog, chain, out


def test_round_trip_is_exact_and_answers(saved):
    prog, chain, out = saved
    back, meta = load_chain(out)
    assert back.in_dim == chain.in_dim and len(back.layers) == len(chain.layers)
    for a, b in zip(chain.layers, back.layers):
        assert a.kind == b.kind and a.arrays().keys() == b.arrays().keys()
        for k in a.arrays():
            np.testing.assert_array_equal(a.arrays()[k], b.arrays()[k])
    assert meta["summary"]["recurrent_dims"] == chain.summary().recurrent_dims
    assert meta["program"] == {"name": "tok2tok", "key_length": 2}
    keys, values = random_dictionary(np.random.default_rng(0), 2, 12, 6)
    toks = tok2tok_prompts(keys[:4], keys, values)
    got = evaluate(back, toks)
    np.testing.assert_array_equal(got, evaluate(chain, toks))
    np.testing.assert_allclose(got[:1], run(prog, toks[:1]), atol=1e-9, rtol=0)
    np.testing.assert_allclose(got[:, -2:, 0], tok2tok_answers(keys[:4], keys, values), atol=1e-9, rtol=0)


def test_an_existing_chain_is_not_overwritten(saved):
    _, chain, out = saved
    with pytest.raises(CompileError, match="chain.json: exists"):
        save_chain(chain, out)


def corrupt(tmp_path, saved, meta_edit=None, tensors_edit=None):
    _, _, out = saved
    target = tmp_path / "bad"
    target.mkdir()
    meta = json.loads((out / "chain.json").read_text())
    tensors = load_file(str(out / "chain.safetensors"))
    if meta_edit:
        meta_edit(meta)
    if tensors_edit:
        tensors_edit(tensors)
    (target / "chain.json").write_text(json.dumps(meta))
    save_file(tensors, str(target / "chain.safetensors"))
    return target


@pytest.mark.parametrize("meta_edit, tensors_edit, message", [
    (lambda m: m.update(format="other"), None, r"chain.json: field 'format'"),
    (lambda m: m.update(version=7), None, r"chain.json: field 'version' is 7"),
    (lambda m: m.update(in_dim=0), None, r"chain.json: field 'in_dim'"),
    (lambda m: m["layers"][1].update(kind="conv"), None, r"chain.json: layers\[1\].kind is 'conv'"),
    (lambda m: m["layers"][0].update(recurrent=99), None, r"chain.json: layers\[0\] width"),
    (None, lambda t: t.pop("layers.2.bias"), r"chain.safetensors: tensor 'layers.2.bias' missing"),
    (None, lambda t: t.update({"layers.0.A": np.zeros((2, 3))}), r"tensor 'layers.0.A' has shape \(2, 3\)"),
    (None, lambda t: t.update({"readout.bias": np.array([np.nan])}), r"'readout.bias' has non-finite"),
    (None, lambda t: t.update({"layers.99.weight": np.zeros(1)}), r"tensors \['layers.99.weight'\] are not part"),
])
def test_malformed_checkpoints_are_refused_naming_file_and_field(tmp_path, saved, meta_edit, tensors_edit, message):
    with pytest.raises(CompileError, match=message):
        load_chain(corrupt(tmp_path, saved, meta_edit, tensors_edit))


def test_missing_or_unreadable_files(tmp_path, saved):
    with pytest.raises(CompileError, match="chain.json: missing"):
        load_chain(tmp_path)
    (tmp_path / "chain.json").write_text("{not json")
    with pytest.raises(CompileError, match="chain.json: not JSON"):
        load_chain(tmp_path)
    (tmp_path / "chain.json").write_text((saved[2] / "chain.json").read_text())
    (tmp_path / "chain.safetensors").write_bytes(b"\x00" * 5)
    with pytest.raises(CompileError, match="chain.safetensors: unreadable"):
        load_chain(tmp_path)

"""A compiled program exported as a Hugging Face ``MambaForCausalLM`` directory runs in transformers' own forward
pass (float32): the dictionary lookup over 100 pairs answers every query asked, its output lane equals the chain's
float64 output, the cached token-by-token path gives the same logits, RMSNorm with the exported epsilon is the
identity bit for bit, every block boundary holds exactly one chain layer's values (the other region cleared to
zero), and a program with real-valued inputs and outputs runs through ``inputs_embeds`` to the logits."""

import json

import numpy as np
import pytest

from experiments.lsrl_export import run_hf, run_hf_streaming
from recurrent import CompileError, compile_program
from recurrent.chain import evaluate
from recurrent.export.hf_mamba import (NORM_EPS, NORM_GAIN, check_stream, hf_mamba_checkpoint, read_layout,
                                       residual_inputs, save_hf_mamba)
from recurrent.lsrl import ForEach, Input, LinState, Linear
from recurrent.programs.tok2tok import Tok2TokSpec, random_dictionary, tok2tok_answers, tok2tok_program
from recurrent.programs.tok2tok import tok2tok_prompts
from recurrent.targets.mamba import chain_to_mamba

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

PAIRS, VOCAB = 100, 128


def load(directory):
    return transformers.MambaForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def dictionary(tmp_path_factory):
    chain = compile_program(tok2tok_program(Tok2TokSpec(key_length=1)))
    prompt_len = 1 + 2 * PAIRS
    net = chain_to_mamba(chain, horizon=prompt_len)
    out = tmp_path_factory.mktemp("hf") / "tok2tok"
    layout = save_hf_mamba(net, out, vocab_size=VOCAB, program={"name": "tok2tok", "pairs": PAIRS})
    keys, values = random_dictionary(np.random.default_rng(0), 1, PAIRS, VOCAB - 1)
    return chain, net, layout, out, keys, values


def test_the_100_pair_dictionary_answers_through_transformers_forward(dictionary):
    chain, net, layout, out, keys, values = dictionary
    asked = keys[np.random.default_rng(1).choice(PAIRS, 25, replace=False)]
    toks = tok2tok_prompts(asked, keys, values)
    model = load(out)
    logits, h_last, states = run_hf(model, toks[..., 0].astype(np.int64), list(layout.block_lanes[-1]))
    np.testing.assert_array_equal(logits[:, -1:].argmax(-1), tok2tok_answers(asked, keys, values))
    y = h_last.astype(np.float64) @ net.readout_weight.T + net.readout_bias
    np.testing.assert_allclose(y, evaluate(chain, toks), atol=1e-4, rtol=0)
    assert check_stream(layout, states) < 1e6


def test_the_cached_token_by_token_path_gives_the_same_logits(dictionary):
    _, _, layout, out, keys, values = dictionary
    ids = tok2tok_prompts(keys[:1], keys, values)[..., 0].astype(np.int64)
    model = load(out)
    full = run_hf(model, ids, list(layout.block_lanes[-1]))[0][:, -3:]
    np.testing.assert_allclose(run_hf_streaming(model, ids, 3), full, atol=1e-3, rtol=0)


def test_every_block_boundary_holds_one_chain_layer_and_zeros_elsewhere(dictionary):
    _, _, layout, out, keys, values = dictionary
    ids = tok2tok_prompts(keys[:2], keys, values)[:, :40, 0].astype(np.int64)
    _, _, states = run_hf(load(out), ids, list(layout.block_lanes[-1]))
    assert len(states) == len(layout.block_lanes) + 1  # after each block, then after norm_f
    for b, h in enumerate(states[:-1]):
        others = np.ones(layout.hidden, bool)
        others[[layout.const_lane, *layout.block_lanes[b]]] = False
        np.testing.assert_array_equal(h[..., layout.const_lane], 1.0)
        assert np.abs(h[..., others]).max() < 1e-12, f"block {b} left values outside its region"
    np.testing.assert_array_equal(states[-1], states[-2])  # the final RMSNorm changed nothing


def test_rmsnorm_with_the_exported_epsilon_is_the_identity():
    from transformers.models.mamba.modeling_mamba import MambaRMSNorm

    norm = MambaRMSNorm(64, eps=NORM_EPS)
    with torch.no_grad():
        norm.weight.fill_(NORM_GAIN)
        rng = np.random.default_rng(0)
        h = rng.standard_normal((3, 5, 64)) * 10.0 ** rng.uniform(-10, 12, (3, 5, 64))
        h[0, 0] = 0.0
        h = torch.tensor(h, dtype=torch.float32)
        assert torch.equal(norm(h), h)


def test_a_real_valued_program_runs_through_inputs_embeds(tmp_path):
    x = Input(2)
    total = LinState(x, np.eye(2) * [1.0, 0.5], np.eye(2), [0.0, 0.0])
    prog = ForEach(Linear(total, [[1.0, -2.0], [0.5, 1.0]], [3.0, -1.0]))
    chain = compile_program(prog)
    net = chain_to_mamba(chain)
    layout = save_hf_mamba(net, tmp_path / "m", output="values")
    assert read_layout(tmp_path / "m") == layout
    u = np.random.default_rng(0).standard_normal((2, 30, 2))
    with torch.no_grad():
        logits = load(tmp_path / "m")(inputs_embeds=torch.tensor(residual_inputs(layout, u)), use_cache=False).logits
    np.testing.assert_allclose(logits.numpy(), evaluate(chain, u), atol=1e-5, rtol=1e-5)


def test_the_directory_is_a_standard_checkpoint(dictionary):
    _, net, layout, out, _, _ = dictionary
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "mamba" and config["architectures"] == ["MambaForCausalLM"]
    assert config["layer_norm_epsilon"] == NORM_EPS and not config["tie_word_embeddings"]
    assert config["num_hidden_layers"] == len(net.blocks) and config["hidden_size"] == layout.hidden
    assert config["expand"] * layout.hidden == layout.intermediate
    record = json.loads((out / "lsrl_layout.json").read_text())
    assert record["program"]["pairs"] == PAIRS and record["summary"]["target"] == "mamba"


def test_refusals_name_the_reason(tmp_path, dictionary):
    x = Input(2)
    net = chain_to_mamba(compile_program(ForEach(Linear(x, [[1.0, 1.0]], [0.0]))))
    with pytest.raises(CompileError, match="one token to one token"):
        hf_mamba_checkpoint(net, vocab_size=10)
    with pytest.raises(CompileError, match="vocab_size >= 2"):
        hf_mamba_checkpoint(dictionary[1], vocab_size=None)
    with pytest.raises(CompileError, match="output="):
        hf_mamba_checkpoint(net, output="logits")
    with pytest.raises(CompileError, match="not empty"):
        save_hf_mamba(dictionary[1], dictionary[3], vocab_size=VOCAB)
    with pytest.raises(CompileError, match="lsrl_layout.json: missing"):
        read_layout(tmp_path)
    with pytest.raises(CompileError, match=r"expected \(B, T, 2\)"):
        residual_inputs(hf_mamba_checkpoint(net, output="values")[2], np.zeros((1, 3, 1)))

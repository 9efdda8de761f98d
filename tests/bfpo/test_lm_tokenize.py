"""Tokenizers: the byte-level tokenizer and its ChatML template, a local directory round trip, prompt/response
encoding through the chat template, the official truncation rule, and the packed layout log-probs score."""

import json

import numpy as np
import pytest

from bfpo import DataError
from bfpo.model.config import LlamaConfig
from bfpo.tokenize import Tokenizer, pack_prompt_response, truncate_prompt_response


def test_byte_tokenizer_round_trips_and_renders_chatml():
    tok = Tokenizer.byte_level()
    text = "Grüße, 世界!\n\ttabs"
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8"))
    assert tok.decode(ids) == text
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert tok.chat_text(chat) == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                                   "<|im_start|>assistant\n")
    ids = tok.encode_chat(chat)
    assert ids[0] == 259 and ids.count(260) == 2 and tok.vocab_size == LlamaConfig.tiny().vocab_size
    assert tok.stop_ids == (258, 260)
    with pytest.raises(DataError, match=r"messages\[0\]: expected a dict with 'role' and 'content'"):
        tok.chat_text([{"text": "hi"}])


def test_tokenizer_from_a_local_directory(tmp_path):
    tok = Tokenizer.byte_level()
    tok.hf.save_pretrained(tmp_path)
    again = Tokenizer.from_directory(tmp_path, stop_tokens=("<|im_end|>",))
    chat = [{"role": "user", "content": "Ça va?"}]
    assert again.encode_chat(chat) == tok.encode_chat(chat)
    assert (again.pad_id, again.stop_ids) == (tok.pad_id, tok.stop_ids)
    with pytest.raises(DataError, match="not a local tokenizer directory"):
        Tokenizer.from_directory(tmp_path / "absent")
    weights_only = tmp_path / "weights_only"
    weights_only.mkdir()
    (weights_only / "config.json").write_text("{}")
    (weights_only / "model.safetensors").write_bytes(b"")
    with pytest.raises(DataError, match=r"no tokenizer files: expected tokenizer.json.*holds \['config.json', "
                                        r"'model.safetensors'\]"):
        Tokenizer.from_directory(weights_only)


def test_saved_stop_ids_come_back_and_a_bad_generation_config_is_named(tmp_path):
    tok = Tokenizer.byte_level()  # eos and <|im_end|>
    tok.save(tmp_path)
    assert json.loads((tmp_path / "generation_config.json").read_text())["eos_token_id"] == list(tok.stop_ids)
    assert Tokenizer.from_directory(tmp_path).stop_ids == tok.stop_ids
    for bad in ('"2"', "[1, 99999]", "true"):
        (tmp_path / "generation_config.json").write_text(f'{{"eos_token_id": {bad}}}')
        with pytest.raises(DataError, match=r"generation_config.json: eos_token_id must be a token id"):
            Tokenizer.from_directory(tmp_path)
    (tmp_path / "generation_config.json").write_text("[2]")
    with pytest.raises(DataError, match=r"generation_config.json: expected a JSON object, got list"):
        Tokenizer.from_directory(tmp_path)
    (tmp_path / "generation_config.json").write_text("{")
    with pytest.raises(DataError, match=r"generation_config.json: not a JSON file"):
        Tokenizer.from_directory(tmp_path)


def test_prompt_response_encoding_follows_the_chat_template():
    tok = Tokenizer.byte_level()
    chat = [{"role": "user", "content": "2+2?"}]
    prompt, response = tok.encode_prompt_response(chat, "4")
    assert tok.decode(prompt, skip_special_tokens=False) == tok.chat_text(chat)
    assert tok.decode(response, skip_special_tokens=False) == "4<|im_end|>\n"
    tok.hf.chat_template = "{{ messages[0]['content'] }}{% if add_generation_prompt %}!{% endif %}"
    with pytest.raises(DataError, match="renders the conversation with the reply differently"):
        tok.encode_prompt_response(chat, "4")


def test_truncation_keeps_the_prompt_end_then_cuts_the_response():
    prompt, response = list(range(10)), list(range(100, 108))
    assert truncate_prompt_response(prompt, response, max_prompt_length=4, max_length=20) == (prompt, response)
    assert truncate_prompt_response(prompt, response, max_prompt_length=4, max_length=9) == (
        [6, 7, 8, 9], [100, 101, 102, 103, 104])
    with pytest.raises(DataError, match="max_prompt_length"):
        truncate_prompt_response(prompt, response, max_prompt_length=9, max_length=9)


def test_packing_left_pads_prompts_and_right_pads_responses():
    out = pack_prompt_response([[1, 2], [3]], [[7], [8, 9, 10]], pad_id=0, prompt_length=3)
    np.testing.assert_array_equal(out["tokens"], [[0, 1, 2, 7, 0, 0], [0, 0, 3, 8, 9, 10]])
    np.testing.assert_array_equal(out["mask"], [[0, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1]])
    np.testing.assert_array_equal(out["score_mask"], [[0, 0, 0, 1, 0, 0], [0, 0, 0, 1, 1, 1]])
    with pytest.raises(DataError, match="row 1: prompt of 1 and response of 3 tokens do not fit"):
        pack_prompt_response([[1], [3]], [[7], [8, 9, 10]], pad_id=0, response_length=2)

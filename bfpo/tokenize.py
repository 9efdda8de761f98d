"""Tokenizers for the causal LM: transformers' fast tokenizers from a local directory (or built from GGUF
metadata, see ``bfpo.model.load_gguf``), chat templates applied through them, and an in-repo byte-level
tokenizer for tests that needs no files at all.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from bfpo.errors import DataError

Message = dict[str, str]

# ChatML, the format of SmolLM2-Instruct and Qwen2 chat models.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
BYTE_SPECIALS = ("<|pad|>", "<|bos|>", "<|eos|>", "<|im_start|>", "<|im_end|>", "<|reserved_0|>",
                 "<|reserved_1|>", "<|reserved_2|>")


def byte_alphabet() -> list[str]:
    """The printable stand-in character of each byte 0..255 used by byte-level BPE (Radford et al. 2019):
    printable Latin-1 bytes map to themselves, the others to the code points from 256 upwards, in order."""
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAC + 1)) | set(range(0xAE, 0xFF + 1))
    out, extra = [], 0
    for b in range(256):
        if b in printable:
            out.append(chr(b))
        else:
            out.append(chr(256 + extra))
            extra += 1
    return out


GENERATION_CONFIG = "generation_config.json"


def generation_stop_tokens(path: Path, hf_tokenizer) -> list[str]:
    """The tokens ``generation_config.json``'s ``eos_token_id`` names (an id or a list of ids), if the file
    exists."""
    if not path.is_file():
        return []
    try:
        config = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a JSON file ({e})") from e
    if not isinstance(config, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(config).__name__}")
    ids = config.get("eos_token_id")
    ids = [ids] if isinstance(ids, int) and not isinstance(ids, bool) else ids
    if ids is None:
        return []
    size = len(hf_tokenizer)
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < size
                                            for i in ids):
        raise DataError(f"{path}: eos_token_id must be a token id or a list of token ids below the vocabulary "
                        f"size {size}, not {ids!r}")
    return hf_tokenizer.convert_ids_to_tokens(ids)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tiktoken.model", "spiece.model")
"""Files one of which a tokenizer directory holds: the fast tokenizer's, or a slow one's vocabulary."""


class Tokenizer:
    """A transformers fast tokenizer plus the ids generation and batching need."""

    def __init__(self, hf_tokenizer, *, stop_tokens: Sequence[str] = ()):
        self.hf = hf_tokenizer
        if self.hf.eos_token_id is None:
            raise DataError("tokenizer has no eos_token; set one so that generation can stop")
        stops = {self.hf.eos_token_id}
        vocab = self.hf.get_vocab()
        for token in stop_tokens:
            if token not in vocab:
                raise DataError(f"stop token {token!r} is not in the vocabulary")
            stops.add(vocab[token])
        self.stop_ids: tuple[int, ...] = tuple(sorted(stops))

    @classmethod
    def from_directory(cls, path: str | os.PathLike, *, stop_tokens: Sequence[str] = ()) -> "Tokenizer":
        """From a local directory holding ``tokenizer.json`` (and its config); nothing is downloaded."""
        from transformers import AutoTokenizer

        path = Path(path)
        if not path.is_dir():
            raise DataError(f"{path}: not a local tokenizer directory (tokenizers are loaded from local files only)")
        if not any((path / name).is_file() for name in TOKENIZER_FILES):
            present = sorted(p.name for p in path.iterdir())[:12]
            raise DataError(f"{path}: no tokenizer files: expected tokenizer.json (with tokenizer_config.json), or "
                            f"a slow tokenizer's {' / '.join(TOKENIZER_FILES[1:])}; the directory holds {present}. "
                            "Copy the tokenizer files of the model's repository next to its weights")
        try:
            hf = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: could not load a tokenizer ({e})") from e
        stops = [*stop_tokens, *generation_stop_tokens(path / GENERATION_CONFIG, hf)]
        return cls(hf, stop_tokens=stops)

    def save(self, directory: str | os.PathLike) -> None:
        """The tokenizer files, plus ``generation_config.json`` listing every stop id as ``eos_token_id`` (the
        Hugging Face convention for more than one), so ``from_directory`` and other tools stop where this one
        does."""
        self.hf.save_pretrained(str(directory))
        config = {"eos_token_id": list(self.stop_ids) if len(self.stop_ids) > 1 else self.stop_ids[0]}
        for name in ("bos_token_id", "pad_token_id"):
            if getattr(self.hf, name) is not None:
                config[name] = getattr(self.hf, name)
        (Path(directory) / GENERATION_CONFIG).write_text(json.dumps(config, indent=2) + "\n")

    @classmethod
    def byte_level(cls) -> "Tokenizer":
        """256 byte tokens (id = byte value) and 8 specials (256..263): pad, bos, eos, ChatML markers, reserved.

        Exact and lossless on any UTF-8 text, with a ChatML chat template; it matches ``LlamaConfig.tiny()``.
        """
        from tokenizers import Tokenizer as RawTokenizer
        from tokenizers import decoders, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast

        vocab = {char: i for i, char in enumerate(byte_alphabet())}
        raw = RawTokenizer(models.BPE(vocab=vocab, merges=[]))
        raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        raw.decoder = decoders.ByteLevel()
        raw.add_special_tokens(list(BYTE_SPECIALS))
        hf = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<|pad|>", bos_token="<|bos|>",
                                     eos_token="<|eos|>")
        hf.chat_template = CHATML_TEMPLATE
        return cls(hf, stop_tokens=("<|im_end|>",))

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    @property
    def pad_id(self) -> int:
        """The padding id (the EOS id when the tokenizer defines none: padded positions are masked anyway)."""
        return self.hf.pad_token_id if self.hf.pad_token_id is not None else self.hf.eos_token_id

    @property
    def eos_id(self) -> int:
        return self.hf.eos_token_id

    @property
    def bos_id(self) -> int | None:
        return self.hf.bos_token_id

    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=add_special_tokens))

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def chat_text(self, messages: Sequence[Message], *, add_generation_prompt: bool = True) -> str:
        """The conversation rendered by the tokenizer's chat template."""
        if not self.hf.chat_template:
            raise DataError("tokenizer has no chat_template; set one or format the prompt yourself")
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or not {"role", "content"} <= set(message):
                raise DataError(f"messages[{i}]: expected a dict with 'role' and 'content', got {message!r}")
        return self.hf.apply_chat_template(list(messages), tokenize=False,
                                           add_generation_prompt=add_generation_prompt)

    def encode_chat(self, messages: Sequence[Message], *, add_generation_prompt: bool = True) -> list[int]:
        """Token ids of the rendered conversation; special tokens come from the template, none are added."""
        return self.encode(self.chat_text(messages, add_generation_prompt=add_generation_prompt))

    def encode_prompt_response(self, messages: Sequence[Message], response: str) -> tuple[list[int], list[int]]:
        """(prompt ids, response ids) for a conversation and the assistant reply that follows it.

        The prompt is the conversation rendered with the generation prompt; the response is the rest of the
        rendering of the conversation extended by the reply, so it carries the template's end-of-turn marker
        (ChatML's ``<|im_end|>``, Zephyr's ``</s>``) and a model trained on it learns to stop.
        """
        prompt = self.chat_text(messages, add_generation_prompt=True)
        full = self.chat_text(list(messages) + [{"role": "assistant", "content": response}],
                              add_generation_prompt=False)
        if not full.startswith(prompt):
            raise DataError("the chat template renders the conversation with the reply differently from the "
                            f"prompt alone; prompt ends {prompt[-40:]!r}, full text has {full[:len(prompt)][-40:]!r}")
        return self.encode(prompt), self.encode(full[len(prompt):])


def truncate_prompt_response(prompt: Sequence[int], response: Sequence[int], *, max_prompt_length: int,
                             max_length: int) -> tuple[list[int], list[int]]:
    """The alignment-handbook / TRL rule used by the official BFPO recipe: when prompt + response exceed
    ``max_length``, keep the last ``max_prompt_length`` prompt tokens, then cut the response to fit."""
    if not 0 < max_prompt_length < max_length:
        raise DataError(f"need 0 < max_prompt_length ({max_prompt_length}) < max_length ({max_length})")
    prompt, response = list(prompt), list(response)
    if len(prompt) + len(response) > max_length:
        prompt = prompt[-max_prompt_length:]
        response = response[:max_length - len(prompt)]
    return prompt, response


def pack_prompt_response(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int,
                         prompt_length: int | None = None, response_length: int | None = None) -> dict:
    """Rows of [prompt, left-padded to P | response, right-padded to R]: ``tokens`` [N, P+R] int32, ``mask`` (real
    tokens) and ``score_mask`` (response tokens), the layout ``bfpo.logprobs.sequence_logprobs`` scores."""
    if len(prompts) != len(responses):
        raise DataError(f"{len(prompts)} prompts but {len(responses)} responses")
    import numpy as np

    p_len = max(len(p) for p in prompts) if prompt_length is None else prompt_length
    r_len = max(len(r) for r in responses) if response_length is None else response_length
    tokens = np.full((len(prompts), p_len + r_len), pad_id, np.int32)
    mask = np.zeros(tokens.shape, bool)
    score = np.zeros(tokens.shape, bool)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        if not p or len(p) > p_len or len(r) > r_len:
            raise DataError(f"row {i}: prompt of {len(p)} and response of {len(r)} tokens do not fit lengths "
                            f"{p_len} and {r_len} (a prompt needs at least one token)")
        tokens[i, p_len - len(p):p_len] = p
        tokens[i, p_len:p_len + len(r)] = r
        mask[i, p_len - len(p):p_len + len(r)] = True
        score[i, p_len:p_len + len(r)] = True
    return {"tokens": tokens, "mask": mask, "score_mask": score}

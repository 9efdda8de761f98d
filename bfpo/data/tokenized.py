"""Preference pairs as chat-templated token ids, truncated to fixed budgets, and padded into stream batches.

Each pair (x, y_hw, y_hl) becomes three id lists through the model's chat template
(``Tokenizer.encode_prompt_response``): the prompt is the conversation rendered with the generation prompt,
each response the assistant text plus the end-of-turn / EOS tokens the template renders after it.

Truncation. The official recipe (alignment-handbook / TRL 0.7, ``truncate_prompt_response``) keeps the last
``max_prompt_length`` prompt tokens and cuts the responses to ``max_length - max_prompt_length`` when a pair
exceeds ``max_length``. A stream batch lays every row out as [prompt left-padded to P | response right-padded
to R] with one P and one R for the whole batch (``pack_prompt_response``), so a batch needs
P + R = max prompt + max response over its rows, which a per-pair rule cannot bound (a long-prompt pair and a
long-response pair in the same batch need up to 2 max_length). Here the two budgets apply to every pair:

    prompt   <- its last  P_max = max_prompt_length               tokens,
    response <- its first R_max = max_length - max_prompt_length  tokens,

which gives the official result on every pair the official rule truncates, and guarantees
P + R <= max_length <= the largest bucket for any batch. A pair that fits ``max_length`` overall but exceeds
one budget is truncated too; ``TokenizeReport`` counts every truncated prompt and response.

Batches follow the preference-batch contract: for B pairs, "chosen" / "rejected" each hold ``tokens`` int32,
``mask`` and ``score_mask`` bool [B, L] with L = the smallest bucket >= P + R; "chosen_safe" / "rejected_safe"
float32 [B]; "pair_mask" bool [B]; "example_id" int32 [B] (-1 on padding rows, whose masks are all False).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from bfpo.data.records import PreferencePair
from bfpo.errors import DataError
from bfpo.tokenize import Tokenizer, pack_prompt_response

FINGERPRINT_VERSION = b"bfpo.data.tokenized/1"


@dataclass(frozen=True, kw_only=True)
class TokenizeConfig:
    """Token budgets and the bucket lengths batches are padded to (each bucket is one jit shape)."""

    max_length: int = 1024
    max_prompt_length: int = 512
    buckets: tuple[int, ...] = (128, 256, 512, 1024)

    def __post_init__(self):
        object.__setattr__(self, "buckets", tuple(self.buckets))
        b = self.buckets
        if not b or not all(isinstance(x, int) and x > 0 for x in b) or list(b) != sorted(set(b)):
            raise DataError(f"TokenizeConfig.buckets={b!r}: expected strictly increasing positive integers")
        if not isinstance(self.max_length, int) or not 1 < self.max_length <= b[-1]:
            raise DataError(f"TokenizeConfig.max_length={self.max_length!r}: expected an integer in [2, {b[-1]}] "
                            "(the largest bucket), so that every pair fits a bucket")
        if not isinstance(self.max_prompt_length, int) or not 0 < self.max_prompt_length < self.max_length:
            raise DataError(f"TokenizeConfig.max_prompt_length={self.max_prompt_length!r}: expected an integer in "
                            f"[1, max_length - 1 = {self.max_length - 1}] (responses need at least one token)")

    @property
    def max_response_length(self) -> int:
        return self.max_length - self.max_prompt_length

    def bucket_for(self, length: int) -> int:
        for bucket in self.buckets:
            if length <= bucket:
                return bucket
        raise DataError(f"a batch of {length} tokens exceeds the largest bucket {self.buckets[-1]}")


@dataclass(frozen=True)
class TokenizeReport:
    """How many of ``pairs`` lost prompt tokens (from the left) or response tokens (from the right)."""

    pairs: int
    prompts_truncated: int
    chosen_truncated: int
    rejected_truncated: int

    @property
    def truncated(self) -> bool:
        return bool(self.prompts_truncated or self.chosen_truncated or self.rejected_truncated)

    def summary(self) -> str:
        return (f"{self.pairs} pairs; truncated: {self.prompts_truncated} prompts, {self.chosen_truncated} chosen "
                f"and {self.rejected_truncated} rejected responses")


def tokenizer_identity(tokenizer: Tokenizer) -> str:
    """What of the tokenizer, besides the ids themselves, shapes the batches: vocabulary, specials, template.

    The contents, not where they were read from: the same tokenizer files in a moved directory are the same
    tokenizer (a resume from there reuses its data and reference caches)."""
    hf = tokenizer.hf
    vocabulary = hashlib.sha256(json.dumps(sorted(hf.get_vocab().items())).encode()).hexdigest()
    described = {"class": type(hf).__name__, "vocabulary": vocabulary, "vocab_size": len(hf),
                 "pad": tokenizer.pad_id, "eos": tokenizer.eos_id, "bos": tokenizer.bos_id,
                 "chat_template": hf.chat_template or ""}
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


def ragged(lists: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(flat int32 ids, int64 offsets [N + 1]); row i is ids[offsets[i]:offsets[i + 1]]."""
    offsets = np.zeros(len(lists) + 1, np.int64)
    offsets[1:] = np.cumsum([len(x) for x in lists])
    flat = np.fromiter((t for x in lists for t in x), np.int32, count=int(offsets[-1]))
    return flat, offsets


@dataclass(frozen=True, kw_only=True, eq=False)
class TokenizedPairs:
    """All pairs as ragged id arrays plus labels; example i is pair i of the list it was built from."""

    prompt_ids: np.ndarray
    prompt_offsets: np.ndarray
    chosen_ids: np.ndarray
    chosen_offsets: np.ndarray
    rejected_ids: np.ndarray
    rejected_offsets: np.ndarray
    chosen_safe: np.ndarray  # bool [N]
    rejected_safe: np.ndarray  # bool [N]
    config: TokenizeConfig
    pad_id: int
    tokenizer_id: str
    report: TokenizeReport
    sources: tuple[str, ...] = ()

    def __post_init__(self):
        n = len(self.chosen_safe)
        for name in ("prompt", "chosen", "rejected"):
            offsets, ids = getattr(self, f"{name}_offsets"), getattr(self, f"{name}_ids")
            if offsets.shape != (n + 1,) or offsets[-1] != ids.shape[0]:
                raise DataError(f"TokenizedPairs.{name}_offsets: expected [{n + 1}] offsets ending at "
                                f"{ids.shape[0]}, got shape {offsets.shape}")
        if self.rejected_safe.shape != (n,):
            raise DataError(f"TokenizedPairs.rejected_safe: expected shape ({n},), got {self.rejected_safe.shape}")

    def __len__(self) -> int:
        return len(self.chosen_safe)

    def _row(self, name: str, i: int) -> np.ndarray:
        offsets = getattr(self, f"{name}_offsets")
        return getattr(self, f"{name}_ids")[offsets[i]:offsets[i + 1]]

    def prompt(self, i: int) -> np.ndarray:
        return self._row("prompt", i)

    def chosen(self, i: int) -> np.ndarray:
        return self._row("chosen", i)

    def rejected(self, i: int) -> np.ndarray:
        return self._row("rejected", i)

    @cached_property
    def lengths(self) -> np.ndarray:
        """Per pair, prompt + longer response: the row length a batch of this pair alone needs."""
        response = np.maximum(np.diff(self.chosen_offsets), np.diff(self.rejected_offsets))
        return (np.diff(self.prompt_offsets) + response).astype(np.int64)

    @cached_property
    def _fingerprint(self) -> str:
        h = hashlib.sha256(FINGERPRINT_VERSION)
        settings = {"max_length": self.config.max_length, "max_prompt_length": self.config.max_prompt_length,
                    "buckets": list(self.config.buckets), "pad_id": self.pad_id, "tokenizer": self.tokenizer_id}
        h.update(json.dumps(settings, sort_keys=True).encode())
        for array in (self.prompt_offsets, self.prompt_ids, self.chosen_offsets, self.chosen_ids,
                      self.rejected_offsets, self.rejected_ids):
            h.update(np.ascontiguousarray(array, array.dtype.newbyteorder("<")).tobytes())
        h.update(self.chosen_safe.astype(np.uint8).tobytes())
        h.update(self.rejected_safe.astype(np.uint8).tobytes())
        return h.hexdigest()

    def fingerprint(self) -> str:
        """sha256 over the ids, the safety labels, the truncation budgets, buckets and tokenizer identity: the
        key under which per-example results (cached reference log-probs) stay valid."""
        return self._fingerprint

    def batch(self, indices: Sequence[int], *, rows: int | None = None, mismatched: bool = False,
              partners: Sequence[int] | None = None) -> dict:
        """The stream batch of the given examples, in order, padded with masked rows up to ``rows``.

        ``mismatched`` adds the side KTO's reference point reads (Ethayarajh et al. 2024, Sec. 4.1): row i holds
        prompt i with the chosen response of the next example of the batch (cyclically), so every row pairs a
        prompt with a response written for another prompt, a fresh pairing whenever the stream reshuffles.
        ``partners`` (one example index per row) chooses the responses instead."""
        idx = np.asarray(indices, np.int64).reshape(-1)
        n = len(self)
        if idx.size == 0 or idx.min() < 0 or idx.max() >= n:
            raise DataError(f"batch indices must be non-empty and within [0, {n}), got {idx.tolist()[:8]}")
        rows = idx.size if rows is None else rows
        if rows < idx.size:
            raise DataError(f"rows={rows} is fewer than the {idx.size} examples asked for")
        if mismatched and partners is None and idx.size < 2:
            raise DataError("a batch with a mismatched side needs at least 2 examples (each prompt takes the next "
                            f"example's response) or explicit partners, got {idx.size}")
        if partners is not None:
            partners = np.asarray(partners, np.int64).reshape(-1)
            if partners.shape != idx.shape or partners.min() < 0 or partners.max() >= n or np.any(partners == idx):
                raise DataError(f"partners must give one other example in [0, {n}) per row, got "
                                f"{partners.tolist()[:8]} for examples {idx.tolist()[:8]}")
        prompts = [self.prompt(i).tolist() for i in idx]
        chosen = [self.chosen(i).tolist() for i in idx]
        rejected = [self.rejected(i).tolist() for i in idx]
        shifted = []
        if mismatched:
            shifted = chosen[1:] + chosen[:1] if partners is None else [self.chosen(j).tolist() for j in partners]
        p = max(len(x) for x in prompts)
        r = max(len(x) for x in chosen + rejected + shifted)
        length = self.config.bucket_for(p + r)
        pad = rows - idx.size
        out = {}
        sides = [("chosen", chosen), ("rejected", rejected)]
        if mismatched:
            sides.append(("mismatched", shifted))
        for side, responses in sides:
            packed = pack_prompt_response(prompts, responses, self.pad_id, p, length - p)
            out[side] = {
                "tokens": np.concatenate([packed["tokens"], np.full((pad, length), self.pad_id, np.int32)]),
                "mask": np.concatenate([packed["mask"], np.zeros((pad, length), bool)]),
                "score_mask": np.concatenate([packed["score_mask"], np.zeros((pad, length), bool)]),
            }
        padded = lambda x, fill: np.concatenate([x, np.full(pad, fill, x.dtype)])  # noqa: E731
        out["chosen_safe"] = padded(self.chosen_safe[idx].astype(np.float32), 1.0)
        out["rejected_safe"] = padded(self.rejected_safe[idx].astype(np.float32), 1.0)
        out["pair_mask"] = padded(np.ones(idx.size, bool), False)
        out["example_id"] = padded(idx.astype(np.int32), -1)
        return out


def batch_spec(rows: int, length: int, *, mismatched: bool = False, reference: bool = False) -> dict:
    """Shapes and dtypes (``jax.ShapeDtypeStruct``) of ``TokenizedPairs.batch(...)`` with ``rows`` rows at bucket
    ``length``; ``reference`` adds the cached reference log-probs ``bfpo.reference_cache.WithReference`` joins.
    What the planner compiles a step for without any data."""
    import jax

    def side():
        return {"tokens": jax.ShapeDtypeStruct((rows, length), np.int32),
                "mask": jax.ShapeDtypeStruct((rows, length), np.bool_),
                "score_mask": jax.ShapeDtypeStruct((rows, length), np.bool_)}

    out = {"chosen": side(), "rejected": side()}
    if mismatched:
        out["mismatched"] = side()
    out.update(chosen_safe=jax.ShapeDtypeStruct((rows,), np.float32),
               rejected_safe=jax.ShapeDtypeStruct((rows,), np.float32),
               pair_mask=jax.ShapeDtypeStruct((rows,), np.bool_), example_id=jax.ShapeDtypeStruct((rows,), np.int32))
    if reference:
        out.update(reference_chosen=jax.ShapeDtypeStruct((rows,), np.float32),
                   reference_rejected=jax.ShapeDtypeStruct((rows,), np.float32))
    return out


def tokenize_pairs(pairs: Sequence[PreferencePair], tokenizer: Tokenizer, config: TokenizeConfig) -> TokenizedPairs:
    """Chat-template, truncate (module docstring) and store every pair; example i is ``pairs[i]``."""
    if not pairs:
        raise DataError("tokenize_pairs: no pairs")
    prompts, chosen, rejected = [], [], []
    cut = {"prompt": 0, "chosen": 0, "rejected": 0}
    for pair in pairs:
        try:
            prompt, c = tokenizer.encode_prompt_response(pair.prompt, pair.chosen)
            prompt_again, r = tokenizer.encode_prompt_response(pair.prompt, pair.rejected)
        except DataError as e:
            raise DataError(f"{pair.source or 'pair'}: {e}") from e
        if prompt != prompt_again:
            raise DataError(f"{pair.source or 'pair'}: the prompt tokenizes differently before the two responses")
        cut["prompt"] += len(prompt) > config.max_prompt_length
        cut["chosen"] += len(c) > config.max_response_length
        cut["rejected"] += len(r) > config.max_response_length
        prompts.append(prompt[-config.max_prompt_length:])
        chosen.append(c[:config.max_response_length])
        rejected.append(r[:config.max_response_length])
    (p_ids, p_off), (c_ids, c_off), (r_ids, r_off) = ragged(prompts), ragged(chosen), ragged(rejected)
    report = TokenizeReport(pairs=len(pairs), prompts_truncated=cut["prompt"], chosen_truncated=cut["chosen"],
                            rejected_truncated=cut["rejected"])
    return TokenizedPairs(prompt_ids=p_ids, prompt_offsets=p_off, chosen_ids=c_ids, chosen_offsets=c_off,
                          rejected_ids=r_ids, rejected_offsets=r_off,
                          chosen_safe=np.array([p.chosen_safe for p in pairs], bool),
                          rejected_safe=np.array([p.rejected_safe for p in pairs], bool), config=config,
                          pad_id=int(tokenizer.pad_id), tokenizer_id=tokenizer_identity(tokenizer), report=report,
                          sources=tuple(p.source for p in pairs))

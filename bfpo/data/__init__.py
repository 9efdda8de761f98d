"""Preference data: records in the PKU-SafeRLHF, red-teaming and chosen/rejected schemas -> validated
``PreferencePair``s -> chat-templated, truncated token lists -> bucket-padded batches in resumable streams.

    pairs, report = load_pairs("train.jsonl", on_bad_record="skip")
    tokenized = tokenize_pairs(pairs, Tokenizer.byte_level(), TokenizeConfig(max_length=256, max_prompt_length=128,
                                                                              buckets=(64, 128, 256)))
    stream = PreferenceStream(tokenized, batch_size=8, seed=0)       # next(stream) -> one stream batch
    for batch in evaluation_batches(tokenized, batch_size=8): ...    # every example once, fixed order
"""

from bfpo.data.load import load_pairs
from bfpo.data.records import LoadReport, PreferencePair
from bfpo.data.streams import (EvaluationBatches, MixedStreams, PreferenceStream, ScheduledStreams,
                               evaluation_batches)
from bfpo.data.tokenized import TokenizeConfig, TokenizedPairs, TokenizeReport, tokenize_pairs

__all__ = ["EvaluationBatches", "LoadReport", "MixedStreams", "PreferencePair", "PreferenceStream", "ScheduledStreams",
           "TokenizeConfig", "TokenizeReport", "TokenizedPairs", "evaluation_batches", "load_pairs", "tokenize_pairs"]

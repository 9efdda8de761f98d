"""Preference data: records in the PKU-SafeRLHF, red-teaming and chosen/rejected schemas -> validated
``PreferencePair``s -> chat-templated, truncated token lists -> bucket-padded batches in resumable streams."""

from bfpo.data.load import load_pairs
from bfpo.data.records import LoadReport, PreferencePair

__all__ = ["LoadReport", "PreferencePair", "load_pairs"]

"""Defences against harmful fine-tuning: pure update rules and losses for the alignment stage (Booster,
Vaccine, RepNoise) and the user's fine-tuning stage (Lisa), as functions of loss functions, parameter trees and
the model's per-layer quantities."""

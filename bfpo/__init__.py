"""Bi-Factorial Preference Optimization: objectives, labeling, data, the causal LM and its evaluation."""

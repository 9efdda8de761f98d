"""Defences against harmful fine-tuning: pure update rules for the alignment stage (Booster) and the user's
fine-tuning stage (Lisa), each as a function of loss functions and parameter trees."""

"""Launchers, the one training loop (run.py), configs, plots and benchmarks. Nothing in the libraries imports this."""

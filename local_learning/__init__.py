"""Gradient-isolated local learning with successive gradient reconciliation."""

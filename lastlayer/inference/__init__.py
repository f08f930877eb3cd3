"""Inference: embed text with one base model and its domain adapters."""

"""Inference: embed text with a base and its domain adapters, and export them for other tools."""

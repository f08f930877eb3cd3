"""Embedding with trained adapters: one base model in memory, many domain adapters.

:class:`Embedder` loads a base once and any number of LoRA and full artifacts on it, and
embeds texts with one adapter, one adapter per row, every adapter at once, or routed
automatically; :mod:`lastlayer.inference.export` writes an adapter merged into its base as
a sentence-transformers folder. This package uses ``core`` and ``artifact`` only, never
``training``.
"""

from lastlayer.inference.embedder import (
    AdapterInfo,
    BaseMismatchError,
    Embedder,
    UnknownAdapterError,
)

__all__ = ["AdapterInfo", "BaseMismatchError", "Embedder", "UnknownAdapterError"]

"""Embedding with trained adapters: one base model in memory, many domain adapters.

:class:`Embedder` loads a base once and any number of LoRA and full artifacts on it, and
embeds texts with one adapter, one adapter per row, every adapter at once, or routed
automatically. ``lastlayer.inference.embed`` embeds whole corpus files (``lastlayer
embed``); ``lastlayer.inference.export`` writes adapters for other tools. This package
builds on ``core``, never on ``training``.
"""

from lastlayer.inference.embedder import (
    AdapterInfo,
    BaseMismatchError,
    Embedder,
    UnknownAdapterError,
)

__all__ = ["AdapterInfo", "BaseMismatchError", "Embedder", "UnknownAdapterError"]

"""Embedding with trained adapters: one base model in memory, many domain adapters.

:class:`Embedder` loads a base once and any number of LoRA and full artifacts on it, and
embeds texts with one adapter, one adapter per row, every adapter at once, or routed
automatically; :mod:`lastlayer.inference.embed` embeds whole corpus files (``lastlayer
embed``: resumable, on many processes); :mod:`lastlayer.inference.export` writes an adapter
merged into its base as a sentence-transformers folder. This package builds on ``core``
(and the base modules: config, corpus, artifact, extras, hub), never on ``training``.
"""

from lastlayer.inference.embedder import (
    AdapterInfo,
    AdapterLoadError,
    BaseMismatchError,
    Embedder,
    Embeddings,
    UnknownAdapterError,
)

__all__ = ["AdapterInfo", "AdapterLoadError", "BaseMismatchError", "Embedder", "Embeddings",
           "UnknownAdapterError"]

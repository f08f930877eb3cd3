"""A plain stand-in for ``lastlayer.inference.Embedder`` with its API, for testing
``lastlayer embed`` on tiny real models.

No shared trunk: the base is one ``Encoder`` (``load_encoder``) and every adapter its own
base + PEFT adapter (``load_adapter``, the plain PEFT way). Routing is a fixed rule on the
text's length. It records every ``encode`` call, and can raise on a chosen call to
simulate an interruption.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from plain_peft import load_adapter

from lastlayer.config import ModelConfig
from lastlayer.core.encoder import Encoder, load_encoder
from lastlayer.core.engine import AUTO, Embeddings
from lastlayer.core.target import model_config_of

MAX_LENGTH = 32


class Interrupted(RuntimeError):
    """Raised by :meth:`PlainEmbedder.encode` on the call ``fail_on_call``."""


class PlainEmbedder:
    """``Embedder(base, device, dtype, quantization)`` with ``load``, ``encode`` (also
    ``adapter="auto"``) and ``route``.

    Attributes:
        calls: The texts of every ``encode`` call, in order.
        fail_on_call: Raise :class:`Interrupted` on this call (1-based), None: never.
        instances: Every embedder made (class attribute), for tests that build one
            through the command line.
    """

    instances: list[PlainEmbedder] = []

    def __init__(self, base: str | Path, device=None, dtype=None, quantization=None):
        cfg = ModelConfig(name_or_path=str(base), max_length=MAX_LENGTH)
        self.base = load_encoder(cfg, device or "cpu")
        self.adapters: dict[str, Encoder] = {}
        self.calls: list[list[str]] = []
        self.fail_on_call: int | None = None
        PlainEmbedder.instances.append(self)

    def load(self, path: str | Path, name: str | None = None) -> str:
        name = name or Path(path).name
        config = dataclasses.replace(model_config_of(path), max_length=MAX_LENGTH)
        self.adapters[name] = load_adapter(load_encoder(config, "cpu"), path)
        return name

    def encode(self, texts, adapter=None, batch_size: int = 32, normalize=None,
               progress=None) -> Embeddings:
        """Recorded; ``adapter="auto"``: :meth:`route`, then the same one call with those
        names."""
        routed = self.route(texts) if adapter == AUTO else None
        adapter = routed if routed is not None else adapter
        self.calls.append(list(texts))
        if self.fail_on_call == len(self.calls):
            raise Interrupted(f"interrupted on encode call {len(self.calls)}")
        names = list(adapter) if isinstance(adapter, list) else [adapter] * len(texts)
        out = np.zeros((len(texts), self.base.model.config.hidden_size), dtype=np.float32)
        for name in dict.fromkeys(names):  # each adapter's rows, in one call of their own
            if name is not None and name not in self.adapters:
                raise ValueError(f"unknown adapter {name!r}")
            encoder = self.base if name is None else self.adapters[name]
            rows = [i for i, n in enumerate(names) if n == name]
            vectors = encoder.encode([texts[i] for i in rows], batch_size, progress=False)
            out[rows] = vectors.numpy()
        return Embeddings(out, np.zeros(len(texts), dtype=np.int64), routed)

    def route(self, texts, batch_size: int = 32, progress=None) -> list[str | None]:
        """Text length modulo (adapters + 1): 0 -> the base, i -> the i-th adapter."""
        names = [None, *sorted(self.adapters)]
        return [names[len(text) % len(names)] for text in texts]

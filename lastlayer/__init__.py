"""lastlayer: self-supervised top-k adapters that make text embeddings better in your domain.

The public API (everything else is reachable through its sub-packages, see the README):

- ``load_recipe(path, overrides)``: a validated training recipe (``lastlayer.config``);
- ``train(recipe)``: train, evaluate and save the adapter it describes
  (``lastlayer.training.run.run``; returns the trained encoder, metrics and folder);
- ``Embedder(base)``: one base model in memory and any number of trained adapters on it,
  chosen per call, per row, or by routing (``lastlayer.inference``);
- ``keep_freed_memory()``: make the C heap keep each forward's freed memory for the next
  one (``lastlayer.core.allocator``: up to 1.57x faster ``encode`` where glibc would hand
  it back; the ``lastlayer`` command does it for itself, a program calls it once).

Importing the package imports nothing heavy: ``train`` and ``Embedder`` load torch on
first use, and nothing of ``lastlayer.core`` loads before one of these three is asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lastlayer.config import load_recipe

if TYPE_CHECKING:
    from lastlayer.core.allocator import keep_freed_memory
    from lastlayer.inference import Embedder
    from lastlayer.training.run import run as train

from lastlayer._version import __version__

__all__ = ["Embedder", "__version__", "keep_freed_memory", "load_recipe", "train"]


def __getattr__(name: str) -> Any:
    """The heavy parts of the public API, imported when first used."""
    if name == "train":
        from lastlayer.training.run import run

        return run
    if name == "Embedder":
        from lastlayer.inference import Embedder

        return Embedder
    if name == "keep_freed_memory":  # torch-free, but lastlayer.core loads only when asked
        from lastlayer.core.allocator import keep_freed_memory

        return keep_freed_memory
    raise AttributeError(f"module 'lastlayer' has no attribute {name!r}")

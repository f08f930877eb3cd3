"""Adapters on the Hugging Face Hub: pull one by ``ORG/NAME[@REVISION]``, push one, its card.

- :mod:`~lastlayer.hub.refs`: :func:`resolve_adapter`, the one resolver every command
  uses (a local folder, or a Hub id fetched into the Hugging Face cache; offline, the
  cache), and its lenient form :func:`adapter_folder`;
- :mod:`~lastlayer.hub.push`: :func:`push` uploads exactly an artifact's files, with a
  fresh model card, after the portability check;
- :mod:`~lastlayer.hub.cache`: :func:`cached_adapters` lists the adapters in the cache
  (``lastlayer ls``);
- :mod:`~lastlayer.hub.card`: :func:`model_card`, the card's data from the typed artifact
  and its prose from ``model_card_template.md``.

Like :mod:`lastlayer.artifact`, this package imports no torch; ``huggingface_hub`` is
imported when a function runs, so ``lastlayer --help`` stays fast.
"""

from lastlayer.hub.cache import CachedAdapter, cached_adapters
from lastlayer.hub.card import card_metadata, hub_dataset_id, model_card
from lastlayer.hub.push import PushResult, push
from lastlayer.hub.refs import (
    HubError,
    HubRef,
    NotAnAdapterError,
    adapter_folder,
    parse_ref,
    resolve_adapter,
    split_revision,
)

__all__ = [
    "CachedAdapter", "HubError", "HubRef", "NotAnAdapterError", "PushResult",
    "adapter_folder", "cached_adapters", "card_metadata", "hub_dataset_id", "model_card",
    "parse_ref", "push", "resolve_adapter", "split_revision",
]

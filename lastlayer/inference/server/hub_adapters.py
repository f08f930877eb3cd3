"""Adapters by Hub id on first use (``--hub-adapters``): an allowlist of ``fnmatch`` patterns,
and one registration per id however many requests name it at once.

A request whose ``model`` is ``ORG/NAME[@REVISION]``, not loaded yet, and allowed by a
pattern (matched against ``ORG/NAME``) is registered through
:meth:`~lastlayer.inference.Embedder.load` under that very name, in a worker thread: the
artifact's files come through the Hugging Face cache (:func:`lastlayer.hub.resolve_adapter`:
safetensors and metadata only; offline, the cache), and the base fingerprint is checked
as for a local artifact. Nothing is fetched for an id outside the allowlist, and nothing
at all without one.
"""

from __future__ import annotations

import asyncio
import fnmatch
from pathlib import Path

from lastlayer import artifact
from lastlayer.hub import HubError, parse_ref
from lastlayer.inference.embedder import BaseMismatchError, Embedder
from lastlayer.inference.server.errors import APIError


class HubAdapters:
    """Registers allowed Hub adapters on their first request (single-flight per id)."""

    def __init__(self, embedder: Embedder, patterns: tuple[str, ...],
                 reserved: set[str] | frozenset[str] = frozenset()) -> None:
        self.embedder = embedder
        self.patterns = patterns
        self.reserved = reserved  # names of the base: never fetched as adapters
        self._pending: dict[str, asyncio.Future] = {}  # registrations running

    def allowed(self, model: str) -> bool:
        """Whether ``model`` is a Hub id a pattern allows (never a local path)."""
        ref = parse_ref(model)
        if ref is None or model in self.reserved:
            return False
        return (any(fnmatch.fnmatchcase(ref.repo_id, p) for p in self.patterns)
                and not Path(model).expanduser().exists())

    async def ensure(self, model: str) -> None:
        """Register ``model`` if the allowlist allows it and it is not loaded yet.

        Raises:
            APIError: 404 when it cannot be fetched (not on the Hub, not cached offline, not
                a lastlayer adapter); 400 when it is not an adapter of this base.
        """
        if not self.patterns or model in self.embedder.adapters or not self.allowed(model):
            return
        pending = self._pending.get(model)
        if pending is None:  # one registration, not tied to the request that started it
            pending = self._pending[model] = asyncio.ensure_future(
                asyncio.to_thread(self._register, model))
            pending.add_done_callback(lambda _: self._pending.pop(model, None))
        await asyncio.shield(pending)

    def _register(self, model: str) -> None:
        if model in self.embedder.adapters:
            return
        try:
            self.embedder.load(model, name=model)
        except HubError as err:
            raise APIError(404, f"the model {model!r} cannot be loaded from the Hub: {err}",
                           param="model", code="model_not_found") from err
        except (artifact.ArtifactError, BaseMismatchError) as err:
            raise APIError(400, f"the Hub adapter {model!r} cannot be served: {err}",
                           param="model", code="invalid_adapter") from err
        except ValueError as err:  # loaded under that name meanwhile
            if model not in self.embedder.adapters:
                raise APIError(400, str(err), param="model", code="invalid_adapter") from err

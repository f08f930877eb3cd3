"""Which model a request names: the base (its id or an alias), an adapter, ``BASE:ADAPTER``
or ``BASE:auto``; and the ``GET /v1/models`` listing (adapters name the base as ``parent``,
as vLLM does; every registered adapter, with ``resident``: whether its head is in memory).
Only loaded adapters resolve: any other name is a 404, never the base."""

from __future__ import annotations

from lastlayer.inference.embedder import AUTO, Embedder
from lastlayer.inference.server.errors import APIError

OWNER = "lastlayer"


class ModelNames:
    """Resolves the request's ``model`` to adapter keys, and lists the models."""

    def __init__(self, embedder: Embedder, model_id: str | None) -> None:
        self.embedder = embedder
        self.id = model_id or embedder.base_id
        self.base_names = {self.id, *embedder.base_names}

    def check_name(self, name: str) -> None:
        """Refuse an adapter name that would shadow the base or the routing suffix."""
        if name in self.base_names or name.endswith(f":{AUTO}"):
            raise ValueError(f"an adapter cannot be named {name!r}: that names the base model "
                             "in requests; choose another name.")

    def resolve(self, model: str) -> str | None:
        """The adapter name for ``model`` (None: the base; ``"auto"``: routed).

        Raises:
            APIError: 404 for a model that is neither the base nor a loaded adapter.
        """
        adapters = self.embedder.adapters
        if model in self.base_names:
            return None
        if model in adapters:
            return model
        base, sep, adapter = model.rpartition(":")
        if sep and base in self.base_names:
            if adapter == AUTO:
                if not any(info.routable for info in adapters.values()):
                    raise APIError(400, f"{model!r} routes each input, but no loaded adapter "
                                   "has a routing signature; name an adapter instead "
                                   f"({self.id}:ADAPTER).", param="model",
                                   code="routing_unavailable")
                return AUTO
            if adapter in adapters:
                return adapter
        names = ", ".join([self.id, *adapters]) or self.id
        raise APIError(404, f"the model {model!r} does not exist; served: {names} "
                       f"(or {self.id}:ADAPTER, {self.id}:auto). See GET /v1/models.",
                       param="model", code="model_not_found")

    def listing(self, created: int) -> dict:
        base = {"id": self.id, "object": "model", "created": created, "owned_by": OWNER,
                "root": self.id, "parent": None}
        resident = self.embedder.resident_names()
        data = [base] + [
            {"id": name, "object": "model", "created": created, "owned_by": OWNER,
             "root": info.source or str(info.path), "parent": self.id,
             "kind": info.kind, "top_k": info.top_k, "routable": info.routable,
             "resident": name in resident}
            for name, info in self.embedder.adapters.items()
        ]
        return {"object": "list", "data": data}

"""An OpenAI-compatible embeddings server: one base model, many adapters, batched across requests.

``create_app(embedder, settings)`` builds a FastAPI app around an :class:`Embedder`;
``serve`` runs it under uvicorn (``lastlayer serve``). Endpoints:

- ``POST /v1/embeddings`` in the OpenAI shape; ``model`` is the base (its id or an alias),
  ``BASE:ADAPTER``, an adapter name, or ``BASE:auto`` (each input routed);
- ``GET /v1/models`` (base and adapters; adapters name the base as ``parent``, as vLLM does);
- ``POST /v1/adapters`` and ``DELETE /v1/adapters/{name}`` (only with adapter updates on);
- ``GET /health`` and ``GET /metrics`` (Prometheus).

One module per job:

============  ==============================================================================
module        job
============  ==============================================================================
``app``       the FastAPI app: routes, API key, metrics middleware, the OpenAPI schema
``body``      reading a body from a hostile client: size, content type, JSON traps -> 4xx
``models``    the request and response bodies (pydantic), written into the OpenAPI schema
``names``     which model a request names (base, adapter, ``BASE:auto``); ``/v1/models``
``batcher``   gathering concurrent requests into one encode call in a worker thread
``adapters``  which adapters may be served: ``--adapters`` and confined runtime additions
``errors``    the OpenAI error envelope (:class:`APIError`)
``metrics``   the Prometheus metrics of one app
``run``       ``serve()``: uvicorn with its connection limits, a drained stop on SIGTERM
============  ==============================================================================

Needs the ``serve`` extra (fastapi, uvicorn, prometheus-client).
"""

from lastlayer.config.commands import ServeSettings  # the defaults of `lastlayer serve`
from lastlayer.inference.server.adapters import find_adapters
from lastlayer.inference.server.app import create_app
from lastlayer.inference.server.batcher import Batcher
from lastlayer.inference.server.errors import APIError, QueueFullError
from lastlayer.inference.server.metrics import Metrics
from lastlayer.inference.server.models import AdapterRequest, EmbeddingRequest
from lastlayer.inference.server.run import serve

__all__ = ["APIError", "AdapterRequest", "Batcher", "EmbeddingRequest", "Metrics",
           "QueueFullError", "ServeSettings", "create_app", "find_adapters", "serve"]

"""The FastAPI app: routes, the API key, metrics, and the OpenAPI schema of every body.

``create_app(embedder, settings)`` wires the pieces of this package together: bodies are
read by :mod:`.body` (size limit, hostile JSON), validated by the models of :mod:`.models`,
resolved to adapters by :mod:`.names`, embedded by the :mod:`.batcher`, and every failure
answered by :mod:`.errors` in the OpenAI envelope. Each route declares its request body and
its responses (success and every error status) from :mod:`.models`, so ``app.openapi()``
describes the whole API; the app does not serve it (no ``/openapi.json``, ``/docs``): tests
and ``benchmarks/fuzz_server.py`` load it in-process to fuzz the API with Schemathesis.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import time
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from lastlayer import artifact
from lastlayer.config.commands import ServeSettings
from lastlayer.inference.embedder import AUTO, BaseMismatchError, Embedder, UnknownAdapterError
from lastlayer.inference.server import models as m
from lastlayer.inference.server.adapters import allowed_path, check_updates
from lastlayer.inference.server.batcher import Batcher
from lastlayer.inference.server.body import BodyDeadline, parse
from lastlayer.inference.server.errors import TYPES, APIError, validation_error
from lastlayer.inference.server.hub_adapters import HubAdapters
from lastlayer.inference.server.metrics import Metrics
from lastlayer.inference.server.names import OWNER, ModelNames

COLD_HEADER = "x-lastlayer-cold"
"""Set on an answer whose adapter's head was not in memory when the request came (it waited
for a load): for benchmarks and logs; OpenAI clients ignore it."""

_ERRORS = {400: "malformed body or invalid value", 401: "missing or wrong API key",
           404: "unknown model or adapter", 408: "the body stopped arriving",
           413: "body or input list too large",
           415: "body not JSON", 429: "queue full (Retry-After)",
           500: "the model failed", 503: "shutting down"}


def _responses(ok: type[BaseModel], *extra: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` of a route: ``ok`` for 200, the envelope for each error status."""
    statuses = sorted({400, 401, 404, 408, 413, 415, 429, 500, 503, *extra})
    out: dict[int | str, dict[str, Any]] = {200: {"model": ok}}
    for status in statuses:
        out[status] = {"model": m.ErrorResponse, "description": _ERRORS.get(status, "refused")}
    return out


def _body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` declaring ``model`` as the JSON request body (the handler reads the
    body itself, so FastAPI would not describe it)."""
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": model.model_json_schema()}}}}


def _texts(req: m.EmbeddingRequest, max_inputs: int) -> list[str]:
    texts = [req.input] if isinstance(req.input, str) else req.input
    if any(not isinstance(t, str) for t in texts):
        raise APIError(400, "token-id arrays are not supported: send the input as text (a "
                       "string or a list of strings).", param="input", code="invalid_value")
    if not texts:
        raise APIError(400, "input is empty: send a string or a non-empty list of strings.",
                       param="input", code="invalid_value")
    if any(not t for t in texts):
        first = next(i for i, t in enumerate(texts) if not t)
        raise APIError(400, f"input[{first}] is an empty string.", param="input",
                       code="invalid_value")
    if len(texts) > max_inputs:
        raise APIError(413, f"{len(texts)} inputs in one request; the limit is {max_inputs} "
                       "(--max-inputs): split it.", param="input", code="too_many_inputs")
    return texts


def _encode_vector(vector: np.ndarray, fmt: str) -> list[float] | str:
    if fmt == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector.tolist()


def _check_format(req: m.EmbeddingRequest, dim: int) -> None:
    if req.encoding_format not in ("float", "base64"):
        raise APIError(400, f"encoding_format must be 'float' or 'base64', got "
                       f"{req.encoding_format[:100]!r}.", param="encoding_format",
                       code="invalid_value")
    if req.dimensions is not None and req.dimensions != dim:
        shown = req.dimensions if abs(req.dimensions) < 10**12 else "a huge number"
        raise APIError(400, f"dimensions={shown} is not supported: {req.model} "
                       f"embeds into {dim} dimensions only (leave dimensions "
                       "out).", param="dimensions", code="invalid_value")


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, err: APIError):
        return err.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError):
        return validation_error(err).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException):
        return APIError(err.status_code, str(err.detail), TYPES.get(err.status_code,
                        "invalid_request_error"), headers=dict(err.headers or {})).response()


def _install_auth_and_metrics(app: FastAPI, settings: ServeSettings, metrics: Metrics) -> None:
    @app.middleware("http")
    async def _auth_and_metrics(request: Request, call_next):
        path = request.url.path
        start = time.perf_counter()
        if settings.api_key is not None and (path.startswith("/v1/") or path == "/metrics"):
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                    given.strip().encode(), settings.api_key.encode()):
                response = APIError(401, "missing or wrong API key: send 'Authorization: "
                                    "Bearer <key>'.", "authentication_error",
                                    code="invalid_api_key",
                                    headers={"WWW-Authenticate": "Bearer"}).response()
                if path == "/v1/embeddings":
                    metrics.requests.labels("401", "").inc()
                return response
        response = await call_next(request)
        if path == "/v1/embeddings":
            model = getattr(request.state, "model", "")
            metrics.requests.labels(str(response.status_code), model).inc()
            metrics.latency.observe(time.perf_counter() - start)
        return response


def create_app(embedder: Embedder, settings: ServeSettings | None = None) -> FastAPI:
    """The FastAPI app serving ``embedder`` (the endpoints: the package's docstring).

    Args:
        embedder: The base and its loaded adapters (shared; adapters may be added later).
        settings: Limits and switches (default :class:`ServeSettings`).

    Raises:
        ValueError: A loaded adapter's name would shadow the base's id.
    """
    settings = settings or ServeSettings()
    metrics = Metrics()
    metrics.watch(embedder)
    models = ModelNames(embedder, settings.model_id)
    from_hub = HubAdapters(embedder, settings.hub_allowlist, models.base_names)
    for name in embedder.adapters:
        models.check_name(name)
    batcher = Batcher(embedder, settings, metrics)
    created = int(time.time())
    admin_lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(title="lastlayer", version="1", lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None)
    app.state.embedder, app.state.settings, app.state.metrics = embedder, settings, metrics
    app.state.batcher = batcher
    _install_error_handlers(app)
    _install_auth_and_metrics(app, settings, metrics)
    app.add_middleware(BodyDeadline)  # outermost: every read of the body is timed

    @app.post("/v1/embeddings", response_model=None, openapi_extra=_body(m.EmbeddingRequest),
              responses=_responses(m.EmbeddingResponse))
    async def embeddings(request: Request):
        req = await parse(request, m.EmbeddingRequest, settings.max_body_bytes)
        await from_hub.ensure(req.model)  # an allowed Hub id: registered on first use
        adapter = models.resolve(req.model)
        request.state.model = req.model
        _check_format(req, embedder.dim)
        texts = _texts(req, settings.max_inputs)
        keys = None if adapter == AUTO else [adapter] * len(texts)
        cold = adapter not in (None, AUTO) and not embedder.is_resident(adapter)
        vectors, tokens = await batcher.submit(texts, keys)
        data = [{"object": "embedding", "index": i,
                 "embedding": _encode_vector(vector, req.encoding_format)}
                for i, vector in enumerate(vectors)]
        used = int(sum(tokens))
        # JSONResponse directly: FastAPI's generic encoder would walk every float
        return JSONResponse({"object": "list", "data": data, "model": req.model,
                             "usage": {"prompt_tokens": used, "total_tokens": used}},
                            headers={COLD_HEADER: "1"} if cold else None)

    @app.get("/v1/models", response_model=m.ModelList, responses=_responses(m.ModelList))
    async def list_models():
        return models.listing(created)

    @app.get("/health", response_model=m.Health, response_model_exclude_none=True)
    async def health():
        # open to probes; with a key it names nothing (GET /v1/models lists the models)
        if settings.api_key is not None:
            return {"status": "ok"}
        return {"status": "ok", "model": models.id, "adapters": sorted(embedder.adapters)}

    @app.get("/metrics", response_class=Response, responses={
        200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}},
              "description": "Prometheus text format"},
        401: {"model": m.ErrorResponse, "description": _ERRORS[401]}})
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/adapters", response_model=None, openapi_extra=_body(m.AdapterRequest),
              responses=_responses(m.AdapterAdded, 403, 409))
    async def add_adapter(request: Request):
        check_updates(settings)
        req = await parse(request, m.AdapterRequest, settings.max_body_bytes)
        path = allowed_path(req.path, settings.adapters_dir)
        try:
            models.check_name(req.name)
        except ValueError as err:
            raise APIError(400, str(err), param="name", code="invalid_value") from err
        async with admin_lock:
            if req.name in embedder.adapters:
                raise APIError(409, f"an adapter named {req.name!r} is already loaded; "
                               "delete it first.", param="name", code="adapter_exists")
            try:
                await asyncio.to_thread(embedder.load, path, req.name)
            except (artifact.ArtifactError, BaseMismatchError, ValueError) as err:
                raise APIError(400, str(err), param="path", code="invalid_adapter") from err
        info = embedder.adapters[req.name]
        return JSONResponse({"id": req.name, "object": "model", "owned_by": OWNER,
                             "parent": models.id, "kind": info.kind, "top_k": info.top_k,
                             "routable": info.routable})

    @app.delete("/v1/adapters/{name}", response_model=m.AdapterDeleted,
                responses=_responses(m.AdapterDeleted, 403))
    async def delete_adapter(name: str):
        check_updates(settings)
        try:
            embedder.unload(name)
        except UnknownAdapterError as err:
            raise APIError(404, str(err), param="name", code="model_not_found") from err
        return {"id": name, "object": "model", "deleted": True}

    return app

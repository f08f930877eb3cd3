"""An OpenAI-compatible embeddings server: one base model, many adapters, batched across requests.

``create_app(embedder, ...)`` builds a FastAPI app around an :class:`Embedder`; ``serve``
runs it under uvicorn (``lastlayer serve``). Endpoints:

- ``POST /v1/embeddings`` in the OpenAI shape; ``model`` is the base (its id or an alias),
  ``BASE:ADAPTER``, an adapter name, or ``BASE:auto`` (each input routed);
- ``GET /v1/models`` (base and adapters; adapters name the base as ``parent``, as vLLM does);
- ``POST /v1/adapters`` and ``DELETE /v1/adapters/{name}`` (only with adapter updates on);
- ``GET /health`` and ``GET /metrics`` (Prometheus).

Requests arriving within a short window are gathered, whatever their adapters, and run
through one ``Embedder.encode(texts, adapter=[one name per row])`` call in a worker thread
(each request checked first, so a bad one fails alone without being encoded):
rows for different adapters share the base's bottom blocks, and the event loop never waits
on the model. Errors use the OpenAI envelope ``{"error": {"message", "type", "param",
"code"}}``. Needs the ``serve`` extra (fastapi, uvicorn, prometheus-client).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import hmac
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, ConfigDict, StrictInt, StrictStr, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from lastlayer import artifact
from lastlayer.config.commands import ServeSettings  # the defaults of `lastlayer serve`
from lastlayer.inference.embedder import AUTO, BaseMismatchError, Embedder, UnknownAdapterError

log = logging.getLogger(__name__)

OWNER = "lastlayer"


# ---------------------------------------------------------------------------------------
# Errors in the OpenAI envelope.


class APIError(Exception):
    """An error answered as ``{"error": {...}}`` with ``status``."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = (
            status, message, type_, param, code)
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


class QueueFullError(APIError):
    def __init__(self, queued: int, limit: int) -> None:
        super().__init__(429, f"the server is busy ({queued} texts queued, limit {limit}); "
                         "retry after a second.", "rate_limit_error", None, "queue_full",
                         {"Retry-After": "1"})


_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "invalid_request_error", 405: "invalid_request_error",
          413: "invalid_request_error", 429: "rate_limit_error"}


# ---------------------------------------------------------------------------------------
# The request.


class EmbeddingRequest(BaseModel):
    """The body of ``POST /v1/embeddings`` (unknown fields are ignored, as OpenAI does)."""

    model_config = ConfigDict(extra="ignore")

    model: StrictStr
    input: StrictStr | list[StrictStr | StrictInt | list[StrictInt]]
    encoding_format: StrictStr = "float"
    dimensions: StrictInt | None = None
    user: StrictStr | None = None


class AdapterRequest(BaseModel):
    """The body of ``POST /v1/adapters``."""

    model_config = ConfigDict(extra="forbid")

    name: StrictStr
    path: StrictStr


def _validation_error(err: ValidationError | RequestValidationError) -> APIError:
    first = err.errors()[0]
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = loc[0] if loc else None  # the request's field, as OpenAI names it
    return APIError(400, f"invalid request: {param or 'body'}: {first.get('msg')}", param=param,
                    code="invalid_value")


# ---------------------------------------------------------------------------------------
# Batching across requests.


@dataclass
class _Job:
    """One request's texts: ``keys`` holds one adapter (or None) per text; None: routed."""

    texts: list[str]
    keys: list[str | None] | None
    future: asyncio.Future


class Batcher:
    """Gathers concurrent requests into batches and runs each in one worker thread.

    One batch runs at a time; while it runs the next one gathers, so a busy server makes
    large batches and an idle one answers after ``window`` seconds.
    """

    def __init__(self, embedder: Embedder, settings: ServeSettings, metrics: Metrics) -> None:
        self.embedder = embedder
        self.settings = settings
        self.metrics = metrics
        self._jobs: collections.deque[_Job] = collections.deque()
        self._queued = 0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lastlayer-embed")

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._loop(), name="lastlayer-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for job in self._jobs:
            if not job.future.done():
                job.future.set_exception(APIError(503, "the server is shutting down.",
                                                  "server_error", code="shutting_down"))
        self._executor.shutdown(wait=True)

    async def submit(self, texts: list[str], keys: list[str | None] | None
                     ) -> tuple[np.ndarray, list[int]]:
        """Queue a request; return its vectors and its token counts.

        Raises:
            QueueFullError: Too many texts are waiting already.
        """
        limit = self.settings.max_queue
        if self._queued + len(texts) > limit:
            raise QueueFullError(self._queued, limit)
        job = _Job(texts, keys, asyncio.get_running_loop().create_future())
        self._jobs.append(job)
        self._queued += len(texts)
        self.metrics.queue.set(self._queued)
        self._wake.set()
        return await job.future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._jobs:
                continue
            if self._queued < self.settings.max_batch and self.settings.batch_window_ms:
                await asyncio.sleep(self.settings.batch_window_ms / 1000)
            jobs = self._take()
            if self._jobs:
                self._wake.set()  # leftovers form the next batch
            try:
                results = await loop.run_in_executor(self._executor, self._embed, jobs)
            except Exception as err:  # never leave requests waiting, never stop batching
                log.exception("batch failed")
                results = [APIError(500, f"embedding failed: {type(err).__name__}: {err}",
                                    "server_error")] * len(jobs)
            for job, result in zip(jobs, results, strict=True):
                if job.future.done():  # the client went away
                    continue
                if isinstance(result, BaseException):
                    job.future.set_exception(result)
                else:
                    job.future.set_result(result)

    def _take(self) -> list[_Job]:
        """The oldest jobs, up to ``max_batch`` texts (at least one job)."""
        jobs, size = [], 0
        while self._jobs and (not jobs or size + len(self._jobs[0].texts)
                              <= self.settings.max_batch):
            job = self._jobs.popleft()
            jobs.append(job)
            size += len(job.texts)
        self._queued -= size
        self.metrics.queue.set(self._queued)
        self.metrics.batch.observe(size)
        return jobs

    def _embed(self, jobs: list[_Job]) -> list[Any]:
        """Worker thread: the results of ``jobs``, in order (vectors and tokens, or an
        :class:`APIError`).

        Each job is first checked alone, without encoding anything (an adapter that is not
        loaded, routing without signatures): such a job gets its error and stays out of the
        batch. The others run in one encode call for the named-adapter jobs and one for the
        routed ones; a call that still fails (an adapter unloaded meanwhile, a crash) is
        run again job by job, and a job that fails alone gets that very error. No job is
        encoded more than twice.
        """
        results: list[Any] = [None] * len(jobs)
        for i, job in enumerate(jobs):
            try:
                self.embedder.check_request(AUTO if job.keys is None else job.keys,
                                            len(job.texts))
            except Exception as err:
                results[i] = _api_error(err)
        for routed in (False, True):
            group = [i for i, job in enumerate(jobs)
                     if results[i] is None and (job.keys is None) == routed]
            if not group:
                continue
            try:
                outs = self._encode([jobs[i] for i in group], routed)
            except Exception as err:
                outs = ([_api_error(err)] if len(group) == 1
                        else [self._alone(jobs[i], routed) for i in group])
            for i, out in zip(group, outs, strict=True):
                results[i] = out
        return results

    def _alone(self, job: _Job, routed: bool) -> tuple[np.ndarray, list[int]] | APIError:
        """One job encoded on its own: its vectors and tokens, or its error."""
        try:
            return self._encode([job], routed)[0]
        except Exception as err:
            return _api_error(err)

    def _encode(self, jobs: list[_Job], routed: bool) -> list[tuple[np.ndarray, list[int]]]:
        """One encode call for ``jobs``: each job's vectors and token counts (a routed row's
        tokens are counted at its routed adapter's limit)."""
        texts = [text for job in jobs for text in job.texts]
        adapter = AUTO if routed else [key for job in jobs for key in job.keys]
        result = self.embedder.encode(texts, adapter=adapter,
                                      batch_size=self.settings.encode_batch_size,
                                      progress=False)
        tokens = result.tokens.tolist()
        outs, start = [], 0
        for job in jobs:
            end = start + len(job.texts)
            outs.append((result.vectors[start:end], tokens[start:end]))
            start = end
        return outs


def _api_error(err: Exception) -> APIError:
    """The OpenAI-shaped error for an exception raised while checking or encoding a job."""
    if isinstance(err, UnknownAdapterError):
        return APIError(404, str(err), param="model", code="model_not_found")
    if isinstance(err, ValueError):
        return APIError(400, str(err), param="model", code="invalid_value")
    log.exception("embedding failed", exc_info=err)  # a bug or the device: say what, keep serving
    return APIError(500, f"embedding failed: {type(err).__name__}: {err}", "server_error")


# ---------------------------------------------------------------------------------------
# Metrics.


class Metrics:
    """The Prometheus metrics of one app (its own registry, so apps never clash)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("lastlayer_requests", "Embedding requests by status and model",
                                ["status", "model"], registry=self.registry)
        self.latency = Histogram("lastlayer_request_seconds", "Embedding request latency",
                                 registry=self.registry,
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        self.batch = Histogram("lastlayer_batch_texts", "Texts per batch run on the model",
                               registry=self.registry,
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))
        self.queue = Gauge("lastlayer_queue_texts", "Texts waiting for a batch",
                           registry=self.registry)


# ---------------------------------------------------------------------------------------
# The app.


class _Models:
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
        data = [base] + [
            {"id": name, "object": "model", "created": created, "owned_by": OWNER,
             "root": info.source or str(info.path), "parent": self.id,
             "kind": info.kind, "top_k": info.top_k, "routable": info.routable}
            for name, info in self.embedder.adapters.items()
        ]
        return {"object": "list", "data": data}


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 beyond ``limit`` bytes (header or actual size)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"the request body is {declared} bytes; the limit is {limit} "
                       "(--max-body-bytes).", code="body_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError(413, f"the request body exceeds {limit} bytes (--max-body-bytes).",
                           code="body_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


async def _parse(request: Request, model_type: type[BaseModel], limit: int) -> Any:
    body = await _read_body(request, limit)
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise APIError(400, f"the request body is not valid JSON: {err}",
                       code="invalid_json") from err
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object.", code="invalid_json")
    try:
        return model_type.model_validate(data)
    except ValidationError as err:
        raise _validation_error(err) from err


def _texts(req: EmbeddingRequest, max_inputs: int) -> list[str]:
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


def create_app(embedder: Embedder, settings: ServeSettings | None = None) -> FastAPI:
    """The FastAPI app serving ``embedder`` (see the module docstring for the endpoints).

    Args:
        embedder: The base and its loaded adapters (shared; adapters may be added later).
        settings: Limits and switches (default :class:`ServeSettings`).

    Raises:
        ValueError: A loaded adapter's name would shadow the base's id.
    """
    settings = settings or ServeSettings()
    metrics = Metrics()
    models = _Models(embedder, settings.model_id)
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

    app = FastAPI(title="lastlayer", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.embedder, app.state.settings, app.state.metrics = embedder, settings, metrics
    app.state.batcher = batcher

    @app.exception_handler(APIError)
    async def _api_error(request: Request, err: APIError):
        return err.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError):
        return _validation_error(err).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException):
        return APIError(err.status_code, str(err.detail), _TYPES.get(err.status_code,
                        "invalid_request_error"), headers=dict(err.headers or {})).response()

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

    @app.post("/v1/embeddings")
    async def embeddings(request: Request):
        req = await _parse(request, EmbeddingRequest, settings.max_body_bytes)
        adapter = models.resolve(req.model)
        request.state.model = req.model
        if req.encoding_format not in ("float", "base64"):
            raise APIError(400, f"encoding_format must be 'float' or 'base64', got "
                           f"{req.encoding_format!r}.", param="encoding_format",
                           code="invalid_value")
        if req.dimensions is not None and req.dimensions != embedder.dim:
            raise APIError(400, f"dimensions={req.dimensions} is not supported: {req.model} "
                           f"embeds into {embedder.dim} dimensions only (leave dimensions "
                           "out).", param="dimensions", code="invalid_value")
        texts = _texts(req, settings.max_inputs)
        keys = None if adapter == AUTO else [adapter] * len(texts)
        vectors, tokens = await batcher.submit(texts, keys)
        data = [{"object": "embedding", "index": i,
                 "embedding": _encode_vector(vector, req.encoding_format)}
                for i, vector in enumerate(vectors)]
        used = int(sum(tokens))
        # JSONResponse directly: FastAPI's generic encoder would walk every float
        return JSONResponse({"object": "list", "data": data, "model": req.model,
                             "usage": {"prompt_tokens": used, "total_tokens": used}})

    @app.get("/v1/models")
    async def list_models():
        return models.listing(created)

    @app.get("/health")
    async def health():
        # open to probes; with a key it names nothing (GET /v1/models lists the models)
        if settings.api_key is not None:
            return {"status": "ok"}
        return {"status": "ok", "model": models.id, "adapters": sorted(embedder.adapters)}

    @app.get("/metrics")
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/adapters")
    async def add_adapter(request: Request):
        _check_updates(settings)
        req = await _parse(request, AdapterRequest, settings.max_body_bytes)
        path = _allowed_path(req.path, settings.adapters_dir)
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
        return {"id": req.name, "object": "model", "owned_by": OWNER, "parent": models.id,
                "kind": info.kind, "top_k": info.top_k, "routable": info.routable}

    @app.delete("/v1/adapters/{name}")
    async def delete_adapter(name: str):
        _check_updates(settings)
        try:
            embedder.unload(name)
        except UnknownAdapterError as err:
            raise APIError(404, str(err), param="name", code="model_not_found") from err
        return {"id": name, "object": "model", "deleted": True}

    return app


def _check_updates(settings: ServeSettings) -> None:
    if not settings.allow_adapter_updates:
        raise APIError(403, "adapters cannot be added or removed at runtime: start the server "
                       "with --allow-adapter-updates (and --adapters DIR).", "permission_error",
                       code="updates_disabled")


def _allowed_path(given: str, root: Path | None) -> Path:
    """``given`` (absolute, or relative to ``root``) resolved, if it lies under ``root``
    after following every symlink; 403 otherwise, 400 if it does not exist."""
    if root is None:
        raise APIError(403, "runtime adapters come only from the --adapters directory, and "
                       "none was given.", "permission_error", param="path",
                       code="path_not_allowed")
    base = Path(root).resolve()
    path = (base / given).resolve()  # an absolute `given` replaces base
    if not path.is_relative_to(base):
        raise APIError(403, f"{given!r} is outside the adapters directory; only artifacts "
                       "under it can be loaded.", "permission_error", param="path",
                       code="path_not_allowed")
    if not path.is_dir() or not artifact.is_artifact(path):
        raise APIError(400, f"{given!r} is not an adapter artifact folder under the adapters "
                       "directory.", param="path", code="invalid_adapter")
    return path


# ---------------------------------------------------------------------------------------
# Loading adapters and running.


def find_adapters(root: str | Path) -> dict[str, Path]:
    """Every artifact folder under ``root`` by its artifact name.

    Raises:
        ValueError: Two artifacts have the same name.
    """
    found: dict[str, Path] = {}
    for meta_file in sorted(Path(root).rglob(artifact.METADATA)):
        folder = meta_file.parent
        if not artifact.is_artifact(folder):
            continue
        name = artifact.read(folder).name
        if name in found:
            raise ValueError(f"two adapters under {root} are named {name!r}: {found[name]} and "
                             f"{folder}; load one with --adapter NAME=PATH under another name.")
        found[name] = folder
    return found


def serve(embedder: Embedder, settings: ServeSettings, host: str = "127.0.0.1",
          port: int = 8000, log_level: str = "info", graceful_timeout: float = 30.0) -> None:
    """Run the app under uvicorn until SIGINT / SIGTERM; requests in flight finish first
    (up to ``graceful_timeout`` seconds), then it returns normally (exit status 0)."""
    import signal

    import uvicorn

    config = uvicorn.Config(create_app(embedder, settings), host=host, port=port,
                            log_level=log_level, timeout_graceful_shutdown=graceful_timeout)
    # uvicorn re-raises the signal it stopped on once it has drained, which would kill the
    # process with the default handler; a drained stop is a normal exit.
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT,
                                                                       signal.SIGTERM)}
    try:
        uvicorn.Server(config).run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

"""Errors in the OpenAI envelope: ``{"error": {"message", "type", "param", "code"}}``.

Every answer that is not a success goes through :class:`APIError`, whatever raised it (a
handler, request validation, Starlette's 404/405, the batcher), so clients written for the
OpenAI API read every failure the same way. :func:`for_exception` maps what the
:class:`Embedder` raises while checking or encoding a request to its status.
"""

from __future__ import annotations

import logging

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from lastlayer.inference.embedder import AdapterLoadError, UnknownAdapterError

log = logging.getLogger(__package__)  # one logger for the server package

# The OpenAI error ``type`` of each status the server answers.
TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
         404: "invalid_request_error", 405: "invalid_request_error",
         408: "invalid_request_error",
         409: "invalid_request_error", 413: "invalid_request_error",
         415: "invalid_request_error", 429: "rate_limit_error"}


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
        """The JSON response carrying this error."""
        body = {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


class QueueFullError(APIError):
    """429: more texts are waiting than ``--max-queue`` allows; retry after a second."""

    def __init__(self, queued: int, limit: int) -> None:
        super().__init__(429, f"the server is busy ({queued} texts queued, limit {limit}); "
                         "retry after a second.", "rate_limit_error", None, "queue_full",
                         {"Retry-After": "1"})


def validation_error(err: ValidationError | RequestValidationError) -> APIError:
    """400 naming the first invalid field of the body as ``param`` (as OpenAI names it)."""
    first = err.errors()[0]
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = loc[0] if loc else None
    return APIError(400, f"invalid request: {param or 'body'}: {first.get('msg')}", param=param,
                    code="invalid_value")


def for_exception(err: Exception) -> APIError:
    """The OpenAI-shaped error for an exception raised while checking or encoding a job."""
    if isinstance(err, APIError):
        return err
    if isinstance(err, UnknownAdapterError):
        return APIError(404, str(err), param="model", code="model_not_found")
    if isinstance(err, AdapterLoadError):  # this adapter's files, not the request: 500
        log.warning("%s", err)
        return APIError(500, str(err), "server_error", param="model",
                        code="adapter_load_failed")
    if isinstance(err, ValueError):
        return APIError(400, str(err), param="model", code="invalid_value")
    log.exception("embedding failed", exc_info=err)  # a bug or the device: say what, keep serving
    return server_error(err)


def server_error(err: BaseException) -> APIError:
    """500 for a failure that is the server's, not the request's."""
    return APIError(500, f"embedding failed: {type(err).__name__}: {err}", "server_error")

"""Reading a request body as a hostile client may send it: every malformed body is a 4xx.

A body is read up to ``--max-body-bytes`` (413 beyond, by the declared or the actual size),
must be JSON (415 for another declared content type), valid UTF-8, one JSON object without
repeated keys, ``NaN``/``Infinity`` or numbers beyond float range, nested at most
:data:`MAX_DEPTH` deep, with strings that are valid Unicode (no lone surrogates, which the
tokenizer and the JSON encoder of the answer cannot take); then it is validated by its
pydantic model. Each refusal is an :class:`APIError` naming the offending field as ``param``
where there is one, so it is answered in the OpenAI envelope, never as a 500.
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect

from lastlayer.inference.server.errors import APIError, validation_error

MAX_DEPTH = 32  # the API's bodies nest 3 deep; far deeper is an attack on the parser
BODY_TIMEOUT_S = 10.0  # a body that stops arriving for this long is answered 408


TIMED_OUT = "lastlayer.body_timed_out"  # set in the ASGI scope when the body stopped arriving


class BodyDeadline:
    """ASGI middleware: a request body whose next chunk takes over :data:`BODY_TIMEOUT_S`
    seconds reads as a disconnect, marked in the scope (answered 408), so a client that
    sends half a body and hangs frees its connection, and a graceful stop does not wait on
    it. Once the body is complete, ``receive`` (which then only reports a disconnect) is
    not timed."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        done = False

        async def timed_receive() -> dict:
            nonlocal done
            if done:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), BODY_TIMEOUT_S)
            except asyncio.TimeoutError:
                scope[TIMED_OUT] = done = True
                return {"type": "http.disconnect"}
            done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        await self.app(scope, timed_receive, send)


class _Refused(ValueError):
    """A JSON construct the API refuses, and the top-level field it sits in."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 beyond ``limit`` bytes (header or actual size)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"the request body is {declared} bytes; the limit is {limit} "
                       "(--max-body-bytes).", code="body_too_large")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise APIError(413, f"the request body exceeds {limit} bytes "
                               "(--max-body-bytes).", code="body_too_large")
            chunks.append(chunk)
    except ClientDisconnect as err:
        if request.scope.get(TIMED_OUT):
            raise APIError(408, f"the request body stopped arriving for {BODY_TIMEOUT_S:g} s.",
                           code="body_timeout") from err
        # nobody reads the answer; the access log shows it
        raise APIError(400, "the client disconnected before sending the whole body.",
                       code="incomplete_body") from err
    return b"".join(chunks)


def _check_content_type(request: Request) -> None:
    declared = request.headers.get("content-type")
    if declared is None:
        return  # no claim: read it as JSON
    media = declared.split(";")[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise APIError(415, f"the body must be JSON (Content-Type: application/json), got "
                       f"{declared[:100]!r}.", code="unsupported_media_type")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refusing a key given twice (which value was meant is unknowable)."""
    data: dict[str, Any] = {}
    for key, value in pairs:
        if key in data:
            raise _Refused(f"the key {key[:100]!r} appears twice in one object.", key[:100])
        data[key] = value
    return data


def _walk(value: Any):
    """Every value inside ``value`` with its depth (1: ``value``), without recursion."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        yield item, depth
        children = item.values() if isinstance(item, dict) else item if isinstance(
            item, list) else ()
        stack.extend((child, depth + 1) for child in children)


def _check_value(key: str, value: Any) -> None:
    """Refuse ``NaN``/``Infinity`` (Python's parser takes them; JSON has no such numbers),
    numbers beyond float range (``1e999``), and lone surrogates (``"\ud800"``): valid JSON,
    but not text the tokenizer or the answer's encoder can take."""
    param = key[:100] if key.isprintable() else None
    for item, _ in _walk(value):
        if isinstance(item, float) and not math.isfinite(item):
            raise _Refused(f"{param or 'a field'} holds NaN, Infinity or a number beyond "
                           "float range; send finite numbers only.", param)
    try:
        json.dumps([key, value], ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as err:
        raise _Refused("the body holds a lone UTF-16 surrogate (an escape like \\ud800 "
                       "without its pair): send valid Unicode text.", param) from err


def decode(body: bytes) -> dict[str, Any]:
    """``body`` as one JSON object, or an :class:`APIError` (400) saying what is wrong."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise APIError(400, f"the request body is not valid UTF-8 (byte {err.start}).",
                       code="invalid_json") from err
    try:
        data = json.loads(text, object_pairs_hook=_object)
    except _Refused as err:
        raise APIError(400, f"the request body is not acceptable JSON: {err}", param=err.param,
                       code="invalid_json") from err
    except RecursionError as err:
        raise APIError(400, "the request body nests too deeply.", code="invalid_json") from err
    except json.JSONDecodeError as err:
        raise APIError(400, f"the request body is not valid JSON: {err}",
                       code="invalid_json") from err
    except ValueError as err:  # an integer beyond Python's digit limit (4300 digits)
        raise APIError(400, "the request body holds a number with too many digits.",
                       code="invalid_json") from err
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object.", code="invalid_json")
    if max(depth for _, depth in _walk(data)) > MAX_DEPTH:
        raise APIError(400, f"the request body nests more than {MAX_DEPTH} levels deep.",
                       code="invalid_json")
    try:
        for key, value in data.items():
            _check_value(key, value)
    except _Refused as err:
        raise APIError(400, f"the request body is not acceptable JSON: {err}", param=err.param,
                       code="invalid_json") from err
    return data


async def parse(request: Request, model_type: type[BaseModel], limit: int) -> Any:
    """The body of ``request`` validated as ``model_type``; an :class:`APIError` otherwise."""
    _check_content_type(request)
    data = decode(await read_body(request, limit))
    try:
        return model_type.model_validate(data)
    except ValidationError as err:
        raise validation_error(err) from err

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

import json
import math
from typing import Any

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect

from lastlayer.inference.server.errors import APIError, validation_error

MAX_DEPTH = 32  # the API's bodies nest 3 deep; far deeper is an attack on the parser


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
    except ClientDisconnect as err:  # nobody reads the answer; say so in the access log only
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


def _constant(name: str) -> float:
    raise _Refused(f"{name} is not a JSON number; send finite numbers only.")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"the number {text[:40]} is beyond float range.")
    return value


def _depth(value: Any, limit: int) -> int:
    """How deep ``value`` nests (stops counting past ``limit``), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return depth
        deepest = max(deepest, depth)
        children = item.values() if isinstance(item, dict) else item if isinstance(
            item, list) else ()
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _check_strings(data: dict[str, Any]) -> None:
    """Refuse lone surrogates (``"\\ud800"``): valid JSON, but not text anything can encode."""
    for key, value in data.items():
        try:
            json.dumps([key, value], ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as err:
            raise _Refused("the body holds a lone UTF-16 surrogate (an escape like \\ud800 "
                           "without its pair): send valid Unicode text.",
                           key[:100] if key.isprintable() else None) from err


def decode(body: bytes) -> dict[str, Any]:
    """``body`` as one JSON object, or an :class:`APIError` (400) saying what is wrong."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise APIError(400, f"the request body is not valid UTF-8 (byte {err.start}).",
                       code="invalid_json") from err
    try:
        data = json.loads(text, object_pairs_hook=_object, parse_constant=_constant,
                          parse_float=_float)
        if isinstance(data, dict):
            _check_strings(data)
    except _Refused as err:
        raise APIError(400, f"the request body is not acceptable JSON: {err}", param=err.param,
                       code="invalid_json") from err
    except RecursionError as err:
        raise APIError(400, "the request body nests too deeply.", code="invalid_json") from err
    except ValueError as err:  # JSONDecodeError, and integers beyond Python's digit limit
        raise APIError(400, f"the request body is not valid JSON: {err}",
                       code="invalid_json") from err
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object.", code="invalid_json")
    if _depth(data, MAX_DEPTH) > MAX_DEPTH:
        raise APIError(400, f"the request body nests more than {MAX_DEPTH} levels deep.",
                       code="invalid_json")
    return data


async def parse(request: Request, model_type: type[BaseModel], limit: int) -> Any:
    """The body of ``request`` validated as ``model_type``; an :class:`APIError` otherwise."""
    _check_content_type(request)
    data = decode(await read_body(request, limit))
    try:
        return model_type.model_validate(data)
    except ValidationError as err:
        raise validation_error(err) from err

"""Malformed bodies, in process: every one is a 4xx in the OpenAI envelope (with the offending
``param`` where there is one), never a 500; and the OpenAPI schema describes every body.

The first three cases were 500s before the server read bodies itself (``lastlayer.inference.
server.body``): a body nested 100 000 deep (RecursionError), an integer of 5 000 digits
(Python's digit limit, a ValueError), and a lone surrogate in ``input`` (the tokenizer's
TypeError). A duplicate key and a UTF-16 body were accepted (200).
"""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402

from lastlayer.inference import Embedder  # noqa: E402
from lastlayer.inference.server import ServeSettings, create_app  # noqa: E402

JSON = {"content-type": "application/json"}
OK = b'{"model": "tiny-bert", "input": "x"}'


@pytest.fixture(scope="module")
def client(saved_models):
    embedder = Embedder(saved_models["bert"], device="cpu", max_length=32)
    app = create_app(embedder, ServeSettings(batch_window_ms=0, max_body_bytes=2_000_000))
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def assert_error(response, status: int, param: str | None = None, text: str = "") -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param, error
    assert text.lower() in error["message"].lower()


MALFORMED = {  # body -> (status, param, words of the message)
    "deep nesting": (b'{"model": "tiny-bert", "input": ' + b"[" * 100_000 + b"]" * 100_000
                     + b"}", 400, None, "nests"),
    "nesting past the limit": (b'{"model": "tiny-bert", "input": ' + b"[" * 40 + b"]" * 40
                               + b"}", 400, None, "levels deep"),
    "5000-digit integer": (b'{"model": "tiny-bert", "input": "x", "dimensions": '
                           + b"9" * 5000 + b"}", 400, None, "digits"),
    "lone surrogate in input": (b'{"model": "tiny-bert", "input": ["ok", "\\ud800"]}', 400,
                                "input", "surrogate"),
    "lone surrogate in model": (b'{"model": "\\udfff", "input": "x"}', 400, "model",
                                "surrogate"),
    "NaN": (b'{"model": "tiny-bert", "input": "x", "dimensions": NaN}', 400, "dimensions",
            "NaN"),
    "Infinity": (b'{"model": "tiny-bert", "input": "x", "dimensions": -Infinity}', 400,
                 "dimensions", "finite"),
    "beyond float range": (b'{"model": "tiny-bert", "input": "x", "dimensions": 1e999}', 400,
                           "dimensions", "float range"),
    "duplicate key": (b'{"model": "tiny-bert", "input": "x", "input": "y"}', 400, "input",
                      "twice"),
    "not JSON": (b"{model: tiny-bert", 400, None, "not valid JSON"),
    "empty body": (b"", 400, None, "JSON"),
    "invalid UTF-8": (b'{"model": "tiny-bert", "input": "\xff\xfe"}', 400, None, "UTF-8"),
    "UTF-16": ('{"model": "tiny-bert", "input": "x"}'.encode("utf-16"), 400, None, "UTF-8"),
    "a list": (b'[{"model": "tiny-bert", "input": "x"}]', 400, None, "object"),
    "a string": (b'"hello"', 400, None, "object"),
    "null": (b"null", 400, None, "object"),
    "input of numbers and strings": (b'{"model": "tiny-bert", "input": [1, "a"]}', 400,
                                     "input", ""),
    "input of nulls": (b'{"model": "tiny-bert", "input": [null]}', 400, "input", ""),
    "input of objects": (b'{"model": "tiny-bert", "input": [{"text": "a"}]}', 400, "input",
                         ""),
    "input of nested lists of strings": (b'{"model": "tiny-bert", "input": [["a"]]}', 400,
                                         "input", ""),
    "model a list": (b'{"model": ["tiny-bert"], "input": "x"}', 400, "model", ""),
    "model a number": (b'{"model": 7, "input": "x"}', 400, "model", ""),
    "encoding_format a number": (b'{"model": "tiny-bert", "input": "x", "encoding_format": 1}',
                                 400, "encoding_format", ""),
    "dimensions a string": (b'{"model": "tiny-bert", "input": "x", "dimensions": "8"}', 400,
                            "dimensions", ""),
    "dimensions a float": (b'{"model": "tiny-bert", "input": "x", "dimensions": 8.0}', 400,
                           "dimensions", ""),
    "user a list": (b'{"model": "tiny-bert", "input": "x", "user": ["a"]}', 400, "user", ""),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_a_malformed_body_is_a_4xx_in_the_envelope(client, name):
    body, status, param, text = MALFORMED[name]
    assert_error(client.post("/v1/embeddings", content=body, headers=JSON), status, param, text)


def test_the_same_traps_in_the_adapters_body(client):
    for body, _, _, _ in list(MALFORMED.values())[:8]:  # updates off: refused before reading
        assert_error(client.post("/v1/adapters", content=body, headers=JSON), 403)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/xml"])
def test_a_body_that_is_not_declared_json_is_415(client, content_type):
    assert_error(client.post("/v1/embeddings", content=OK, headers={
        "content-type": content_type}), 415, None, "application/json")


@pytest.mark.parametrize("headers", [{}, {"content-type": "application/json; charset=utf-8"},
                                     {"content-type": "application/vnd.api+json"}])
def test_json_and_an_undeclared_type_are_read(client, headers):
    assert client.post("/v1/embeddings", content=OK, headers=headers).status_code == 200


def test_the_schema_describes_every_body_and_answer(client):
    schema = client.app.openapi()
    paths = schema["paths"]
    assert set(paths) == {"/v1/embeddings", "/v1/models", "/v1/adapters",
                          "/v1/adapters/{name}", "/health", "/metrics"}
    for path in ("/v1/embeddings", "/v1/adapters"):
        body = paths[path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body["required"] == (["model", "input"] if "embed" in path else ["name", "path"])
    embed = paths["/v1/embeddings"]["post"]["responses"]
    assert {"200", "400", "401", "404", "413", "415", "429", "500", "503"} <= set(embed)
    error = embed["400"]["content"]["application/json"]["schema"]
    assert error == {"$ref": "#/components/schemas/ErrorResponse"}
    answer = embed["200"]["content"]["application/json"]["schema"]
    assert answer == {"$ref": "#/components/schemas/EmbeddingResponse"}
    assert client.get("/openapi.json").status_code == 404  # loaded in process, not served


def test_runtime_adapter_paths_the_fuzzer_found(saved_models, tmp_path):
    """``POST /v1/adapters`` with a NUL byte in ``path`` was a 500 (Schemathesis, positive
    mode: ``Path.resolve`` raised ValueError); a name too long for the file system too."""
    embedder = Embedder(saved_models["bert"], device="cpu", max_length=32)
    app = create_app(embedder, ServeSettings(allow_adapter_updates=True, adapters_dir=tmp_path))
    with TestClient(app, raise_server_exceptions=False) as updates:
        for path in ("a\x00b", "x" * 5000, "x/" * 3000, "\x00"):
            assert_error(updates.post("/v1/adapters", json={"name": "n", "path": path}), 400,
                         "path")
        assert_error(updates.delete("/v1/adapters/a%00b"), 404, "name")


def _json_values():
    from hypothesis import strategies as st

    scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text()
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)


def test_any_bytes_decode_to_an_object_or_a_400():
    """Property (issue 20 section 7, the server's request model): any bytes -> a dict or an
    APIError 400 from the body decoder (no other exception); any JSON object -> an
    EmbeddingRequest or a 400 naming a field."""
    from hypothesis import given, settings
    from hypothesis import strategies as st
    from pydantic import ValidationError

    from lastlayer.inference.server import APIError, EmbeddingRequest
    from lastlayer.inference.server.body import decode
    from lastlayer.inference.server.errors import validation_error

    @settings(max_examples=150, deadline=None)
    @given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
    def any_bytes(body):
        try:
            assert isinstance(decode(body), dict)
        except APIError as err:
            assert err.status == 400

    @settings(max_examples=150, deadline=None)
    @given(st.dictionaries(st.sampled_from(["model", "input", "encoding_format", "dimensions",
                                            "user", "other"]), _json_values()))
    def any_object(data):
        try:
            EmbeddingRequest.model_validate(data)
        except ValidationError as err:  # nothing else escapes
            error = validation_error(err)  # a field given, or a required one missing
            assert error.status == 400 and error.param in (*data, "model", "input")

    any_bytes()
    any_object()

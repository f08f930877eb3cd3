"""The request and response bodies of the HTTP API, as pydantic models.

The request models validate what clients send (the handlers parse bodies themselves, to
enforce the size limit and answer in the OpenAI envelope); every model here is also written
into the OpenAPI schema (:func:`lastlayer.inference.server.app.create_app` passes them to
FastAPI), so the schema describes each body and a fuzzer such as Schemathesis generates
bodies that reach the handlers and checks the answers against these shapes.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, WithJsonSchema

# What the schema promises is accepted (the validator also takes token-id arrays and any
# string, to refuse them with a message of its own rather than pydantic's).
_TEXT = {"type": "string", "minLength": 1}
_INPUT_SCHEMA = {"anyOf": [_TEXT, {"type": "array", "items": _TEXT, "minItems": 1}],
                 "description": "a text or a non-empty list of texts (token-id arrays are "
                 "refused)"}
_FORMAT_SCHEMA = {"type": "string", "enum": ["float", "base64"], "default": "float",
                  "description": "'float', or 'base64' of little-endian float32"}


class EmbeddingRequest(BaseModel):
    """The body of ``POST /v1/embeddings`` (unknown fields are ignored, as OpenAI does)."""

    model_config = ConfigDict(extra="ignore")

    model: StrictStr = Field(description="the base (its id or an alias), BASE:ADAPTER, an "
                             "adapter name, or BASE:auto (each input routed)")
    input: Annotated[StrictStr | list[StrictStr | StrictInt | list[StrictInt]],
                     WithJsonSchema(_INPUT_SCHEMA)]
    encoding_format: Annotated[StrictStr, WithJsonSchema(_FORMAT_SCHEMA)] = "float"
    dimensions: StrictInt | None = Field(None, description="must be the model's dimension")
    user: StrictStr | None = None


class AdapterRequest(BaseModel):
    """The body of ``POST /v1/adapters``: an artifact folder under ``--adapters``."""

    model_config = ConfigDict(extra="forbid")

    name: StrictStr
    path: StrictStr = Field(description="relative to the --adapters directory")


class ErrorDetail(BaseModel):
    """The inside of the OpenAI error envelope."""

    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """Every error: ``{"error": {"message", "type", "param", "code"}}``."""

    error: ErrorDetail


class Embedding(BaseModel):
    """One vector: floats, or base64 of little-endian float32."""

    object: Literal["embedding"]
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    """Tokens the model read (after truncation)."""

    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    """The answer of ``POST /v1/embeddings``, in input order."""

    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: Usage


class ModelCard(BaseModel):
    """One served model: the base (``parent`` None) or an adapter of it."""

    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    root: str
    parent: str | None
    kind: str | None = None
    top_k: int | None = None
    routable: bool | None = None
    resident: bool | None = None  # an adapter's head is in memory (else: built on first use)


class ModelList(BaseModel):
    """The answer of ``GET /v1/models``."""

    object: Literal["list"]
    data: list[ModelCard]


class AdapterAdded(BaseModel):
    """The answer of ``POST /v1/adapters``."""

    id: str
    object: Literal["model"]
    owned_by: str
    parent: str
    kind: str
    top_k: int
    routable: bool


class AdapterDeleted(BaseModel):
    """The answer of ``DELETE /v1/adapters/{name}``."""

    id: str
    object: Literal["model"]
    deleted: bool


class Health(BaseModel):
    """The answer of ``GET /health`` (with an API key it names no model)."""

    status: Literal["ok"]
    model: str | None = None
    adapters: list[str] | None = None

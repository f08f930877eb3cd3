"""Schemathesis in CI: every operation of the API fuzzed from its own OpenAPI schema, in
process (the ASGI app), bodies that fit the schema and bodies that do not: no 5xx, every
answer in the shape the schema declares. The long run (>= 200 examples per operation) is
``python -m benchmarks.fuzz_server``; this is the same driver with a few examples."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("schemathesis")

from helpers.artifacts import make_artifact  # noqa: E402

from benchmarks.fuzz_server import fuzz  # noqa: E402
from lastlayer.inference import Embedder  # noqa: E402
from lastlayer.inference.server import ServeSettings, create_app  # noqa: E402

KEY = "fuzz-key-not-secret"


@pytest.mark.parametrize("key", [None, KEY])
def test_every_operation_fuzzed_without_a_server_error(saved_models, tmp_path, key):
    model = saved_models["bert"]
    folder = tmp_path / "adapters"
    embedder = Embedder(model, device="cpu", max_length=32)
    embedder.load(make_artifact(model, folder / "a", "lora", 2, 1, "bert"), "a")
    app = create_app(embedder, ServeSettings(batch_window_ms=0, allow_adapter_updates=True,
                                             adapters_dir=folder, max_inputs=16,
                                             max_body_bytes=20_000, api_key=key))
    headers = {"Authorization": f"Bearer {key}"} if key else None
    report = fuzz(app, examples=15, served=["tiny-bert", "a", "tiny-bert:a"], paths=["a"],
                  headers=headers, seed=1)
    assert report["failures"] == []
    operations = report["operations"]
    assert len(operations) == 6 and all(op["examples"] for op in operations.values())
    assert not [status for op in operations.values() for status in op["statuses"]
                if status.startswith("5")]
    assert "200" in operations["POST /v1/embeddings"]["statuses"]  # bodies reach the model

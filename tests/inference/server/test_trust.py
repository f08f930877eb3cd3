"""The server's trust rows, in process: it binds loopback unless told otherwise, the API key
is in no repr or error, only adapters loaded at start (or added under ``--adapters``) are
served, and runtime additions cannot reach outside ``--adapters``. (The key in the output of
a real server, under every error path: tests/inference/server/test_clients.py.)"""

from __future__ import annotations

import inspect

import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402
from helpers.artifacts import make_artifact  # noqa: E402

from lastlayer.config.commands import ServeOptions  # noqa: E402
from lastlayer.inference import Embedder  # noqa: E402
from lastlayer.inference.server import APIError, ServeSettings, create_app, serve  # noqa: E402
from lastlayer.inference.server.adapters import allowed_path  # noqa: E402

KEY = "sk-trust-test-93c1"


@pytest.fixture(scope="module")
def arts(saved_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("trust")
    model = saved_models["bert"]
    folder = root / "adapters"
    return {"model": model, "root": root, "folder": folder,
            "inside": make_artifact(model, folder / "inside", "lora", 1, 1, "bert"),
            "outside": make_artifact(model, root / "outside", "lora", 1, 2, "bert")}


def test_loopback_and_the_defaults_are_the_commands():
    assert ServeOptions(model="m").host == "127.0.0.1"
    params = inspect.signature(serve).parameters
    for name in ("host", "port", "log_level"):
        assert params[name].default == getattr(ServeOptions(model="m"), name), name


def test_the_key_is_in_no_repr_or_error(arts):
    settings = ServeSettings(api_key=KEY)
    assert KEY not in repr(settings)
    embedder = Embedder(arts["model"], device="cpu", max_length=32)
    with TestClient(create_app(embedder, settings)) as client:
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": KEY}):
            r = client.post("/v1/embeddings", json={"model": "x", "input": "y"}, headers=headers)
            assert r.status_code == 401 and KEY not in r.text + str(r.headers)
        assert KEY not in str(client.app.openapi())
        ok = client.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"})
        assert ok.status_code == 200 and KEY not in ok.text


def test_only_loaded_adapters_are_served(arts):
    """An artifact in the adapters folder that was not loaded, a path, a Hub-like id: 404,
    and nothing is loaded by naming it."""
    embedder = Embedder(arts["model"], device="cpu", max_length=32)
    embedder.load(arts["outside"], "out")
    settings = ServeSettings(adapters_dir=arts["folder"], batch_window_ms=0)
    with TestClient(create_app(embedder, settings)) as client:
        for model in ("inside", str(arts["inside"]), str(arts["outside"]), "tiny-bert:inside",
                      "../outside", "org/name", "tiny-bert:" + str(arts["inside"])):
            r = client.post("/v1/embeddings", json={"model": model, "input": "x"})
            assert r.status_code == 404 and r.json()["error"]["param"] == "model", model
        assert client.post("/v1/embeddings", json={"model": "out", "input": "x"}
                           ).status_code == 200
    assert list(embedder.adapters) == ["out"]


def test_runtime_updates_stay_inside_the_adapters_folder(arts, tmp_path):
    folder = arts["folder"]
    (folder / "escape").symlink_to(arts["outside"], target_is_directory=True)
    (folder / "sub").mkdir(exist_ok=True)
    (folder / "sub" / "up").symlink_to(folder.parent, target_is_directory=True)
    assert allowed_path("inside", folder) == arts["inside"].resolve()
    assert allowed_path(str(arts["inside"]), folder) == arts["inside"].resolve()  # inside
    for given in ("../outside", str(arts["outside"]), "escape", "sub/up/outside",
                  "inside/../../outside", "/etc", "/"):
        with pytest.raises(APIError) as refused:
            allowed_path(given, folder)
        assert (refused.value.status, refused.value.param) == (403, "path"), given
    for given in ("", ".", "sub", "missing", "inside/adapter_model.safetensors"):
        with pytest.raises(APIError) as refused:
            allowed_path(given, folder)
        assert refused.value.status == 400, given
    with pytest.raises(APIError) as refused:
        allowed_path("inside", None)  # updates on but no --adapters: nothing is allowed
    assert refused.value.status == 403


def test_updates_off_by_default_and_delete_touches_no_file(arts):
    embedder = Embedder(arts["model"], device="cpu", max_length=32)
    embedder.load(arts["inside"], "inside")
    with TestClient(create_app(embedder, ServeSettings(adapters_dir=arts["folder"]))) as off:
        assert off.post("/v1/adapters", json={"name": "n", "path": "inside"}).status_code == 403
        assert off.delete("/v1/adapters/inside").status_code == 403
    on = ServeSettings(adapters_dir=arts["folder"], allow_adapter_updates=True)
    with TestClient(create_app(embedder, on)) as client:
        for name in ("..%2Finside", "%2E%2E", "inside%00"):
            assert client.delete(f"/v1/adapters/{name}").status_code == 404
        assert client.delete("/v1/adapters/inside").status_code == 200
    assert (arts["inside"] / "lastlayer.json").exists()  # unloading deletes nothing

"""``lastlayer serve --adapter-memory`` and ``--hub-adapters``, in process: start-up registers an
index without building a head, ``/v1/models`` lists every registered adapter resident or not,
a broken adapter fails only its own requests, a batch over many adapters runs the trunk
once, the residency metrics, and the Hub allowlist (nothing outside it is fetched)."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402
from helpers.artifacts import MAX_LENGTH, make_artifact  # noqa: E402
from helpers.data import TEXTS  # noqa: E402
from helpers.hub import BASE_ID, REPO, use_cache  # noqa: E402

from lastlayer import artifact  # noqa: E402
from lastlayer.cli import main  # noqa: E402
from lastlayer.core.engine import Engine  # noqa: E402
from lastlayer.inference import Embedder  # noqa: E402
from lastlayer.inference.server import ServeSettings, create_app  # noqa: E402

N = 12


@pytest.fixture(scope="module")
def folder(saved_models, tmp_path_factory):
    """An adapters folder of N LoRA artifacts (two seeds, copied under N names)."""
    root = tmp_path_factory.mktemp("many-serve")
    model = saved_models["bert"]
    seeds = [make_artifact(model, root / "seed" / f"s{i}", "lora", 2, i + 1) for i in range(2)]
    for i in range(N):
        target = shutil.copytree(seeds[i % 2], root / "adapters" / f"t{i:02d}")
        meta = artifact.read(target)
        (target / artifact.METADATA).write_text(
            meta.to_json().replace(f'"name": "{meta.name}"', f'"name": "t{i:02d}"'))
    return {"model": model, "dir": root / "adapters", "root": root}


def started(saved_models, folder, monkeypatch, *flags: str) -> Embedder:
    """The Embedder ``lastlayer serve --adapters DIR FLAGS`` would serve (uvicorn left out)."""
    from lastlayer.inference import server

    served = {}
    monkeypatch.setattr(server, "serve", lambda embedder, settings, **kw: served.update(
        embedder=embedder, settings=settings))
    assert main(["serve", "--model", str(folder["model"]), "--adapters", str(folder["dir"]),
                 "--device", "cpu", "--max-length", str(MAX_LENGTH), *flags]) == 0
    return served["embedder"], served["settings"]


def test_start_up_registers_the_index_without_building_a_head(saved_models, folder,
                                                                monkeypatch):
    with monkeypatch.context() as mp:
        mp.setattr(Engine, "build_head", lambda *a: pytest.fail("a head was built at start"))
        emb, _ = started(saved_models, folder, mp, "--adapter-memory", "64MB")
    assert emb.adapter_memory == 64 * 10**6 and len(emb.adapters) == N
    assert emb.stats()["resident"] == 0
    with TestClient(create_app(emb, ServeSettings(batch_window_ms=0))) as client:
        listed = client.get("/v1/models").json()["data"]
        assert [m["id"] for m in listed[1:]] == [f"t{i:02d}" for i in range(N)]
        assert not any(m["resident"] for m in listed[1:])
        r = client.post("/v1/embeddings", json={"model": "t03", "input": TEXTS[:2]})
        assert r.status_code == 200, r.text
        listed = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
        assert listed["t03"]["resident"] and not listed["t04"]["resident"]
        assert len(listed) == N + 1
        text = client.get("/metrics").text
    for line in ("lastlayer_adapters_registered 12.0", "lastlayer_adapters_resident 1.0",
                 "lastlayer_adapter_misses_total 1.0", "lastlayer_adapter_evictions_total 0.0",
                 "lastlayer_adapter_memory_budget_bytes 6.4e+07",
                 'lastlayer_adapter_load_seconds_bucket{le="+Inf"} 1.0'):
        assert line in text, line
    assert "lastlayer_adapter_memory_bytes " in text
    assert "lastlayer_adapter_working_memory_bytes 0.0" in text  # nothing running now


def test_bad_flags_exit_2(capsys):
    assert main(["serve", "--model", "x", "--adapter-memory", "lots"]) == 2
    assert "--adapter-memory" in capsys.readouterr().err
    for bad in ("*", "*/x", "acme"):
        assert main(["serve", "--model", "x", "--hub-adapters", bad]) == 2
        assert "ORG/NAME or ORG/*" in capsys.readouterr().err
    assert ServeSettings(hub_allowlist=["a/*,b/x", "c/*"]).hub_allowlist == ("a/*", "b/x", "c/*")


def test_a_broken_adapter_fails_only_its_own_requests(saved_models, folder, tmp_path):
    emb = Embedder(folder["model"], device="cpu", max_length=MAX_LENGTH, adapter_memory="64MB")
    for i in range(3):
        emb.load(folder["dir"] / f"t{i:02d}")
    broken = shutil.copytree(folder["dir"] / "t03", tmp_path / "t03")
    emb.load(broken)
    (broken / artifact.WEIGHTS).write_bytes(b"not safetensors")  # damaged after start
    plain = Embedder(folder["model"], device="cpu", max_length=MAX_LENGTH)
    plain.load(folder["dir"] / "t01")
    with TestClient(create_app(emb, ServeSettings(batch_window_ms=100))) as client:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda name: client.post("/v1/embeddings", json={
                "model": name, "input": TEXTS[:3]}), ["t03", "t01"] * 4))
        for answer, name in zip(answers, ["t03", "t01"] * 4, strict=True):
            if name == "t03":
                assert answer.status_code == 500, answer.text
                error = answer.json()["error"]
                assert error["code"] == "adapter_load_failed"
                assert "adapter 't03' cannot be loaded" in error["message"]
            else:
                assert answer.status_code == 200, answer.text
                got = np.array([d["embedding"] for d in answer.json()["data"]], np.float32)
                np.testing.assert_allclose(got, plain.encode(TEXTS[:3], "t01").vectors,
                                           atol=1e-6)
        assert client.get("/health").json()["adapters"] == ["t00", "t01", "t02", "t03"]


def test_a_batch_over_many_adapters_runs_the_trunk_once(saved_models, folder, monkeypatch):
    emb = Embedder(folder["model"], device="cpu", max_length=MAX_LENGTH, adapter_memory="64MB")
    for i in range(N):
        emb.load(folder["dir"] / f"t{i:02d}")
    emb.warm(emb.adapters)  # every head hot: requests go straight to the batch
    trunks, real = [], emb.engine.trunk
    monkeypatch.setattr(emb.engine, "trunk", lambda *a: trunks.append(a[2]) or real(*a))
    names = [f"t{i:02d}" for i in range(N)]
    app = create_app(emb, ServeSettings(batch_window_ms=300))
    with TestClient(app) as client:
        with ThreadPoolExecutor(N) as pool:
            answers = list(pool.map(lambda name: client.post("/v1/embeddings", json={
                "model": name, "input": [TEXTS[0]]}), names))
        assert all(a.status_code == 200 for a in answers)
        samples = {s.name: s.value for s in app.state.metrics.batch.collect()[0].samples}
    assert len(trunks) == samples["lastlayer_batch_texts_count"] < N  # one per batch
    assert emb.stats()["misses"] == N and emb.stats()["loads"] == N  # the warm-up only


# ---------------------------------------------------------------------------------------
# Adapters by Hub id on first use


@pytest.fixture
def hub_embedder(world, cache):
    return Embedder(BASE_ID, device="cpu", adapter_memory="64MB")


def test_allowed_hub_ids_load_on_first_request_from_the_cache(world, cache, hub_embedder,
                                                               embedder):
    settings = ServeSettings(batch_window_ms=0, hub_allowlist=("acme/tiny-*",))
    expected = {}
    for spec, local in ((REPO, world["v1"]), (f"{REPO}@v2", world["v2"])):
        name = embedder.load(local, name=f"local-{spec}")
        expected[spec] = embedder.encode(TEXTS[:2], name).vectors
    with TestClient(create_app(hub_embedder, settings)) as client:
        for spec in (REPO, f"{REPO}@v2"):
            r = client.post("/v1/embeddings", json={"model": spec, "input": TEXTS[:2]})
            assert r.status_code == 200, r.text
            got = np.array([d["embedding"] for d in r.json()["data"]], np.float32)
            np.testing.assert_allclose(got, expected[spec], atol=1e-6)
        listed = [m["id"] for m in client.get("/v1/models").json()["data"]]
        assert listed[1:] == [REPO, f"{REPO}@v2"]
        r = client.post("/v1/embeddings", json={"model": "acme/tiny-absent", "input": "x"})
        assert r.status_code == 404 and "not in the Hugging Face cache" in r.text
        r = client.post("/v1/embeddings", json={"model": "acme/other-base", "input": "x"})
        assert r.status_code == 404  # outside the allowlist: never looked up
        assert "acme/other-base" not in hub_embedder.adapters
    wide = ServeSettings(batch_window_ms=0, hub_allowlist=("acme/*",))
    with TestClient(create_app(hub_embedder, wide)) as client:
        r = client.post("/v1/embeddings", json={"model": "acme/other-base", "input": "x"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_adapter"
        assert "trained on" in r.json()["error"]["message"]  # the base check of local ones


def test_nothing_outside_the_allowlist_reaches_the_hub(world, cache, embedder, hub_server,
                                                       monkeypatch):
    use_cache(monkeypatch, world["cache"])
    for patterns in ((), ("acme/*",)):
        settings = ServeSettings(batch_window_ms=0, hub_allowlist=patterns)
        with TestClient(create_app(embedder, settings)) as client:
            for model in ("evil/adapter", "acme-evil/x", "tiny-org/tiny-bert-x", "acme"):
                r = client.post("/v1/embeddings", json={"model": model, "input": "x"})
                assert r.status_code == 404, (patterns, model, r.text)
    assert hub_server.log == []
    with TestClient(create_app(embedder, settings)) as client:  # allowed: asked of the Hub
        r = client.post("/v1/embeddings", json={"model": "acme/unknown", "input": "x"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert any("acme/unknown" in entry["path"] for entry in hub_server.log)

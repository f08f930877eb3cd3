"""``lastlayer serve``: the real server in a subprocess on loopback, called with httpx and the
official openai client; vectors equal the in-process Embedder's; batching across adapters;
every error in the OpenAI envelope; adapter updates confined to the adapters folder; SIGTERM
drains."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import sys
import threading
import time
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from helpers.artifacts import MAX_LENGTH, make_artifact
from helpers.data import ROOT, TEXTS
from helpers.server import KEY, launch, stop, wait_ready

httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")

from lastlayer.inference import Embedder  # noqa: E402

pytestmark = pytest.mark.serve

LONG = "word " * 200  # far beyond MAX_LENGTH tokens: truncated as the model is


@pytest.fixture(scope="module")
def setup(saved_models, tmp_path_factory):
    """Two artifacts a, b given by path; a third, c, in the adapters folder; the reference
    Embedder with the same three."""
    root = tmp_path_factory.mktemp("serve")
    model = saved_models["bert"]
    arts = {"a": make_artifact(model, root / "a", "lora", 2, 1, "bert"),
            "b": make_artifact(model, root / "b", "full", 1, 2, "bert")}
    folder = root / "adapters"
    arts["c"] = make_artifact(model, folder / "c", "lora", 1, 3, "bert")
    (folder / "escape").symlink_to(arts["a"], target_is_directory=True)  # points outside
    embedder = Embedder(model, device="cpu", max_length=MAX_LENGTH)
    for name, path in arts.items():
        embedder.load(path, name)
    return {"root": root, "model": model, "arts": arts, "folder": folder, "embedder": embedder}


@pytest.fixture(scope="module")
def servers(setup):
    """Both servers, started at once (loading the model is most of the wait):

    - ``main``: adapters a and b by path, c from the adapters folder, updates on, a key,
      at most 16 inputs and 20 000 bytes per request;
    - ``slow``: adapter a, no key, no updates, a 1.5 s batch window and a queue of 8 texts.
    """
    arts, tmp = setup["arts"], setup["root"]
    common = ["--model", str(setup["model"]), "--max-length", str(MAX_LENGTH), "--device", "cpu"]
    started = {
        "main": launch([*common, "--adapter", f"a={arts['a']}", "--adapter", f"b={arts['b']}",
                        "--adapters", str(setup["folder"]), "--allow-adapter-updates",
                        "--api-key-env", "LASTLAYER_KEY", "--max-inputs", "16",
                        "--max-body-bytes", "20000"], tmp),
        "slow": launch([*common, "--adapter", f"a={arts['a']}", "--batch-window-ms", "1500",
                        "--max-queue", "8", "--max-inputs", "8"], tmp),
    }
    try:
        yield {name: (proc, wait_ready(proc, url, log))
               for name, (proc, url, log) in started.items()}
    finally:
        for proc, _, _ in started.values():
            stop(proc)
    assert started["main"][0].returncode == 0


@pytest.fixture(scope="module")
def server(servers) -> str:
    return servers["main"][1]


def post(url: str, body, key: str | None = KEY, **kwargs) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{url}/v1/embeddings", json=body, headers=headers, timeout=60, **kwargs)


def expect(setup, texts, adapter) -> np.ndarray:
    return setup["embedder"].encode(texts, adapter=adapter).vectors


def assert_error(response: httpx.Response, status: int, param: str | None = None,
                 text: str = "") -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    assert text.lower() in error["message"].lower()


def test_float_and_base64_vectors_equal_the_embedders(server, setup):
    for model, adapter in (("tiny-bert", None), ("tiny-bert:a", "a"), ("b", "b"), ("c", "c")):
        r = post(server, {"model": model, "input": TEXTS})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["object"] == "list" and body["model"] == model
        assert [d["index"] for d in body["data"]] == list(range(len(TEXTS)))
        assert {d["object"] for d in body["data"]} == {"embedding"}
        got = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
        np.testing.assert_allclose(got, expect(setup, TEXTS, adapter), atol=1e-6)
        b64 = post(server, {"model": model, "input": TEXTS, "encoding_format": "base64",
                            "user": "someone"}).json()
        decoded = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4")
                            for d in b64["data"]])
        np.testing.assert_array_equal(decoded, got)


def test_usage_counts_real_tokens_after_truncation(server, setup):
    tokenizer = setup["embedder"].tokenizer
    texts = ["Aspirin", LONG]
    body = post(server, {"model": "a", "input": texts}).json()
    expected = len(tokenizer("Aspirin")["input_ids"]) + MAX_LENGTH  # LONG is cut to the limit
    assert body["usage"] == {"prompt_tokens": expected, "total_tokens": expected}
    single = post(server, {"model": "a", "input": "Aspirin"}).json()
    assert len(single["data"]) == 1
    assert single["usage"]["prompt_tokens"] == len(tokenizer("Aspirin")["input_ids"])
    long_vec = np.array(post(server, {"model": "a", "input": LONG}).json()["data"][0]
                        ["embedding"], dtype=np.float32)
    np.testing.assert_allclose(long_vec, expect(setup, [LONG], "a")[0], atol=1e-6)


def test_official_openai_client_default_base64_and_float(server, setup):
    client = openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0)
    default = client.embeddings.create(model="tiny-bert:b", input=TEXTS[:3])
    floats = client.embeddings.create(model="tiny-bert:b", input=TEXTS[:3],
                                      encoding_format="float")
    want = expect(setup, TEXTS[:3], "b")
    for response in (default, floats):
        got = np.array([d.embedding for d in response.data], dtype=np.float32)
        np.testing.assert_allclose(got, want, atol=1e-6)
        assert response.usage.prompt_tokens > 0
    models = {m.id: m for m in client.models.list().data}
    assert set(models) == {"tiny-bert", "a", "b", "c"}
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="nope", input="x")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0
                      ).embeddings.create(model="a", input="x")


def test_concurrent_requests_across_adapters_each_get_their_own(server, setup):
    before = metric(server, "lastlayer_batch_texts_count")
    models = ["tiny-bert", "a", "b", "c", "tiny-bert:a"]
    adapters = [None, "a", "b", "c", "a"]
    jobs = [(models[i % 5], adapters[i % 5], [f"{TEXTS[i % 7]} #{i}", TEXTS[(i + 3) % 7]])
            for i in range(32)]
    barrier = threading.Barrier(32)

    def call(job):
        barrier.wait()
        return post(server, {"model": job[0], "input": job[2]})

    with ThreadPoolExecutor(32) as pool:
        responses = list(pool.map(call, jobs))
    for (model, adapter, texts), r in zip(jobs, responses, strict=True):
        assert r.status_code == 200, r.text
        assert r.json()["model"] == model
        got = np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)
        np.testing.assert_allclose(got, expect(setup, texts, adapter), atol=1e-6)
    batches = metric(server, "lastlayer_batch_texts_count") - before
    assert 1 <= batches < 32  # requests were gathered into shared batches


def metric(url: str, name: str, labels: str = "") -> float:
    text = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    match = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def test_models_health_and_metrics(server):
    models = httpx.get(f"{server}/v1/models", headers={"Authorization": f"Bearer {KEY}"}).json()
    by_id = {m["id"]: m for m in models["data"]}
    assert by_id["tiny-bert"]["parent"] is None and by_id["tiny-bert"]["root"] == "tiny-bert"
    assert {by_id[n]["parent"] for n in "abc"} == {"tiny-bert"}
    assert {m["object"] for m in models["data"]} == {"model"}
    assert httpx.get(f"{server}/health").json() == {"status": "ok"}  # open, names nothing
    assert_error(httpx.get(f"{server}/metrics"), 401)  # adapter names and traffic: key only
    assert_error(httpx.get(f"{server}/metrics", headers={"Authorization": "Bearer no"}), 401)
    label = '{model="a",status="200"}'
    before = metric(server, "lastlayer_requests_total", label)
    post(server, {"model": "a", "input": "x"})
    post(server, {"model": "a", "input": ["x", "y"]})
    assert metric(server, "lastlayer_requests_total", label) == before + 2
    text = httpx.get(f"{server}/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    for name in ("lastlayer_request_seconds_bucket", "lastlayer_batch_texts_bucket",
                 "lastlayer_queue_texts"):
        assert name in text


def test_errors_use_the_openai_envelope(server):
    url = f"{server}/v1/embeddings"
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    assert_error(httpx.post(url, content=b"{not json", headers=auth), 400, None, "JSON")
    assert_error(post(server, {"model": "a", "input": 3}), 400, "input")
    assert_error(post(server, {"input": "x"}), 400, "model")
    assert_error(post(server, {"model": "a", "input": [[1, 2, 3]]}), 400, "input", "token-id")
    assert_error(post(server, {"model": "a", "input": [5, 6]}), 400, "input", "token-id")
    assert_error(post(server, {"model": "a", "input": []}), 400, "input", "empty")
    assert_error(post(server, {"model": "a", "input": ["ok", ""]}), 400, "input", "empty")
    assert_error(post(server, {"model": "a", "input": "x", "encoding_format": "int8"}), 400,
                 "encoding_format")
    assert_error(post(server, {"model": "a", "input": "x", "dimensions": 8}), 400,
                 "dimensions", "not supported")
    dim = len(post(server, {"model": "a", "input": "x"}).json()["data"][0]["embedding"])
    assert post(server, {"model": "a", "input": "x", "dimensions": dim}).status_code == 200
    for model in ("nope", "tiny-bert:nope", "nope:a"):  # never the base instead
        assert_error(post(server, {"model": model, "input": "x"}), 404, "model", "does not exist")
    assert_error(post(server, {"model": "tiny-bert:auto", "input": "x"}), 400, "model",
                 "routing signature")
    assert_error(post(server, {"model": "a", "input": ["x"] * 17}), 413, "input", "limit")
    assert_error(post(server, {"model": "a", "input": "y" * 30000}), 413, None, "bytes")
    chunked = httpx.post(url, content=iter([b'{"model": "a", "input": "', b"z" * 30000, b'"}']),
                         headers=auth)  # no Content-Length: the actual size is checked
    assert_error(chunked, 413, None, "bytes")
    assert_error(post(server, {"model": "a", "input": "x"}, key=None), 401, None, "API key")
    wrong = post(server, {"model": "a", "input": "x"}, key="wrong")
    assert_error(wrong, 401, None, "API key")
    assert KEY not in wrong.text
    assert_error(httpx.get(f"{server}/v1/models"), 401, None, "API key")
    assert_error(httpx.get(f"{server}/v1/nothing", headers=auth), 404)


def test_adapter_updates_only_from_the_adapters_folder(server, setup):
    auth = {"Authorization": f"Bearer {KEY}"}
    add = f"{server}/v1/adapters"
    for path in ("../a", str(setup["arts"]["a"]), "escape"):  # traversal, absolute, symlink
        assert_error(httpx.post(add, json={"name": "x", "path": path}, headers=auth), 403,
                     "path", "outside")
    assert_error(httpx.post(add, json={"name": "x", "path": "missing"}, headers=auth), 400,
                 "path")
    assert_error(httpx.post(add, json={"name": "c", "path": "c"}, headers=auth), 409, "name")
    assert_error(httpx.post(add, json={"name": "tiny-bert", "path": "c"}, headers=auth), 400,
                 "name")
    r = httpx.post(add, json={"name": "c2", "path": "c"}, headers=auth, timeout=60)
    assert r.status_code == 200, r.text
    c = post(server, {"model": "c", "input": TEXTS[:2]}).json()["data"]
    c2 = post(server, {"model": "c2", "input": TEXTS[:2]}).json()["data"]
    assert [d["embedding"] for d in c] == [d["embedding"] for d in c2]
    assert httpx.delete(f"{add}/c2", headers=auth).status_code == 200
    assert_error(post(server, {"model": "c2", "input": "x"}), 404, "model")
    assert_error(httpx.delete(f"{add}/c2", headers=auth), 404, "name")


def test_updates_off_queue_full_and_sigterm_drains(servers, setup):
    """The slow server: the first request waits in the 1.5 s window, the next one finds the
    queue full (429); SIGTERM then lets the first finish (200) and the process exits 0."""
    proc, url = servers["slow"]
    assert httpx.get(f"{url}/health").json() == {"status": "ok", "model": "tiny-bert",
                                                 "adapters": ["a"]}  # no key: names them
    assert "lastlayer_queue_texts" in httpx.get(f"{url}/metrics").text
    r = httpx.post(f"{url}/v1/adapters", json={"name": "x", "path": "c"})
    assert_error(r, 403, None, "--allow-adapter-updates")
    assert_error(httpx.delete(f"{url}/v1/adapters/a"), 403, None, "runtime")
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(post, url, {"model": "a", "input": TEXTS[:7]}, None)
        time.sleep(0.5)  # it is queued, waiting for the window to close
        full = post(url, {"model": "a", "input": ["one", "two"]}, key=None)
        assert_error(full, 429)
        assert full.headers["Retry-After"] == "1"
        proc.send_signal(signal.SIGTERM)
        done = slow.result(timeout=60)
    assert done.status_code == 200, done.text
    got = np.array([d["embedding"] for d in done.json()["data"]], dtype=np.float32)
    np.testing.assert_allclose(got, expect(setup, TEXTS[:7], "a"), atol=1e-6)
    assert proc.wait(30) == 0


# ---------------------------------------------------------------------------------------
# In process: routing through the batcher, the adapters folder, the missing extra


def test_auto_routes_each_input_in_a_shared_batch(setup, monkeypatch):
    """``BASE:auto`` (a stand-in routing module: the signature math is not this module's)
    gives Embedder.encode(adapter="auto")'s vectors, also when batched with named requests."""
    from fastapi.testclient import TestClient

    from lastlayer.inference import embedder as embedder_module
    from lastlayer.inference.server import ServeSettings, create_app

    fake = types.SimpleNamespace(
        read_signature=lambda folder: types.SimpleNamespace(layer=2, centroids=None)
        if Path(folder).name in ("a", "b") else None,
        assign=lambda signatures, pooled: [("a", "b", None)[int(abs(r[0]) * 1e4) % 3]
                                           for r in pooled[2]],
    )
    monkeypatch.setattr(embedder_module, "_routing", lambda: fake)
    emb = Embedder(setup["model"], device="cpu", max_length=MAX_LENGTH)
    for name in ("a", "b"):
        emb.load(setup["arts"][name], name)
    with TestClient(create_app(emb, ServeSettings(batch_window_ms=200))) as client:
        with ThreadPoolExecutor(2) as pool:
            auto = pool.submit(client.post, "/v1/embeddings",
                               json={"model": "tiny-bert:auto", "input": TEXTS})
            named = pool.submit(client.post, "/v1/embeddings",
                                json={"model": "b", "input": TEXTS[:2]})
            auto, named = auto.result(), named.result()
        assert auto.status_code == 200, auto.text
        got = np.array([d["embedding"] for d in auto.json()["data"]], dtype=np.float32)
        np.testing.assert_allclose(got, emb.encode(TEXTS, adapter="auto").vectors, atol=1e-6)
        assert len(set(emb.route(TEXTS))) >= 2  # the stand-in spreads the texts
        got = np.array([d["embedding"] for d in named.json()["data"]], dtype=np.float32)
        np.testing.assert_allclose(got, emb.encode(TEXTS[:2], adapter="b").vectors, atol=1e-6)


def test_auto_usage_counts_tokens_at_the_routed_adapters_limit(setup, monkeypatch, tmp_path):
    """A routed row is truncated at its adapter's token limit, not the base's: ``usage``
    counts those tokens (here every row goes to an adapter with max_length 6 < the base's)."""
    from fastapi.testclient import TestClient

    from lastlayer.inference import embedder as embedder_module
    from lastlayer.inference.server import ServeSettings, create_app

    short = make_artifact(setup["model"], tmp_path / "short", "lora", 2, 9, "bert",
                          max_length=6)
    fake = types.SimpleNamespace(
        read_signature=lambda folder: types.SimpleNamespace(layer=2, centroids=None)
        if Path(folder).name == "short" else None,
        assign=lambda signatures, pooled: ["short"] * len(pooled[2]),
    )
    monkeypatch.setattr(embedder_module, "_routing", lambda: fake)
    emb = Embedder(setup["model"], device="cpu", max_length=MAX_LENGTH)
    emb.load(short, "short")
    texts = [LONG, TEXTS[0], "aspirin"]
    with TestClient(create_app(emb, ServeSettings(batch_window_ms=0))) as client:
        r = client.post("/v1/embeddings", json={"model": "tiny-bert:auto", "input": texts})
    assert r.status_code == 200, r.text
    expected = sum(len(ids) for ids in emb.tokenizer(texts, truncation=True,
                                                     max_length=6)["input_ids"])
    assert expected < sum(len(ids) for ids in emb.tokenizer(
        texts, truncation=True, max_length=MAX_LENGTH)["input_ids"])  # the limits differ here
    assert r.json()["usage"] == {"prompt_tokens": expected, "total_tokens": expected}
    got = np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)
    np.testing.assert_allclose(got, emb.encode(texts, adapter="short").vectors, atol=1e-6)


def test_adapters_folder_names_must_be_unique(setup, tmp_path, capsys):
    from lastlayer.cli import main
    from lastlayer.inference.server import find_adapters

    assert find_adapters(setup["folder"]) == {"c": setup["folder"] / "c"}
    for where in ("one", "two"):
        shutil.copytree(setup["arts"]["a"], tmp_path / where / "a")
    with pytest.raises(ValueError, match="two adapters under .* are named 'a'"):
        find_adapters(tmp_path)
    assert main(["serve", "--model", "nobody/nothing", "--adapters", str(tmp_path)]) == 2
    assert "named 'a'" in capsys.readouterr().err
    assert main(["serve", "--model", "x", "--adapter", "no-equals-sign"]) == 2
    assert "NAME=PATH" in capsys.readouterr().err
    os.environ.pop("LASTLAYER_TEST_UNSET", None)
    assert main(["serve", "--model", "x", "--api-key-env", "LASTLAYER_TEST_UNSET"]) == 2
    assert "LASTLAYER_TEST_UNSET: that environment variable is not set" in \
        capsys.readouterr().err


def test_serve_without_the_extra_exits_2(monkeypatch, capsys):
    from lastlayer.cli import main

    monkeypatch.setitem(sys.modules, "fastapi", None)  # as if never installed
    assert main(["serve", "--model", "nobody/nothing-here"]) == 2
    assert "pip install 'lastlayer[serve]'" in capsys.readouterr().err


def benchmark_module() -> types.ModuleType:
    """benchmarks/serve.py, imported from its file (benchmarks/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("benchmarks_serve",
                                                  ROOT / "benchmarks" / "serve.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_benchmark_driver_counts_texts_and_latencies():
    """benchmarks/serve.py's load driver (the servers it times are the ones tested above)."""
    bench = benchmark_module()
    assert bench.parse_args([]).clients == [1, 8, 32]
    pick = bench.batches([f"t{i}" for i in range(50)], 4)
    assert pick(0, 0) == ["t0", "t1", "t2", "t3"] and pick(0, 1) == ["t4", "t5", "t6", "t7"]
    assert pick(1, 0) != pick(0, 0)
    seen = []

    def call(client, i):
        seen.append(client)
        time.sleep(0.01)
        return 4

    run = bench.drive(3, 0.2, call)
    assert len(run["latencies"]) == len(seen) and set(seen) == {0, 1, 2}
    assert run["texts"] == 4 * len(seen) and 0.2 <= run["seconds"] < 1
    run.update(load=1.0, cpu_s=0.5, client_cpu_s=0.1, idle_servers_cpu_s=0.0, faults=40)
    row = bench.summarise("in-process", 3, [run, {**run, "texts": 0, "load": 3.0}], 4)
    assert row["minor_faults_per_text"] == pytest.approx(80 / run["texts"])
    assert row["texts_per_s"] == pytest.approx(run["texts"] / (2 * run["seconds"]))
    assert row["texts_per_cpu_s"] == pytest.approx(run["texts"] / 1.0)
    assert row["cores_used"] == pytest.approx(0.5 / run["seconds"])
    assert row["requests"] == 2 * len(seen) and row["load_1min"] == [1.0, 3.0]
    assert 10 <= row["p50_ms"] <= row["p99_ms"]  # every request sleeps 10 ms
    rows = [{"system": s, "clients": 8, "texts_per_s": v} for s, v in
            [("in-process", 100), ("server-single", 90), ("server-mixed", 81),
             ("server-base", 60), ("peer-base", 40), ("server-single-glibc", 75)]]
    assert bench.ratios(rows) == {"server_single_over_in_process@8": 0.9,
                                  "server_mixed_over_single@8": 0.9,
                                  "server_single_over_glibc_heap@8": 1.2,
                                  "server_base_over_peer_base@8": 1.5}


def test_benchmark_cpu_seconds_of_a_process():
    bench = benchmark_module()
    before, own = bench.cpu_seconds(), time.process_time()
    end = time.process_time() + 0.3
    while time.process_time() < end:  # burn 0.3 s of CPU
        pass
    used = bench.cpu_seconds() - before
    assert used == pytest.approx(time.process_time() - own, abs=0.05) and used >= 0.25
    assert bench.cpu_seconds(os.getpid()) >= bench.cpu_seconds() - 0.05


def test_benchmark_peer_folder_truncates_as_lastlayer(tmp_path, monkeypatch):
    """The peer embeds the base folder through symlinks, with the same token limit."""
    bench = benchmark_module()
    base = tmp_path / "base"
    (base / "1_Pooling").mkdir(parents=True)
    (base / "config.json").write_text("{}")
    (base / "sentence_bert_config.json").write_text('{"max_seq_length": 256, "x": 1}')
    monkeypatch.setattr(bench, "base_folder", lambda model: base)
    view = bench.peer_folder("m", 128, (tmp_path / "view"))
    assert (view / "1_Pooling").resolve() == base / "1_Pooling"
    assert json.loads((view / "sentence_bert_config.json").read_text()) == {
        "max_seq_length": 128, "x": 1}
    assert json.loads((base / "sentence_bert_config.json").read_text())["max_seq_length"] == 256


def test_a_failing_request_fails_alone_in_its_batch():
    """Two requests share a batch; the model raises for one of them: that one gets its own
    error (404 for an adapter unloaded meanwhile, 500 for a crash), the other its vectors.
    A request found bad by the check before the batch is never encoded; one that fails in
    the shared call is encoded once more, alone, and gets that call's error."""
    import asyncio

    from lastlayer.core.engine import Embeddings
    from lastlayer.inference.embedder import UnknownAdapterError
    from lastlayer.inference.server import APIError, Batcher, Metrics, ServeSettings

    calls = []

    class Fake:  # what the batcher uses of an Embedder
        @staticmethod
        def check_request(adapter, n):  # "gone" is unloaded after this check passes
            if "missing" in adapter:
                raise UnknownAdapterError("no adapter named 'missing' is loaded")

        @staticmethod
        def resident(names):  # every head "resident": the batch gets none to pass
            return {}

        @staticmethod
        def encode(texts, adapter, batch_size, progress, heads=None):
            calls.append(list(adapter))
            if "gone" in adapter:
                raise UnknownAdapterError("no adapter named 'gone' is loaded")
            if "crash" in adapter:
                raise RuntimeError("boom")
            vectors = np.array([[len(t), 1.0] for t in texts], dtype=np.float32)
            return Embeddings(vectors, np.array([len(t) for t in texts]))

    async def run():
        metrics = Metrics()
        batcher = Batcher(Fake(), ServeSettings(batch_window_ms=50), metrics)
        batcher.start()
        try:
            return await asyncio.gather(
                batcher.submit(["abc", "de"], [None, None]),
                batcher.submit(["x"], ["gone"]), batcher.submit(["y"], ["crash"]),
                batcher.submit(["z"], ["missing"]),
                return_exceptions=True), metrics
        finally:
            await batcher.stop()

    (good, gone, crash, missing), metrics = asyncio.run(run())
    vectors, tokens = good
    np.testing.assert_array_equal(vectors, [[3, 1], [2, 1]])
    assert tokens == [3, 2]
    assert isinstance(gone, APIError) and (gone.status, gone.code) == (404, "model_not_found")
    assert isinstance(crash, APIError) and crash.status == 500 and "boom" in crash.message
    assert isinstance(missing, APIError) and missing.status == 404 and "missing" in missing.message
    assert calls[0] == [None, None, "gone", "crash"]  # one shared call first
    # then each job alone, once: no request is encoded a third time, "missing" never
    assert calls[1:] == [[None, None], ["gone"], ["crash"]]
    samples = {s.name: s.value for s in metrics.batch.collect()[0].samples}
    assert (samples["lastlayer_batch_texts_count"], samples["lastlayer_batch_texts_sum"]) == (1, 5)

"""Throughput and latency of ``lastlayer serve`` against the in-process Embedder and a peer server.

Usage (offline; timings are only meaningful as ratios within one run)::

    make infinity    # once: the peer's own venv, benchmarks/.venv-infinity
    HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.serve --out benchmarks/results/serve.json
    HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.serve --rounds 1 --seconds 3   # short

Five systems on one base (default all-MiniLM-L6-v2, from its packaged copy offline) and one
adapter artifact (default the shipped ``adapters/medical/minilm-l6_lora-top2_crop``):

- ``in-process``: client threads call ``Embedder.encode(texts, adapter=NAME)`` directly;
- ``server-single``: the same requests over HTTP to ``lastlayer serve`` (a subprocess on
  loopback), every request for one adapter;
- ``server-mixed``: the same, requests spread round-robin over 4 adapters (the artifact
  loaded under 4 names: four private heads, as four domain adapters would be);
- ``server-base``: the same server, requests for the base model;
- ``server-single-1w``: ``server-single`` on a second server started with ``--workers 1``
  (one batch at a time on all of torch's threads): the baseline of the two-worker default;
- ``server-single-glibc``: ``server-single`` on a server started with
  ``LASTLAYER_KEEP_FREED_MEMORY=0`` (glibc's heap defaults: freed activations returned to
  the OS and faulted in again by the next batch): the baseline of the kept heap;
- ``peer-base`` / ``peer-bf16`` / ``peer-optimum``: Infinity (``infinity-emb``, run from its
  own venv ``--infinity-venv``) serving the same base folder, truncating at the same token
  limit, in the configurations its docs offer on CPU: the torch engine in float32, the torch
  engine in bfloat16 (``--dtype bfloat16``: fast where the CPU multiplies bf16 natively),
  and ``--engine optimum`` (ONNX Runtime; it exports the model to ONNX itself). Infinity
  serves merged models only, so the peer comparison is on the base.

Every system gets the same requests (``--texts`` texts from the medical abstracts corpus,
``--data``), each client sending back to back for ``--seconds``, at each of ``--clients``
concurrent clients; HTTP clients are ``httpx.Client`` objects posting the OpenAI
``/v1/embeddings`` body to either server alike. ``--rounds`` interleaved rounds (every
system and client count once per round, the system order rotating) let machine load fall
on all systems alike; a row pools its rounds: texts/s over the total time, p50 / p99 over
every request. The JSON records the CPU count, torch threads, ``uptime`` at start and end
and the 1-minute load around every measurement, and checks that both servers return the
same base vectors.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks.bench import MEDICAL, ROOT, measure, models, tables
from benchmarks.bench.measure import cpu_seconds, load_1min, minor_faults, run_clients, uptime
from benchmarks.bench.results import write_json
from lastlayer.core import allocator

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_ADAPTER = ROOT / "adapters" / "medical" / "minilm-l6_lora-top2_crop"
DEFAULT_DATA = MEDICAL
DEFAULT_INFINITY = ROOT / "benchmarks" / ".venv-infinity"
NAMES = ["m1", "m2", "m3", "m4"]
# Infinity's CPU configurations: (engine, dtype) per peer system
PEERS = {"peer-base": ("torch", "float32"), "peer-bf16": ("torch", "bfloat16"),
         "peer-optimum": ("optimum", "auto")}  # optimum: the int8 ONNX file, as it prefers
# sentence-transformers' CPU backends behind a minimal FastAPI endpoint (benchmarks/peers)
ST_PEERS = {"st-onnx": "onnx", "st-onnx-int8": "onnx-int8", "st-openvino": "openvino",
            "st-openvino-int8": "openvino-int8"}
# server-single on a server of its own, started otherwise: one batch at a time (the
# baseline of the two workers), glibc's heap defaults (the baseline of the kept heap)
BASELINE_SERVERS: dict[str, dict] = {
    "server-single-1w": {"workers": 1},
    "server-single-glibc": {"env": {"LASTLAYER_KEEP_FREED_MEMORY": "0"}}}
SYSTEMS = ["in-process", "server-single", "server-mixed", "server-base", *BASELINE_SERVERS,
           *PEERS, *ST_PEERS]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serve",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--adapter", default=str(DEFAULT_ADAPTER))
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--texts", type=int, default=4, help="texts per request")
    parser.add_argument("--seconds", type=float, default=8.0, help="per system, clients, round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--max-length", type=int, default=128,
                        help="token limit of the base, for every system (the adapter's is 128)")
    parser.add_argument("--batch-size", type=int, default=64,
                        help="texts per forward pass inside the peers (Infinity's and the "
                        "sentence-transformers endpoint's --batch-size; lastlayer serve's is "
                        "--encode-batch-size)")
    parser.add_argument("--encode-batch-size", type=int, default=None,
                        help="lastlayer serve's --encode-batch-size (default: its own)")
    parser.add_argument("--systems", nargs="+", default=SYSTEMS, choices=SYSTEMS)
    parser.add_argument("--infinity-venv", default=str(DEFAULT_INFINITY),
                        help="the peer's virtual environment (make infinity)")
    parser.add_argument("--peer-heap", choices=["default", "kept"], default="default",
                        help="the peers' C heap: glibc's defaults, or the thresholds lastlayer "
                        "sets for itself (given through glibc's MALLOC_*_ variables)")
    parser.add_argument("--out", help="write the results as JSON here")
    return parser.parse_args(argv)


def drive(clients: int, seconds: float, call: Callable[[int, int], int]) -> dict:
    """Run ``clients`` threads calling ``call(client, i)`` (returns texts done) for
    ``seconds``; the texts done, the time taken and every request's latency."""
    latencies: list[float] = []
    texts = [0] * clients
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def client(c: int) -> None:
        for i in itertools.count():
            if time.perf_counter() >= stop_at:
                return
            start = time.perf_counter()
            done = call(c, i)
            with lock:
                latencies.append(time.perf_counter() - start)
            texts[c] += done

    seconds = run_clients(clients, client)  # before the texts are summed
    return {"texts": sum(texts), "seconds": seconds, "latencies": latencies}


def batches(corpus: list[str], size: int) -> Callable[[int, int], list[str]]:
    """Request ``i`` of client ``c``: ``size`` texts, different across clients and calls."""
    def pick(c: int, i: int) -> list[str]:
        start = (c * 7919 + i * size) % (len(corpus) - size)
        return corpus[start : start + size]
    return pick


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(proc: subprocess.Popen, health: str, what: str, seconds: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(health, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with status {proc.returncode}")
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"{what} did not start in {seconds:.0f} s")


def start_lastlayer(args: argparse.Namespace, workers: int | None = None,
                    env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """``lastlayer serve`` with the 4 adapters, at its default ``--workers`` or ``workers``,
    with ``env`` added to its environment."""
    port = free_port()
    cmd = [sys.executable, "-m", "lastlayer", "serve", "--model", args.model, "--port", str(port),
           "--max-length", str(args.max_length), "--log-level", "warning",
           *([] if workers is None else ["--workers", str(workers)]),
           *([] if args.encode_batch_size is None
             else ["--encode-batch-size", str(args.encode_batch_size)])]
    for name in NAMES:
        cmd += ["--adapter", f"{name}={args.adapter}"]
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
    url = f"http://127.0.0.1:{port}"
    wait_ready(proc, f"{url}/health", "lastlayer serve")
    return proc, url


def base_folder(model: str) -> Path:
    """The local folder of the base (its packaged copy offline), as Infinity needs one."""
    path = Path(models.resolve(model).path)
    if not (path / "config.json").exists():
        raise SystemExit(f"{model} resolves to {path}, not a local folder: pass a local path "
                         "with --model for the peer.")
    return path


def peer_folder(model: str, max_length: int, into: Path) -> Path:
    """A view of the base folder (symlinks) whose sentence-transformers config truncates at
    ``max_length``, so the peer embeds exactly the tokens lastlayer does."""
    source = base_folder(model)
    into.mkdir(parents=True, exist_ok=True)
    for entry in source.iterdir():
        if entry.name != "sentence_bert_config.json":
            (into / entry.name).symlink_to(entry)
    config_file = source / "sentence_bert_config.json"
    config = json.loads(config_file.read_text()) if config_file.exists() else {}
    config["max_seq_length"] = max_length
    (into / "sentence_bert_config.json").write_text(json.dumps(config))
    return into


def start_infinity(args: argparse.Namespace, folder: Path, engine: str = "torch",
                   dtype: str = "float32") -> tuple[subprocess.Popen, str]:
    exe = Path(args.infinity_venv) / "bin" / "infinity_emb"
    if not exe.exists():
        raise SystemExit(f"{exe} is missing: build the peer's venv with `make infinity`, or "
                         "leave peer-base out of --systems.")
    if engine == "optimum":  # Infinity loads ONNX files that are there; it exports none
        export_onnx(args, folder)
    port = free_port()
    # Infinity 0.0.78 hands optimum the ONNX file's path as found under --model-id, which
    # optimum 2 wants relative to the model folder: so the folder is the working directory
    cmd = [str(exe), "v2", "--model-id", ".", "--served-model-name", args.model,
           "--engine", engine, "--dtype", dtype, "--device", "cpu", "--no-bettertransformer",
           "--batch-size", str(args.batch_size), "--host", "127.0.0.1", "--port", str(port),
           "--url-prefix", "/v1", "--log-level", "warning"]
    env = {**os.environ, **peer_heap(args), "HF_HUB_OFFLINE": "1",
           "INFINITY_ANONYMOUS_USAGE_STATS": "0",
           "DO_NOT_TRACK": "1"}
    env.pop("PYTHONPATH", None)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, cwd=folder)
    wait_ready(proc, f"http://127.0.0.1:{port}/health", "infinity_emb")  # outside the prefix
    return proc, f"http://127.0.0.1:{port}/v1"


def export_onnx(args: argparse.Namespace, folder: Path) -> None:
    """``folder/model.onnx`` (the base exported by optimum, fp32) and
    ``folder/model_quantized.onnx`` (dynamic int8, AVX512-VNNI), in the peers' venv: Infinity
    loads ONNX files that are there (it exports none) and prefers a quantized one on CPU."""
    script = (
        "import sys; from optimum.onnxruntime import ORTModelForFeatureExtraction as M, "
        "ORTQuantizer; from optimum.onnxruntime.configuration import AutoQuantizationConfig as Q;"
        " m = M.from_pretrained(sys.argv[1], export=True); m.save_pretrained(sys.argv[2]); "
        "ORTQuantizer.from_pretrained(m).quantize(save_dir=sys.argv[2], "
        "quantization_config=Q.avx512_vnni(is_static=False, per_channel=True))")
    out = folder.parent / f"{folder.name}-onnx"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    subprocess.run([str(Path(args.infinity_venv) / "bin" / "python"), "-c", script,
                    str(folder), str(out)], check=True, env=env, stdout=subprocess.DEVNULL)
    for name in ("model.onnx", "model_quantized.onnx"):
        (folder / name).symlink_to(out / name)


def peer_heap(args: argparse.Namespace) -> dict[str, str]:
    """glibc's environment variables that give a peer lastlayer's kept heap
    (``--peer-heap kept``: lastlayer.core.allocator's thresholds), or none (``default``)."""
    if args.peer_heap == "default":
        return {}
    return {"MALLOC_MMAP_THRESHOLD_": str(allocator.MMAP_THRESHOLD),
            "MALLOC_TRIM_THRESHOLD_": str(allocator.TRIM_THRESHOLD),
            "MALLOC_TOP_PAD_": str(allocator.TOP_PAD)}


def start_st_peer(args: argparse.Namespace, folder: Path,
                  backend: str) -> tuple[subprocess.Popen, str]:
    """sentence-transformers on ``backend`` behind benchmarks/peers/st_server.py, run with
    the peers' venv (it has transformers 4.x, optimum-onnx and OpenVINO)."""
    exe = Path(args.infinity_venv) / "bin" / "python"
    port = free_port()
    cmd = [str(exe), str(ROOT / "benchmarks" / "peers" / "st_server.py"), str(folder),
           "--backend", backend, "--port", str(port), "--max-length", str(args.max_length),
           "--batch-size", str(args.batch_size)]
    env = {**os.environ, **peer_heap(args), "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    wait_ready(proc, f"http://127.0.0.1:{port}/health", f"sentence-transformers {backend}",
               seconds=600)  # the first load exports to ONNX / OpenVINO
    return proc, f"http://127.0.0.1:{port}/v1"


class HTTP:
    """One ``httpx.Client`` per (server, client index), posting OpenAI embedding requests."""

    def __init__(self) -> None:
        import httpx

        self._httpx = httpx
        self._clients: dict[tuple[str, int], object] = {}

    def post(self, url: str, c: int, model: str, texts: list[str]) -> list[list[float]]:
        client = self._clients.get((url, c))
        if client is None:
            client = self._clients[(url, c)] = self._httpx.Client(timeout=300)
        r = client.post(f"{url}/embeddings", json={"model": model, "input": texts,
                                                   "encoding_format": "float"})
        r.raise_for_status()
        return [row["embedding"] for row in r.json()["data"]]

    def close(self) -> None:
        for client in self._clients.values():
            client.close()


def stop(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def summarise(system: str, clients: int, runs: list[dict], texts: int) -> dict:
    lat = np.array([x for run in runs for x in run["latencies"]]) * 1000
    return {"system": system, "clients": clients, "texts_per_request": texts,
            "texts_per_s": sum(r["texts"] for r in runs) / sum(r["seconds"] for r in runs),
            "texts_per_s_rounds": [round(r["texts"] / r["seconds"], 2) for r in runs],
            "requests": len(lat), "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)),
            # the embedding process's CPU: texts per CPU second is its cost, cores its share
            "texts_per_cpu_s": sum(r["texts"] for r in runs) / sum(r["cpu_s"] for r in runs),
            "cores_used": sum(r["cpu_s"] for r in runs) / sum(r["seconds"] for r in runs),
            "minor_faults_per_text": sum(r["faults"] for r in runs)
            / sum(r["texts"] for r in runs),
            "client_cores_used": sum(r["client_cpu_s"] for r in runs)
            / sum(r["seconds"] for r in runs),
            "idle_servers_cores_used": sum(r["idle_servers_cpu_s"] for r in runs)
            / sum(r["seconds"] for r in runs),
            "load_1min": [round(r["load"], 2) for r in runs]}


def ratios(rows: list[dict]) -> dict:
    """The targets: server >= 0.8x in-process at 8 clients, mixed >= 0.9x single, ahead of
    the peer on the base at 8 and 32 clients."""
    rate = {(r["system"], r["clients"]): r["texts_per_s"] for r in rows}
    out = {}
    for clients in sorted({r["clients"] for r in rows}):
        pairs = {"server_single_over_in_process": ("server-single", "in-process"),
                 "server_mixed_over_single": ("server-mixed", "server-single"),
                 "server_single_over_one_worker": ("server-single", "server-single-1w"),
                 "server_single_over_glibc_heap": ("server-single", "server-single-glibc"),
                 "server_base_over_peer_base": ("server-base", "peer-base"),
                 "server_single_over_peer_bf16": ("server-single", "peer-bf16"),
                 "server_single_over_peer_optimum": ("server-single", "peer-optimum"),
                 **{f"server_single_over_{name}": ("server-single", name) for name in ST_PEERS}}
        for name, (a, b) in pairs.items():
            if (a, clients) in rate and (b, clients) in rate:
                out[f"{name}@{clients}"] = round(rate[(a, clients)] / rate[(b, clients)], 3)
    return out


def format_table(rows: list[dict]) -> str:
    """The markdown table of docs/serve.md: speed, latency and CPU cost per system."""
    return tables.markdown(
        ["system", "clients", "texts/s", "p50 ms", "p99 ms", "texts per CPU s", "cores used",
         "page faults / text"],
        [[r["system"], r["clients"], f"{r['texts_per_s']:.1f}", f"{r['p50_ms']:.0f}",
          f"{r['p99_ms']:.0f}", f"{r['texts_per_cpu_s']:.1f}", f"{r['cores_used']:.2f}",
          f"{r['minor_faults_per_text']:.0f}"]
         for r in rows])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from lastlayer.corpus import read_texts
    from lastlayer.inference import Embedder

    corpus = read_texts(args.data, max_docs=2000)
    pick = batches(corpus, args.texts)
    started = {"uptime": uptime(), "load_1min": load_1min()}
    procs: list[subprocess.Popen] = []
    http = HTTP()
    calls: dict[str, Callable[[int, int], int]] = {}
    check: dict[str, float] = {}
    pids: dict[str, int] = {}  # the process that embeds, per HTTP system
    with tempfile.TemporaryDirectory(prefix="lastlayer-peer-") as tmp:
        try:
            if "in-process" in args.systems:
                embedder = Embedder(args.model, max_length=args.max_length)
                embedder.load(args.adapter, NAMES[0])
                calls["in-process"] = lambda c, i: len(
                    embedder.encode(pick(c, i), adapter=NAMES[0], progress=False))
            for system, how in BASELINE_SERVERS.items():  # each its own server
                if system not in args.systems:
                    continue
                proc_b, url_b = start_lastlayer(args, **how)
                procs.append(proc_b)
                pids[system] = proc_b.pid
                calls[system] = (lambda u: lambda c, i: len(
                    http.post(u + "/v1", c, NAMES[0], pick(c, i))))(url_b)
            if {"server-single", "server-mixed", "server-base"} & set(args.systems):
                proc, url = start_lastlayer(args)
                procs.append(proc)
                calls["server-single"] = lambda c, i: len(
                    http.post(url + "/v1", c, NAMES[0], pick(c, i)))
                calls["server-mixed"] = lambda c, i: len(
                    http.post(url + "/v1", c, NAMES[(c + i) % len(NAMES)], pick(c, i)))
                calls["server-base"] = lambda c, i: len(
                    http.post(url + "/v1", c, args.model, pick(c, i)))
                pids.update(dict.fromkeys(["server-single", "server-mixed", "server-base"],
                                          proc.pid))
            peers = {**{name: (start_infinity, config) for name, config in PEERS.items()},
                     **{name: (start_st_peer, (b,)) for name, b in ST_PEERS.items()}}
            for system, (start_peer, config) in peers.items():
                if system not in args.systems:
                    continue
                folder = peer_folder(args.model, args.max_length, Path(tmp) / system)
                peer, peer_url = start_peer(args, folder, *config)
                procs.append(peer)
                pids[system] = peer.pid
                calls[system] = (lambda u: lambda c, i: len(
                    http.post(u, c, args.model, pick(c, i))))(peer_url)
                if "server-base" in calls:  # same model, same truncation: same vectors
                    texts = pick(0, 0)
                    ours = np.array(http.post(url + "/v1", 0, args.model, texts))
                    theirs = np.array(http.post(peer_url, 0, args.model, texts))
                    check[f"min_cosine_server_base_vs_{system}"] = float(min(
                        (ours * theirs).sum(1) / np.linalg.norm(ours, axis=1)
                        / np.linalg.norm(theirs, axis=1)))
            systems = [s for s in args.systems if s in calls]
            for system in systems:  # warm-up: a few requests each
                for i in range(3):
                    calls[system](0, i)
            runs: dict[tuple[str, int], list[dict]] = {}
            for rnd in range(args.rounds):
                order = systems[rnd % len(systems):] + systems[: rnd % len(systems)]
                for clients in args.clients:
                    for system in order:
                        before, pid = load_1min(), pids.get(system)
                        cpu, own, faults = cpu_seconds(pid), cpu_seconds(), minor_faults(pid)
                        idle = {q.pid: cpu_seconds(q.pid) for q in procs if q.pid != pid}
                        run = drive(clients, args.seconds, calls[system])
                        run["load"] = (before + load_1min()) / 2
                        run["cpu_s"] = cpu_seconds(pid) - cpu  # in-process: this process
                        run["faults"] = minor_faults(pid) - faults
                        run["client_cpu_s"] = 0.0 if pid is None else cpu_seconds() - own
                        # the servers not under test should sit idle: what they used anyway
                        run["idle_servers_cpu_s"] = sum(cpu_seconds(q) - t
                                                        for q, t in idle.items())
                        runs.setdefault((system, clients), []).append(run)
                        print(f"round {rnd + 1} {system} x{clients}: "
                              f"{run['texts'] / run['seconds']:.1f} texts/s, load "
                              f"{run['load']:.2f}", flush=True)
        finally:
            http.close()
            for proc in procs:
                stop(proc)
    rows = [summarise(s, c, runs[(s, c)], args.texts) for c in args.clients for s in systems]
    result = {
        "machine": {"cpu": measure.cpu_description(), "cpu_count": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(),
                    "uptime_start": started["uptime"], "uptime_end": uptime()},
        "settings": {"model": args.model, "adapter": Path(args.adapter).name,
                     "texts_per_request": args.texts, "seconds": args.seconds,
                     "rounds": args.rounds, "max_length": args.max_length,
                     "server_batch_size": args.batch_size, "clients": args.clients,
                     "peer_heap": args.peer_heap,
                     "lastlayer_encode_batch_size": args.encode_batch_size,
                     "peers": {name: f"infinity-emb 0.0.78, engine {e}, dtype {d}, CPU"
                               for name, (e, d) in PEERS.items() if name in systems}
                     | {name: f"sentence-transformers 3.4.1, backend {b}, CPU"
                        for name, b in ST_PEERS.items() if name in systems}},
        "check": check, "ratios": ratios(rows), "rows": rows}
    print("\n" + format_table(rows))
    print(json.dumps(result["ratios"], indent=1))
    if args.out:
        write_json(Path(args.out), result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

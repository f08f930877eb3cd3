"""Throughput and latency of ``lastlayer serve`` against the in-process Embedder.

Usage (offline; timings are only meaningful as ratios within one run, on a quiet machine)::

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/serve.py --out results/serve.json
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/serve.py --seconds 3 --clients 1 8   # short

Three systems on one base (default all-MiniLM-L6-v2 from its packaged copy) and one adapter
artifact (default the shipped ``adapters/medical/minilm-l6_lora-top2_crop``):

- ``in-process``: client threads call ``Embedder.encode(texts, adapter=NAME)`` directly;
- ``server-single``: the same requests over HTTP to ``lastlayer serve`` (a subprocess on
  loopback), every request for one adapter;
- ``server-mixed``: the same, requests spread round-robin over 4 adapters (the artifact
  loaded under 4 names: four private heads, as four domain adapters would be).

Each client sends requests of ``--texts`` texts back to back for ``--seconds``; a row holds
texts/s over all clients and the p50 / p99 request latency. Texts come from the medical
abstracts corpus (``--data``). The machine (CPU count, torch threads, load average) is
written into every row.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_ADAPTER = ROOT / "adapters" / "medical" / "minilm-l6_lora-top2_crop"
DEFAULT_DATA = ROOT / "data" / "medical_abstracts" / "medical_abstracts.jsonl.gz"
NAMES = ["m1", "m2", "m3", "m4"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--adapter", default=str(DEFAULT_ADAPTER))
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--texts", type=int, default=4, help="texts per request")
    parser.add_argument("--seconds", type=float, default=10.0, help="per configuration")
    parser.add_argument("--systems", nargs="+",
                        default=["in-process", "server-single", "server-mixed"])
    parser.add_argument("--out", help="write the rows as JSON here")
    return parser.parse_args(argv)


def machine() -> dict:
    import torch

    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "load_1min": os.getloadavg()[0]}


def drive(clients: int, seconds: float, call) -> dict:
    """Run ``clients`` threads calling ``call(client, i)`` (returns texts done) for
    ``seconds``; texts/s and latency percentiles."""
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

    begin = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - begin
    lat = np.array(latencies) * 1000
    return {"texts_per_s": sum(texts) / elapsed, "requests": len(latencies),
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99))}


def batches(corpus: list[str], size: int):
    """Request ``i`` of client ``c``: ``size`` texts, different across clients and calls."""
    def pick(c: int, i: int) -> list[str]:
        start = (c * 7919 + i * size) % (len(corpus) - size)
        return corpus[start : start + size]
    return pick


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "lastlayer", "serve", "--model", args.model, "--port", str(port),
           "--log-level", "warning"]
    for name in NAMES:
        cmd += ["--adapter", f"{name}={args.adapter}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, env=env)
    import httpx

    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            if proc.poll() is not None:
                raise SystemExit(f"the server exited with {proc.returncode}") from None
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not start in 2 minutes")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from lastlayer.corpus import read_texts
    from lastlayer.inference import Embedder

    corpus = read_texts(args.data, max_docs=2000)
    pick = batches(corpus, args.texts)
    rows = []

    def record(system: str, clients: int, result: dict) -> None:
        row = {"system": system, "clients": clients, "texts_per_request": args.texts,
               **result, "machine": machine()}
        rows.append(row)
        print(json.dumps(row), flush=True)

    if "in-process" in args.systems:
        embedder = Embedder(args.model)
        embedder.load(args.adapter, NAMES[0])
        embedder.encode(pick(0, 0), adapter=NAMES[0])  # warm-up
        for clients in args.clients:
            record("in-process", clients, drive(clients, args.seconds, lambda c, i: len(
                embedder.encode(pick(c, i), adapter=NAMES[0], progress=False))))
        del embedder
    servers = [s for s in args.systems if s.startswith("server-")]
    if servers:
        import httpx

        proc, url = start_server(args)
        try:
            local = threading.local()

            def post(model: str, texts: list[str]) -> int:
                if not hasattr(local, "client"):
                    local.client = httpx.Client(timeout=120)
                r = local.client.post(f"{url}/v1/embeddings",
                                      json={"model": model, "input": texts})
                r.raise_for_status()
                return len(r.json()["data"])

            post(NAMES[0], pick(0, 0))  # warm-up
            for system in servers:
                for clients in args.clients:
                    if system == "server-single":
                        result = drive(clients, args.seconds,
                                       lambda c, i: post(NAMES[0], pick(c, i)))
                    else:
                        result = drive(clients, args.seconds, lambda c, i: post(
                            NAMES[(c + i) % len(NAMES)], pick(c, i)))
                    record(system, clients, result)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    print("\n| system | clients | texts/s | p50 ms | p99 ms |\n|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['system']} | {row['clients']} | {row['texts_per_s']:.1f} | "
              f"{row['p50_ms']:.0f} | {row['p99_ms']:.0f} |")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Soak ``lastlayer serve``: the real server under 8, then 32 concurrent clients, every answer
checked.

Usage (offline; loopback only; stops by itself)::

    HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.soak                  # 6,000 + warm-up
    HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.soak --requests 200 200 --out /tmp/s.json

The server (a ``lastlayer serve`` subprocess on 127.0.0.1) serves the base (``--model``,
default the packaged all-MiniLM-L6-v2), the shipped MiniLM adapter (``--adapter``) as ``med``,
and as ``med2`` a second, different adapter made from it (its LoRA B matrices negated, so
its vectors differ from ``med``'s and the base's): two adapters with private heads, as two
domain adapters would be. Every request draws its model (the base, ``med``, ``med2``,
``BASE:med``), 1-4 texts from a fixed pool,
and ``float`` or ``base64``; about ``--malformed`` of them are malformed bodies of known
kinds (not JSON, NaN, a duplicate key, the wrong content type, lists of the wrong type, an
unknown model, an empty input, too many inputs, a lone surrogate, deep nesting), each
expecting its own 4xx. Each phase (a warm-up of ``--warmup`` requests at the most
clients, so that the allocator has seen the largest batches, then ``--requests`` at each
of ``--clients``) counts:

- wrong answers: a vector that differs from the in-process ``Embedder``'s for the same text
  and adapter (beyond ``--atol``), a wrong count, index or model, or a 4xx other than the
  one expected;
- 5xx, and dropped connections (a transport error on an accepted connection);
- latency p50 / p99 of the well-formed requests; the server's RSS at start, after the
  warm-up and at the end (growth after warm-up must stay under 10 %).

Bounded: ``--max-seconds`` stops every phase early (then the result says so). The machine
may be shared: the 1-minute load average at start and end is recorded with the result.
``tests/inference/server/test_soak.py`` runs :func:`soak` for a few hundred requests in CI.
"""

from __future__ import annotations

import argparse
import base64
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench import RESULTS, ROOT
from benchmarks.bench.measure import load_1min, machine_description
from benchmarks.bench.results import write_json

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
ADAPTER = ROOT / "adapters" / "medical" / "minilm-l6_lora-top2_crop"
WORDS = ("chest pain fever cough aspirin insulin tumour biopsy renal failure sepsis asthma "
         "stroke diabetes fracture anaemia migraine hepatitis lymphoma dialysis").split()
JSON = {"content-type": "application/json"}

# (name, body bytes or a callable of the max inputs, content type, expected status)
MALFORMED: list[tuple[str, Any, str, int]] = [
    ("not json", b'{"model": "BASE", "input": ', "application/json", 400),
    ("nan", b'{"model": "BASE", "input": "x", "dimensions": NaN}', "application/json", 400),
    ("duplicate key", b'{"model": "BASE", "input": "x", "input": "y"}', "application/json",
     400),
    ("content type", b'{"model": "BASE", "input": "x"}', "text/plain", 415),
    ("wrong list", b'{"model": "BASE", "input": [1, null, {"a": 2}]}', "application/json",
     400),
    ("unknown model", b'{"model": "no-such-adapter", "input": "x"}', "application/json", 404),
    ("empty input", b'{"model": "BASE", "input": []}', "application/json", 400),
    ("too many", lambda n: b'{"model": "BASE", "input": [' + b",".join([b'"x"'] * (n + 1))
     + b"]}", "application/json", 413),
    ("surrogate", b'{"model": "BASE", "input": "\\ud800"}', "application/json", 400),
    ("deep", b'{"model": "BASE", "input": ' + b"[" * 5000 + b"]" * 5000 + b"}",
     "application/json", 400),
]


def texts_pool(size: int, seed: int) -> list[str]:
    """``size`` distinct short clinical-sounding texts (fixed by ``seed``)."""
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(3, 12))) + f" #{i}" for i in range(size)]


@dataclass
class Plan:
    """One request: its body (and content type) and what the answer must be."""

    body: bytes
    content_type: str
    status: int
    texts: list[str] = field(default_factory=list)
    head: str | None = None  # the adapter whose vectors are expected (None: the base)
    model: str = ""
    fmt: str = "float"
    kind: str = "ok"


def plans(n: int, *, seed: int, pool: list[str], models: dict[str, str | None], base: str,
          malformed: float, max_inputs: int) -> list[Plan]:
    """``n`` requests: mostly well-formed, ``malformed`` of them (about) malformed."""
    import json

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        if rng.random() < malformed:
            name, body, ctype, status = rng.choice(MALFORMED)
            body = body(max_inputs) if callable(body) else body
            out.append(Plan(body.replace(b"BASE", base.encode()), ctype, status, kind=name))
            continue
        model = rng.choice(sorted(models))
        texts = rng.sample(pool, rng.randint(1, 4))
        fmt = rng.choice(["float", "base64"])
        body = {"model": model, "input": texts if len(texts) > 1 or rng.random() < .5
                else texts[0], "encoding_format": fmt}
        out.append(Plan(json.dumps(body).encode(), "application/json", 200, texts,
                        models[model], model, fmt))
    return out


def check(plan: Plan, response: Any, expected: dict[tuple[str | None, str], np.ndarray],
          atol: float) -> str | None:
    """What is wrong with ``response`` to ``plan`` (None: right)."""
    if response.status_code != plan.status:
        return f"{plan.kind}: status {response.status_code}, expected {plan.status}"
    body = response.json()
    if plan.status != 200:
        return None if set(body.get("error", {})) == {"message", "type", "param", "code"} \
            else f"{plan.kind}: not the error envelope"
    data = body["data"]
    if body["model"] != plan.model or [d["index"] for d in data] != list(range(len(plan.texts))):
        return "wrong model or indices"
    for item, text in zip(data, plan.texts, strict=True):
        got = (np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4")
               if plan.fmt == "base64" else np.asarray(item["embedding"], dtype=np.float32))
        if not np.allclose(got, expected[plan.head, text], atol=atol, rtol=0):
            return f"wrong vector ({plan.head}, {text!r})"
    return None


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise OSError(f"no VmRSS for {pid}")


def drive(url: str, requests: list[Plan], clients: int, expected: dict, *, atol: float,
          deadline: float) -> dict[str, Any]:
    """Send ``requests`` from ``clients`` threads (one keep-alive ``httpx.Client`` each)."""
    import httpx

    lock = threading.Lock()
    counts = {"sent": 0, "ok": 0, "malformed": 0, "wrong": 0, "server_errors": 0,
              "dropped": 0, "rate_limited": 0}
    latencies: list[float] = []
    problems: list[str] = []
    queue = iter(requests)

    def client() -> None:
        with httpx.Client(timeout=60) as session:
            while time.monotonic() < deadline:
                with lock:
                    plan = next(queue, None)
                if plan is None:
                    return
                start = time.perf_counter()
                try:
                    response = session.post(f"{url}/v1/embeddings", content=plan.body,
                                            headers={"content-type": plan.content_type})
                except httpx.TransportError as err:
                    with lock:
                        counts["sent"] += 1
                        counts["dropped"] += 1
                        problems.append(f"dropped: {type(err).__name__}: {err}")
                    continue
                elapsed = time.perf_counter() - start
                wrong = check(plan, response, expected, atol)
                with lock:
                    counts["sent"] += 1
                    counts["malformed" if plan.status != 200 else "ok"] += 1
                    counts["server_errors"] += response.status_code >= 500
                    counts["rate_limited"] += response.status_code == 429
                    if wrong:
                        counts["wrong"] += 1
                        problems.append(wrong)
                    if plan.status == 200:
                        latencies.append(elapsed)

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(client) for _ in range(clients)]:
            future.result()
    seconds = time.perf_counter() - start
    ms = np.asarray(latencies) * 1000 if latencies else np.zeros(1)
    return {"clients": clients, **counts, "seconds": round(seconds, 2),
            "requests_per_s": round(counts["sent"] / seconds, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "complete": counts["sent"] == len(requests), "problems": problems[:20]}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model: str, adapters: dict[str, Path], args: list[str], log: Path,
                 max_length: int | None = None, *, launcher: list[str] | None = None,
                 env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """``lastlayer serve`` on a free loopback port, waited for (``launcher``: the command
    before ``serve``, default ``python -m lastlayer``; ``args`` come last and win)."""
    import httpx

    port = _free_port()
    cmd = [*(launcher or [sys.executable, "-m", "lastlayer"]), "serve", "--model", model,
           "--device", "cpu", "--port", str(port), "--log-level", "warning"]
    cmd += [flag for name, path in adapters.items() for flag in ("--adapter", f"{name}={path}")]
    if max_length:
        cmd += ["--max-length", str(max_length)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", **(env or {})}
    with open(log, "w") as out:
        proc = subprocess.Popen([*cmd, *args], env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited {proc.returncode}: {log.read_text()}")
        try:
            httpx.get(f"{url}/health", timeout=1)
            return proc, url
        except httpx.TransportError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"the server did not start: {log.read_text()}")


def mirrored_adapter(adapter: Path, folder: Path) -> Path:
    """A copy of the LoRA artifact ``adapter`` in ``folder`` with every LoRA B matrix
    negated: the same base and shapes, other vectors (a second domain adapter to serve)."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(adapter, folder)
    weights = folder / "adapter_model.safetensors"
    tensors = {name: -t if "lora_B" in name else t for name, t in load_file(weights).items()}
    save_file(tensors, weights, metadata={"format": "pt"})
    return folder


def soak(model: str, adapter: Path, *, phases: list[tuple[int, int]], warmup: int = 200,
         pool_size: int = 300, malformed: float = 0.1, seed: int = 0, atol: float = 1e-5,
         max_seconds: float = 900, max_inputs: int = 16, max_length: int | None = None,
         work: Path = Path("/tmp/lastlayer-soak")) -> dict[str, Any]:
    """Start the server, run the warm-up and ``phases`` (``(clients, requests)``), stop it.

    Returns:
        The result: every phase's counts and latencies, the RSS, the verdict.
    """
    from lastlayer.inference import Embedder

    work.mkdir(parents=True, exist_ok=True)
    # float32 on both sides: every vector is checked to atol 1e-5, and bf16 vectors (what
    # `auto` means on a CPU with native bf16) differ with how texts are batched by ~1e-4
    embedder = Embedder(model, device="cpu", dtype="float32", max_length=max_length)
    other = mirrored_adapter(adapter, work / "med2")
    embedder.load(adapter, "med")
    embedder.load(other, "med2")
    base = embedder.base_id
    models = {base: None, "med": "med", "med2": "med2", f"{base}:med": "med"}
    pool = texts_pool(pool_size, seed)
    expected = {(head, text): vector for head in (None, "med", "med2")
                for text, vector in zip(pool, embedder.encode(pool, adapter=head).vectors,
                                        strict=True)}
    proc, url = start_server(model, {"med": adapter, "med2": other},
                             ["--max-inputs", str(max_inputs), "--dtype", "float32"],
                             work / "server.log", max_length)
    deadline = time.monotonic() + max_seconds
    try:
        rss = {"start": rss_mb(proc.pid)}
        kw = {"seed": seed, "pool": pool, "models": models, "base": base,
              "malformed": malformed, "max_inputs": max_inputs}
        most = max(clients for clients, _ in phases)  # the largest batches: the allocator's
        results = [{"phase": "warm-up", **drive(url, plans(warmup, **kw), most, expected,
                                                atol=atol, deadline=deadline)}]
        rss["after_warmup"] = rss_mb(proc.pid)
        for i, (clients, n) in enumerate(phases):
            kw["seed"] = seed + i + 1
            results.append({"phase": f"{clients} clients", **drive(
                url, plans(n, **kw), clients, expected, atol=atol, deadline=deadline),
                "rss_mb_after": round(rss_mb(proc.pid), 1)})
        rss["end"] = rss_mb(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        exit_code = proc.wait(60)
    measured = results[1:]
    growth = (rss["end"] - rss["after_warmup"]) / rss["after_warmup"]
    totals = {key: sum(r[key] for r in measured) for key in (
        "sent", "ok", "malformed", "wrong", "server_errors", "dropped", "rate_limited")}
    return {"phases": results, "totals": totals,
            "rss_mb": {key: round(value, 1) for key, value in rss.items()},
            "rss_growth_after_warmup": round(growth, 4), "server_exit_code": exit_code,
            "passed": (totals["wrong"] == totals["server_errors"] == totals["dropped"] == 0
                       and growth < 0.10 and exit_code == 0
                       and all(r["complete"] for r in results))}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=MINILM)
    parser.add_argument("--adapter", type=Path, default=ADAPTER)
    parser.add_argument("--clients", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--requests", type=int, nargs="+", default=[3000, 3000],
                        help="requests per phase (one number per --clients)")
    parser.add_argument("--warmup", type=int, default=2000)
    parser.add_argument("--malformed", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-seconds", type=float, default=1200)
    parser.add_argument("--out", type=Path, default=RESULTS / "soak.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    load_start, start = load_1min(), time.perf_counter()
    result = soak(args.model, args.adapter, phases=list(zip(args.clients, args.requests,
                                                            strict=True)),
                  warmup=args.warmup, malformed=args.malformed, seed=args.seed,
                  max_seconds=args.max_seconds)
    result.update(model=args.model, adapter=str(args.adapter.relative_to(ROOT))
                  if args.adapter.is_relative_to(ROOT) else str(args.adapter),
                  seconds=round(time.perf_counter() - start, 1), torch=torch.__version__,
                  machine=machine_description(load_start, load_1min()),
                  note="shared machine: other jobs ran alongside; latencies are this run's "
                  "only, the counts are the result")
    write_json(args.out, result)
    for phase in result["phases"]:
        print(f"{phase['phase']}: {phase['sent']} requests ({phase['malformed']} malformed), "
              f"wrong {phase['wrong']}, 5xx {phase['server_errors']}, dropped "
              f"{phase['dropped']}, p50 {phase['p50_ms']} ms, p99 {phase['p99_ms']} ms")
    print(f"RSS {result['rss_mb']} (growth after warm-up {result['rss_growth_after_warmup']:.1%})"
          f"; {'PASSED' if result['passed'] else 'FAILED'} -> {args.out}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())

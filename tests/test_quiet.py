"""Quiet, honest output: plain progress lines off a terminal, no warnings about unused
parts, no duplicated lines.

The commands run as real processes with stderr to a file (not a terminal), as under CI or
``nohup``: what they write must hold no carriage return, a bounded number of lines, no
line twice and no warning.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

from helpers.data import ROOT

from lastlayer.core import progress as progress_module
from lastlayer.core.progress import progress


def test_off_a_terminal_a_bar_is_a_few_plain_lines():
    stream = io.StringIO()  # not a terminal
    bar = progress(range(10_000), enabled=True, desc="embed", unit="text", file=stream)
    start, clock = time.time(), iter(range(10**6))
    bar._time = lambda: start + next(clock) * 0.01  # 10 ms more at each look at the clock
    for _ in bar:
        pass
    text = stream.getvalue()
    lines = text.splitlines()
    assert "\r" not in text
    assert lines[0].startswith("embed:   0% 0/10000") and lines[-1].startswith("embed: 100%")
    assert 3 <= len(lines) <= 10_000 * 0.01 / progress_module.INTERVAL + 3


def test_by_default_a_bar_shows_on_a_terminal_only():
    stream = io.StringIO()
    for _ in progress(range(5), desc="x", file=stream):
        pass
    assert stream.getvalue() == ""
    for _ in progress(range(5), enabled=False, desc="x", file=sys.stderr):
        pass


def run(args: list[str], tmp: Path) -> tuple[int, str]:
    """A ``lastlayer`` command in a fresh process, stderr to a file; (status, stderr)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
           "HF_HUB_CACHE": str(tmp / "hf-cache"), "OMP_NUM_THREADS": "1"}
    err = tmp / "stderr.txt"
    with err.open("wb") as f:
        done = subprocess.run([sys.executable, "-m", "lastlayer", *args], stdout=subprocess.DEVNULL,
                              stderr=f, env=env, cwd=tmp, timeout=300)
    return done.returncode, err.read_bytes().decode("utf-8")


def assert_quiet(text: str, max_lines: int) -> None:
    lines = text.splitlines()
    assert "\r" not in text
    assert len(lines) <= max_lines, text
    assert not [line for line, n in Counter(lines).items() if n > 1 and line.strip()], text
    assert "Warning" not in text and "warn" not in text.lower(), text


def test_embed_to_a_log_file_is_quiet(saved_models, tmp_path):
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"document {i} " * (1 + i % 7)}) + "\n"
                              for i in range(400)))
    status, err = run(["embed", "--model", str(saved_models["bert"]), "--input", str(corpus),
                       "--output", str(tmp_path / "v.npy"), "--shard-size", "16",
                       "--batch-size", "4"], tmp_path)
    assert status == 0, err
    assert_quiet(err, max_lines=8)
    assert "embed:" in err and "100%" in err  # the progress is there, as lines


def test_eval_of_a_full_adapter_to_a_log_file_is_quiet(full, tmp_path):
    """No PEFT "Unsupported layer type" warning: lastlayer knowingly wraps whole blocks."""
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": f"text {i} about {i % 2}", "label": str(i % 2)})
                            + "\n" for i in range(40)))
    status, err = run(["eval", str(full), "--data", str(data), "--no-clustering"], tmp_path)
    assert status == 0, err
    assert_quiet(err, max_lines=6)


def test_loading_a_full_adapter_warns_nothing(full, saved_models):
    from lastlayer.inference import Embedder

    embedder = Embedder(saved_models["bert"], device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        embedder.load(full)

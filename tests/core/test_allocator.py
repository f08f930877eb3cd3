"""The C heap setting: freed blocks kept for the next forward, honest opt-outs, and the
``lastlayer`` command applying it. The effect is measured on the real glibc, in fresh
processes (the setting is process-wide and one-way)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from lastlayer.core import allocator

# 48 MB blocks, above glibc's largest automatic mmap threshold (32 MB): with glibc's
# defaults each one is mapped afresh and its pages faulted in again; kept, it is reused.
_FAULTS = r"""
import ctypes, json, resource, sys
from lastlayer.core.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "kept" else False
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 48 * 2**20
def touch():
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    touch()
print(json.dumps({"applied": applied,
                  "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _faults(setting: str, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items()
             if k not in allocator.GLIBC_ENV and k != allocator.OPT_OUT_ENV}
    out = subprocess.run([sys.executable, "-c", _FAULTS, setting], env={**clean, **env},
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


@pytest.mark.skipif(allocator._libc() is None, reason="needs glibc")
def test_kept_freed_memory_is_reused_instead_of_faulted_in_again():
    default, kept = _faults("default"), _faults("kept")
    pages = 5 * 48 * 2**20 // 4096
    assert default["faults"] > pages // 2  # every block's pages handed out afresh
    assert kept["applied"] is True and kept["faults"] < pages // 50


@pytest.mark.skipif(allocator._libc() is None, reason="needs glibc")
def test_an_opt_out_or_glibcs_own_settings_leave_the_allocator_alone():
    assert _faults("kept", LASTLAYER_KEEP_FREED_MEMORY="0")["applied"] is False
    assert _faults("kept", LASTLAYER_KEEP_FREED_MEMORY="1")["applied"] is True
    chosen = _faults("kept", MALLOC_TRIM_THRESHOLD_="0")  # the user's choice wins
    assert chosen["applied"] is False and chosen["faults"] > 5 * 48 * 2**20 // 4096 // 2


def test_without_glibc_nothing_is_changed_and_nothing_fails(monkeypatch):
    monkeypatch.setattr(allocator, "_libc", lambda: None)
    assert allocator.keep_freed_memory.__wrapped__() is False
    assert allocator.release_freed_memory() is False


def test_the_lastlayer_command_keeps_freed_memory_before_it_runs(monkeypatch, tmp_path,
                                                                  capsys):
    import lastlayer.cli as cli

    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append(1) or True)
    assert cli.main(["ls", "--root", str(tmp_path)]) == 0
    assert calls == [1]


def test_it_is_part_of_the_public_api_and_imports_no_torch():
    import lastlayer

    assert lastlayer.keep_freed_memory is allocator.keep_freed_memory
    assert "keep_freed_memory" in lastlayer.__all__
    code = ("import sys, lastlayer; before = 'lastlayer.core' in sys.modules; "
            "lastlayer.keep_freed_memory; print(before, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.split() == ["False", "False"]  # core only when asked for, never torch

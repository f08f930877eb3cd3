"""Measuring: resident memory, CPU seconds, load, and where and with what code a row ran.

Memory is the process's resident set from ``/proc/self/status`` (``VmRSS`` now, ``VmHWM``
its peak, which ``/proc/self/clear_refs`` resets, so that one phase's peak can be told
from another's); CPU time is user + system of every thread. The machine a row names is
the CPU's model and the instruction-set flags torch's kernels choose by (AVX2, AVX-512,
AMX, ...: bf16 is fast or 19x slower depending on them), the cores, and the load.

Imports no torch: the orchestrating processes of ``speed`` and ``memory`` use it too, and
must add nothing to the workers they time.
"""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.bench import ROOT

# The CPU flags a row records (x86 and Arm names, as /proc/cpuinfo spells them).
FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni",
         "amx_tile", "amx_bf16", "amx_int8", "asimd", "asimdhp", "bf16", "i8mm", "sve", "sve2")


def _proc_status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_mb() -> float | None:
    """Current resident set size in MB (Linux), or None."""
    kb = _proc_status_kb("VmRSS")
    return kb / 1024 if kb is not None else None


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MB (``VmHWM``, else ``ru_maxrss``)."""
    kb = _proc_status_kb("VmHWM")
    if kb is not None:
        return kb / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS


def reset_peak_rss() -> bool:
    """Reset the peak RSS to the current RSS (Linux >= 4.0); False where impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def cpu_seconds(pid: int | None = None) -> float:
    """CPU time (user + system, every thread) used so far by process ``pid`` (None: this
    one): what a system really costs, whatever share of a busy machine it got.

    This process's own comes from ``getrusage`` (microseconds); another's from
    ``/proc/PID/stat`` (clock ticks).
    """
    if pid is None or pid == os.getpid():
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    fields = _proc_stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def minor_faults(pid: int | None = None) -> int:
    """Minor page faults so far of process ``pid`` (None: this one): fresh pages the kernel
    handed out (and zeroed), every thread; 0 where ``/proc`` has no answer."""
    if pid is None or pid == os.getpid():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    try:
        return int(_proc_stat(pid)[7])
    except (OSError, IndexError, ValueError):
        return 0


def _proc_stat(pid: int) -> list[str]:
    """The fields of ``/proc/PID/stat`` after the command name (from the state on: field 3
    of proc(5) is index 0 here)."""
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()


def load_1min() -> float:
    """The 1-minute load average (above the core count: the machine is shared)."""
    return os.getloadavg()[0]


def uptime() -> str:
    """``uptime``'s line (time up, users, the three load averages)."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def wait_for_quiet(threshold: float, max_wait_s: float) -> float:
    """Poll the 1-minute load average until it is below ``threshold`` (or time runs out)."""
    deadline = time.monotonic() + max_wait_s
    load = os.getloadavg()[0]
    while load >= threshold and time.monotonic() < deadline:
        print(f"1-min load {load:.2f} >= {threshold}: waiting ...", flush=True)
        time.sleep(min(30.0, max(1.0, deadline - time.monotonic())))
        load = os.getloadavg()[0]
    if load >= threshold:
        print(f"WARNING: 1-min load still {load:.2f}; timings may be distorted.", flush=True)
    return load


def run_clients(count: int, client: Callable[[int], None]) -> float:
    """Run ``client(0)`` … ``client(count - 1)`` in threads at once; the seconds they took."""
    begin = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - begin


def _cpuinfo(key: str) -> str | None:
    """The first ``key : value`` of /proc/cpuinfo, or None (no such file or key)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name.strip() == key:
                    return value.strip()
    except OSError:
        pass
    return None


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The vector and matrix instruction sets of :data:`FLAGS` that this CPU has."""
    have = set((_cpuinfo("flags") or _cpuinfo("Features") or "").split())
    return [flag for flag in FLAGS if flag in have]


def cpu_description() -> str:
    """The CPU as a row records it: model name, then its flags in parentheses."""
    flags = cpu_flags()
    return f"{cpu_name()} ({' '.join(flags)})" if flags else cpu_name()


def machine(torch_version: str) -> str:
    """CPU, core count and torch version: enough to tell machines apart (training rows)."""
    return f"{cpu_description()}, {os.cpu_count()} cores, torch {torch_version}"


def machine_description(load_start: float, load_end: float | None = None,
                        precision: str = "fp32", gpu: str | None = None) -> str:
    """CPU (and ``gpu``, the name a worker reported), cores, OS, Python, precision and the
    load average at start (and end): what a timing row records."""
    text = (f"{cpu_description()}, {os.cpu_count()} logical cores, {platform.system()} "
            f"{platform.release()}, python {platform.python_version()}, {precision}; "
            f"1-min load avg {load_start:.2f} at start")
    if load_end is not None:
        text += f", {load_end:.2f} at end"
    return f"{gpu}; {text}" if gpu else text


def commit() -> str:
    """The short hash of the checked-out commit, or ``unknown``."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                              capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"

"""The compute precision ``auto`` picks: bf16 where the hardware multiplies it natively.

Intel CPUs since Sapphire Rapids (``amx_bf16``, ``avx512_bf16``), AMD since Zen 4
(``avx512_bf16``), Arm cores with the ``bf16`` feature and GPUs that support it multiply
bf16 matrices natively, several times faster than fp32 (MiniLM on an AMX CPU: 3.5x the
texts per second). Older CPUs (AVX2 only) emulate bf16 and run it far *slower* than fp32
(a training step 19x slower), so the choice is made from what the hardware says, never
assumed, and an unreadable answer means fp32.

:func:`detect` decides once per device type and gives the choice with the reason to
print ("bf16: AMX found" / "fp32: no native bf16 on this CPU"); :func:`inference_dtype`
and :func:`training_precision` turn a setting (``auto`` or an explicit value, which
always wins) into what torch and Accelerate take.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from lastlayer.config import ConfigError

log = logging.getLogger(__name__)

AUTO = "auto"
"""The setting that lets the hardware decide (``model.dtype``, ``train.mixed_precision``)."""

CPUINFO = Path("/proc/cpuinfo")
PIN_ENV = "LASTLAYER_AUTO_PRECISION"
"""An environment variable that decides what ``auto`` means instead of the hardware."""


@dataclass(frozen=True)
class Precision:
    """What ``auto`` chose, and why.

    Attributes:
        dtype: ``bfloat16`` or ``float32`` (a ``model.dtype`` value).
        reason: Why, in words, e.g. ``AMX found``.
    """

    dtype: str
    reason: str

    @property
    def bf16(self) -> bool:
        return self.dtype == "bfloat16"

    def __str__(self) -> str:
        return f"{'bf16' if self.bf16 else 'fp32'}: {self.reason}"


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags (``flags`` on x86, ``Features`` on Arm) from /proc/cpuinfo.

    Args:
        cpuinfo: The file's text (default: read it; empty where there is none, e.g. macOS).
    """
    if cpuinfo is None:
        try:
            cpuinfo = CPUINFO.read_text(errors="replace")
        except OSError:
            return set()
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return flags


def cpu_precision(flags: set[str]) -> Precision:
    """bf16 where the CPU's flags show native bf16 matrix multiplies, else fp32."""
    if "amx_bf16" in flags:
        return Precision("bfloat16", "AMX found")
    if "avx512_bf16" in flags:
        return Precision("bfloat16", "AVX512-BF16 found")
    if "bf16" in flags:  # Arm (Neoverse V1 / N2, Graviton 3 and later)
        return Precision("bfloat16", "Arm BF16 found")
    if not flags:
        return Precision("float32", "the CPU's features are unknown here")
    return Precision("float32", "no native bf16 on this CPU")


def cuda_precision() -> Precision:
    """bf16 on a GPU that supports it natively, else fp32."""
    if torch.cuda.is_bf16_supported(including_emulation=False):
        return Precision("bfloat16", f"{torch.cuda.get_device_name()} supports it")
    return Precision("float32", f"no native bf16 on {torch.cuda.get_device_name()}")


@functools.cache
def detect(device_type: str = "cpu") -> Precision:
    """The precision ``auto`` means on ``device_type`` (``cpu``, ``cuda``), decided once.

    Other device types (``mps``, ...) get fp32: bf16 there is not known to pay.
    ``LASTLAYER_AUTO_PRECISION=float32`` (or ``bfloat16``) decides instead of the hardware:
    for a fleet of mixed machines that must give the same vectors, and for the tests.

    Raises:
        ConfigError: ``LASTLAYER_AUTO_PRECISION`` is set to something else.
    """
    pinned = os.environ.get(PIN_ENV)
    if pinned:
        if pinned not in ("float32", "bfloat16"):
            raise ConfigError(f"{PIN_ENV}={pinned!r}: set it to float32 or bfloat16, or unset "
                             "it to let the hardware decide.")
        choice = Precision(pinned, f"{PIN_ENV}={pinned}")
    elif device_type == "cuda" and torch.cuda.is_available():
        choice = cuda_precision()
    elif device_type == "cpu":
        choice = cpu_precision(cpu_flags())
    else:
        choice = Precision("float32", f"bf16 is not known to pay on {device_type}")
    log.info("precision auto -> %s", choice)
    return choice


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AVX512-BF16 / AMX / Arm BF16).

    Without it (e.g. AVX2-only CPUs) torch runs bf16 matmuls in a slow fallback. Where
    /proc/cpuinfo cannot be read, oneDNN is asked; a torch build without oneDNN cannot
    tell: then this answers True (no warning on a guess).
    """
    flags = cpu_flags()
    if flags:
        return cpu_precision(flags).bf16
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return True


def device_type(device: str | torch.device | None) -> str:
    """``cpu`` or ``cuda`` (...) for a device, None meaning where models go by default."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device).type


def inference_dtype(dtype: str, device: str | torch.device | None = None,
                    quantization: str | None = None) -> str:
    """A ``model.dtype`` setting -> the dtype to compute in (``auto``: :func:`detect`).

    A bitsandbytes-quantized base (``quantization``) stays float32 under ``auto``: its
    layers run their own kernels, and its fingerprint is taken as loaded, so the dtype
    it loads in must not depend on the machine.
    """
    if dtype != AUTO:
        return dtype
    return "float32" if quantization else detect(device_type(device)).dtype


def training_precision(mixed_precision: str, on_cpu: bool) -> str:
    """A ``train.mixed_precision`` setting -> Accelerate's (``auto``: ``bf16`` or ``no``)."""
    if mixed_precision != AUTO:
        return mixed_precision
    return "bf16" if detect("cpu" if on_cpu else "cuda").bf16 else "no"


KERNEL_CACHE_ENV = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"
KERNEL_CACHE_BF16 = "64"
"""oneDNN kernels kept per process when a CPU model computes in bf16 (its default: 1024)."""


def bound_kernel_cache() -> None:
    """Keep oneDNN's cache of compiled kernels small for bf16 on CPU (unless set already).

    oneDNN compiles a bf16 matmul kernel per input shape and keeps up to 1,024 of them; a
    server sees a new (batch, tokens) shape with nearly every batch, so its memory grew
    with every new shape: MiniLM, 1,200 batches of random shapes, RSS 907 -> 1,595 MB and
    still growing, 1,164 MB and flat with 64 kernels (8 % slower; 256 still grew). oneDNN
    reads the variable when it first builds a kernel, so this runs before the first bf16
    forward. ``ONEDNN_PRIMITIVE_CACHE_CAPACITY`` set by the user wins.
    """
    os.environ.setdefault(KERNEL_CACHE_ENV, KERNEL_CACHE_BF16)

"""Which torch device a run, a task or a model uses, and what this CPU offers for bfloat16."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from podbench.errors import UserError

__all__ = ["CpuFeatures", "cpu_features", "resolve_device"]

CPUINFO = Path("/proc/cpuinfo")


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> cuda when available else cpu; anything else must be a usable torch device.

    Raises:
        UserError: ``device`` is not a torch device, or names CUDA where none is available.
    """
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise UserError(f"device '{device}' is not a torch device; use auto, cpu or cuda.") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(
            f"device '{device}' was asked for but CUDA is not available; use device: cpu (or auto)."
        )
    return dev


@dataclass(frozen=True)
class CpuFeatures:
    """The CPU's model and instruction-set flags (``/proc/cpuinfo``), and torch's kernel level.

    ``capability``: ``torch.backends.cpu.get_cpu_capability()`` (``"AVX512"``, ``"AVX2"``,
    ``"DEFAULT"``...), the vector kernels torch dispatches to on this CPU.
    """

    model: str | None
    flags: frozenset[str] = field(default_factory=frozenset)
    capability: str = "DEFAULT"
    cores: int | None = None  # logical CPUs this process may run on

    @property
    def amx_bf16(self) -> bool:
        """Intel AMX tiles with bfloat16 (Sapphire Rapids and newer): the fastest bf16 here."""
        return "amx_bf16" in self.flags

    @property
    def avx512_bf16(self) -> bool:
        """AVX-512 BF16 (Cooper Lake, Zen 4 and newer): bf16 dot products in vector registers."""
        return "avx512_bf16" in self.flags

    @property
    def avx512(self) -> bool:
        return "avx512f" in self.flags

    @property
    def avx2(self) -> bool:
        return "avx2" in self.flags

    @property
    def arm_bf16(self) -> bool:
        """Armv8.6 BF16 instructions (Graviton 3, Neoverse V1 and newer)."""
        return "bf16" in self.flags

    @property
    def bf16_kernels(self) -> str | None:
        """The native bfloat16 instructions oneDNN can use, or None (bf16 is then emulated,
        typically slower than float32)."""
        for name, present in (
            ("AMX-BF16", self.amx_bf16),
            ("AVX-512 BF16", self.avx512_bf16),
            ("Arm BF16", self.arm_bf16),
        ):
            if present:
                return name
        return None

    def as_dict(self) -> dict[str, object]:
        return {
            "model": self.model,
            "cores": self.cores,
            "capability": self.capability,
            "amx_bf16": self.amx_bf16,
            "avx512_bf16": self.avx512_bf16,
            "avx512": self.avx512,
            "avx2": self.avx2,
            "arm_bf16": self.arm_bf16,
            "bf16_kernels": self.bf16_kernels,
        }


def _parse_cpuinfo(text: str) -> tuple[str | None, frozenset[str]]:
    """The first processor's model name and flags (x86 ``flags``, Arm ``Features``)."""
    model = None
    flags: frozenset[str] = frozenset()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        if key == "model name" and model is None:
            model = value.strip() or None
        elif key in ("flags", "features") and not flags:
            flags = frozenset(value.split())
    return model, flags


def cpu_features(cpuinfo: str | Path = CPUINFO) -> CpuFeatures:
    """This CPU's features; a missing or unreadable ``cpuinfo`` (not Linux) gives no flags."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        text = ""
    model, flags = _parse_cpuinfo(text)
    try:
        cores: int | None = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count()
    return CpuFeatures(
        model=model, flags=flags, capability=torch.backends.cpu.get_cpu_capability(), cores=cores
    )

"""The runtime policy of one run: seeding, deterministic kernels, TF32, AMP, memory format.

:class:`RunPolicy` decides, from a :class:`~podbench.runs.RunSpec` alone, how a run uses torch
(no global state is touched); :func:`runtime_policy` applies those choices to torch's global
state for the run's duration and puts every setting back when the run ends, however it ends, so
that the next run in the process (a reused Ray worker, a test) starts from the same state.
:func:`environment` says where and with what a run ran (the record's ``env``).
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import random
import socket
import subprocess
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from podbench.record import package_version
from podbench.runs import RunSpec

__all__ = [
    "RunPolicy",
    "runtime_policy",
    "torch_state_restored",
    "seed_everything",
    "nondeterminism_alerts",
    "check_amp",
    "tf32_allowed",
    "set_tf32",
    "environment",
]

# how torch words the alert for an op without a deterministic kernel ("put_ does not have ...")
NONDETERMINISTIC_ALERT = " does not have a deterministic implementation"
# ... and for a CUDA matrix product when cuBLAS's workspace was not configured before its first use
CUBLAS_ALERT = "because it uses CuBLAS"
CUBLAS_OP = "CuBLAS (CUBLAS_WORKSPACE_CONFIG unset at CUDA's first matrix product)"
# torch reads it once, at the first CUDA matrix product (which may come before any run, as in a
# script that checks the GPU first): set here, at import, so that a deterministic run is
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
AMP_DTYPES: dict[str, torch.dtype | None] = {
    "off": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch (all devices); choose deterministic or the fastest kernels.

    ``deterministic``: deterministic kernels with cudnn.benchmark off (reproducible, slower on a
    GPU); False: cudnn.benchmark on and whatever kernels are fastest. An op that has no
    deterministic kernel (on CUDA: adaptive average pooling's backward, scatter-add, ...) still
    runs, with torch's warning, which :func:`nondeterminism_alerts` turns into the record's
    ``env.nondeterministic_ops``: failing every ResNet run on a GPU would make the setting useless,
    hiding the warning in a Ray worker's log would make it a false promise.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:  # cuBLAS needs this set before its first use to be deterministic
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    torch.use_deterministic_algorithms(deterministic, warn_only=True)


@contextlib.contextmanager
def nondeterminism_alerts() -> Iterator[list[str]]:
    """Collect the ops torch warned have no deterministic kernel, in order of first use.

    Other warnings raised inside pass through unchanged (shown after the block, through the
    filters that were in force before it).
    """
    ops: list[str] = []
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            # once per op and place, not once per training step
            warnings.filterwarnings("default", message=".*" + NONDETERMINISTIC_ALERT)
            warnings.filterwarnings("default", message=".*" + CUBLAS_ALERT)
            yield ops
    finally:
        for w in caught:
            text = str(w.message)
            if NONDETERMINISTIC_ALERT in text or CUBLAS_ALERT in text:
                op = (
                    CUBLAS_OP
                    if CUBLAS_ALERT in text
                    else text.split(NONDETERMINISTIC_ALERT, 1)[0].strip()
                )
                if op not in ops:
                    ops.append(op)
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)


def check_amp(amp: str, device: torch.device) -> None:
    """A UserError when ``amp: bf16`` asks a GPU without native bfloat16 (before Ampere)."""
    from podbench.errors import UserError

    # including_emulation=False: emulated bf16 is slower than float32 on those cards
    if (
        amp == "bf16"
        and device.type == "cuda"
        and not torch.cuda.is_bf16_supported(including_emulation=False)
    ):
        raise UserError(
            f"amp: bf16 needs a GPU with native bfloat16 (compute capability 8.0 or newer), "
            f"but {torch.cuda.get_device_name(device)} has none; set amp: fp16 or amp: off."
        )


def tf32_allowed(device: torch.device, amp: str, deterministic: bool) -> bool:
    """Whether float32 matmuls and convolutions may use TF32: on CUDA with ``amp: off``, unless
    the run asked for deterministic kernels, or AMP runs (whose float32 parts, the latent
    projection and the loss, are float32 on purpose)."""
    return device.type == "cuda" and amp == "off" and not deterministic


def set_tf32(on: bool) -> None:
    """Allow (or forbid) TF32 in float32 matmuls and cuDNN convolutions, process-wide."""
    torch.set_float32_matmul_precision("high" if on else "highest")
    torch.backends.cudnn.allow_tf32 = on


@dataclass(frozen=True)
class RunPolicy:
    """How one run uses torch: its device and numeric choices, decided from its spec alone."""

    device: torch.device
    seed: int
    deterministic: bool
    tf32: bool
    channels_last: bool
    amp_dtype: torch.dtype | None
    # channels_last: auto on the CPU: the probe's timings (the record's env.channels_last_probe)
    layout_probe: dict[str, Any] | None = None

    @classmethod
    def of(cls, run: RunSpec) -> RunPolicy:
        """The policy ``run`` asks for on the device it resolves to (a UserError for bf16 on a
        GPU without it); changes no torch setting. The layout (:func:`~podbench.layout.
        layout_of_run`): as set; ``auto`` is channels-last on CUDA and, on the CPU, what a
        one-time probe of the run's network finds faster."""
        from podbench.layout import layout_of_run
        from podbench.tasks import resolve_device

        device = resolve_device(run.device)
        check_amp(run.amp, device)
        amp_dtype = AMP_DTYPES[run.amp]
        layout = layout_of_run(run, device, amp_dtype)
        return cls(
            device=device,
            seed=run.seed,
            deterministic=run.deterministic,
            tf32=tf32_allowed(device, run.amp, run.deterministic),
            channels_last=layout.channels_last,
            amp_dtype=amp_dtype,
            layout_probe=layout.probe_record(),
        )

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Autocast to the run's AMP dtype (a no-op context with ``amp: off``)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """A batch in the run's memory format (no copy when it is in it already)."""
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x


@contextlib.contextmanager
def torch_state_restored() -> Iterator[None]:
    """Put torch's global settings back as they were on entry: intra-op threads, deterministic
    algorithms (and warn-only), cudnn.benchmark and cudnn.deterministic, the float32 matmul
    precision, cuDNN's TF32.

    >>> before = torch.get_float32_matmul_precision()
    >>> with torch_state_restored():
    ...     torch.set_float32_matmul_precision("medium")
    >>> torch.get_float32_matmul_precision() == before
    True
    """
    saved = (
        torch.get_num_threads(),
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
        torch.get_float32_matmul_precision(),
        torch.backends.cudnn.allow_tf32,
    )
    try:
        yield
    finally:
        threads, algorithms, warn_only, benchmark, cudnn_deterministic, precision, tf32 = saved
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(algorithms, warn_only=warn_only)
        torch.backends.cudnn.benchmark = benchmark
        torch.backends.cudnn.deterministic = cudnn_deterministic
        torch.set_float32_matmul_precision(precision)
        torch.backends.cudnn.allow_tf32 = tf32


@contextlib.contextmanager
def runtime_policy(run: RunSpec) -> Iterator[RunPolicy]:
    """Apply ``run``'s policy (seeds, deterministic kernels, TF32) for the block, then restore
    torch's global settings (:func:`torch_state_restored`), even when the block raises."""
    policy = RunPolicy.of(run)
    with torch_state_restored():
        seed_everything(policy.seed, policy.deterministic)
        set_tf32(policy.tf32)
        yield policy


@functools.lru_cache(maxsize=1)
def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment(
    device: torch.device,
    deterministic: bool | None = None,
    tf32: bool | None = None,
    nondeterministic_ops: list[str] | None = None,
    channels_last: bool | None = None,
    channels_last_probe: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Where and with what a run ran (the record's ``env``).

    ``nondeterministic_ops``: with deterministic kernels on, the ops that had none (torch warned).
    ``channels_last_probe``: the timings that decided ``channels_last: auto`` on the CPU.
    """
    import podbench

    name = "cpu"
    if device.type == "cuda":
        name = f"cuda:{torch.cuda.get_device_name(device)}"
    return {
        "podbench": podbench.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": name,
        "git_commit": _git_commit(),
        "hostname": socket.gethostname(),
        "ray": package_version("ray"),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "deterministic": deterministic,
        "nondeterministic_ops": nondeterministic_ops if deterministic else None,
        "tf32": tf32,
        "channels_last": channels_last,
        "channels_last_probe": channels_last_probe,
    }

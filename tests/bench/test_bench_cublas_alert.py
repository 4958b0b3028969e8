"""torch's CuBLAS alert (a deterministic run whose cuBLAS workspace was not configured) is recorded."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

from podbench.runtime import CUBLAS_OP, nondeterminism_alerts

# as torch's Context::alertCuBLASConfigNotDeterministic words it (aten/src/ATen/Context.cpp)
TORCH_CUBLAS_WARNING = (
    "Deterministic behavior was enabled with either `torch.use_deterministic_algorithms(True)` or "
    "`at::Context::setDeterministicAlgorithms(true)`, but this operation is not deterministic "
    "because it uses CuBLAS and you have CUDA >= 10.2. To enable deterministic behavior in this "
    "case, you must set an environment variable before running your PyTorch application: "
    "CUBLAS_WORKSPACE_CONFIG=:4096:8 or CUBLAS_WORKSPACE_CONFIG=:16:8."
)


def test_the_cublas_alert_is_a_nondeterministic_op_once() -> None:
    with nondeterminism_alerts() as ops:
        for _ in range(3):  # every training step
            warnings.warn(TORCH_CUBLAS_WARNING, UserWarning, stacklevel=1)
        warnings.warn(
            "index_add_cuda_ does not have a deterministic implementation, but you set "
            "'torch.use_deterministic_algorithms(True, warn_only=True)'",
            UserWarning,
            stacklevel=1,
        )
    assert ops == [CUBLAS_OP, "index_add_cuda_"]


def test_importing_the_runtime_sets_the_cublas_workspace_before_any_cuda_use() -> None:
    env = {k: v for k, v in os.environ.items() if k != "CUBLAS_WORKSPACE_CONFIG"}
    code = "import os, podbench.runtime; print(os.environ['CUBLAS_WORKSPACE_CONFIG'])"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert out.strip() == ":4096:8"

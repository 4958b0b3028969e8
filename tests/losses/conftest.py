"""Shared fixtures of the losses tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # The CI machine's 2 cores are shared by every test; small matmuls with 2 threads under
    # contention ran 40x slower than with 1.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

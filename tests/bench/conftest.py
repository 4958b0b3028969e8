"""Shared fixtures of the engine's tests."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """One torch thread for the test (the CI machine's 2 cores are shared by every test)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def one_thread_and_test_plugins() -> Iterator[None]:
    """One torch thread for the module, and the misbehaving plugins of ``engine_test_plugins``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    sys.path.insert(0, str(HERE))
    importlib.import_module("engine_test_plugins")
    yield
    sys.path.remove(str(HERE))
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def torch_determinism_flags_restored() -> Iterator[None]:
    """A test that builds a ``_Trainer`` itself (not through ``train_run``) switches torch to
    deterministic kernels; the next test, whatever the order, starts from the flags as they were."""
    saved = (torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[2], saved[3]

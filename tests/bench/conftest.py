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
def torch_settings_restored() -> Iterator[None]:
    """A test that sets torch's global flags itself (determinism, TF32, threads) leaves them as
    they were for the next test, whatever the order (as a run does)."""
    from podbench.runtime import torch_state_restored

    with torch_state_restored():
        yield

"""The examples in the losses' docstrings run and print what they show."""

from __future__ import annotations

import doctest
import importlib

import pytest


@pytest.mark.parametrize("module", ["", ".base", ".registry", ".pedcc", ".testing"])
def test_losses_docstring_examples(module):
    mod = importlib.import_module(f"podbench.losses{module}")
    result = doctest.testmod(mod)
    assert result.attempted > 0 and result.failed == 0

"""Every docstring example of the package runs and shows what it says (``doctest``).

The modules are imported by their package names (``podbench.losses.pod``), as a user imports
them: collecting the source folders themselves (``pytest --doctest-modules bench``) would import a
second copy of each module, and a loss module's second copy would register its loss again.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

PACKAGES = ("podbench", "podbench.losses", "podbench.tasks", "podbench.reports")


def _modules() -> list[str]:
    names: set[str] = set()
    for package in PACKAGES:
        module = importlib.import_module(package)
        names.add(package)
        for info in pkgutil.walk_packages(module.__path__, prefix=f"{package}."):
            if not info.name.endswith("__main__"):  # running it would run the CLI
                names.add(info.name)
    return sorted(names)


def _with_examples() -> list[str]:
    finder = doctest.DocTestFinder(exclude_empty=True)
    return [
        name
        for name in _modules()
        if any(t.examples for t in finder.find(importlib.import_module(name)))
    ]


MODULES = _with_examples()


def test_the_examples_are_found() -> None:
    # the modules that show one, at the least (a finder that found none would pass every test)
    assert {
        "podbench.losses",
        "podbench.losses.base",
        "podbench.losses.registry",
        "podbench.losses.pedcc",
        "podbench.losses.testing",
        "podbench.losses.pml",
        "podbench.runs",
        "podbench.suite_spec",
        "podbench.tasks.timm_archs",
        "podbench.reports",
        "podbench.runtime",
    } <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    result = doctest.testmod(
        importlib.import_module(name), optionflags=flags, verbose=False, report=True
    )
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {name} failed"

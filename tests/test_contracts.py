"""docs/CONTRACTS.md against the code: the record's schema, the module table, the signatures."""

from __future__ import annotations

import importlib
import inspect
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONTRACTS = (ROOT / "docs" / "CONTRACTS.md").read_text(encoding="utf-8")

# Callables the page shows without their module path, and where they live.
UNQUALIFIED = {
    "train_run": "podbench.engine",
    "load_task": "podbench.tasks",
    "create_loss": "podbench.losses",
    "loss_info": "podbench.losses",
    "check_number": "podbench.losses",
    "list_losses": "podbench.losses",
    "dataset_info": "podbench.tasks",
    "create_arch": "podbench.tasks",
    "arch_info": "podbench.tasks",
    "find_arch": "podbench.tasks",
    "prepare_model": "podbench.tasks",
}


def _code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def _record_example() -> dict:
    (block,) = [b for b in _code_blocks(CONTRACTS, "json") if '"schema"' in b]
    # the example's comments run from `//` to the end of the line (no value holds `//`)
    return json.loads(re.sub(r"//[^\n]*", "", block))


def test_the_record_example_is_the_current_schema() -> None:
    from podbench.record import SCHEMA_VERSION, RunRecord

    example = _record_example()
    assert example["schema"] == SCHEMA_VERSION
    fields = {f.alias or name for name, f in RunRecord.model_fields.items()}
    assert set(example) == fields
    RunRecord.model_validate(example)  # a valid record as shown


def _module_table() -> str:
    start = CONTRACTS.index("| module | job |", CONTRACTS.index("Modules of `bench/`"))
    return CONTRACTS[start : CONTRACTS.index("\n\n", start)]


def test_every_bench_module_is_in_the_module_table() -> None:
    table = _module_table()
    named = set(re.findall(r"`([\w/]+(?:\.py|/))`", table))
    bench = ROOT / "bench"
    expected = {p.name for p in bench.glob("*.py") if p.stem not in ("__init__", "__main__")}
    expected |= {
        f"tuning/{p.name}" for p in (bench / "tuning").glob("*.py") if p.stem != "__init__"
    }
    expected |= {"probes/", "suites/"}
    assert expected - named == set(), "modules missing from docs/CONTRACTS.md's table"
    assert named - expected == set(), "the table names modules that do not exist"


def _signatures() -> list[tuple[str, str, str]]:
    """(module, name, parameter text) of every call signature the page's Python blocks show."""
    found = []
    for block in _code_blocks(CONTRACTS, "python"):
        for match in re.finditer(
            r"^\s*(?:from \S+ import \S+\s+#\s*)?((?:podbench\.\w+\.)*)(\w+)\(", block, flags=re.M
        ):
            module, name = match.group(1).rstrip("."), match.group(2)
            module = module or UNQUALIFIED.get(name, "")
            if not module:
                continue
            depth, end = 1, match.end()
            while depth:
                depth += {"(": 1, ")": -1}.get(block[end], 0)
                end += 1
            found.append((module, name, block[match.end() : end - 1]))
    return found


def _split_top_level(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        depth += char in "([{"
        depth -= char in ")]}"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return [p.strip() for p in [*parts, current] if p.strip()]


def _shown_parameters(text: str) -> list[str]:
    """Parameter names as shown, ``*`` where keyword-only ones start, ``**name`` for kwargs."""
    names = []
    for part in _split_top_level(text):
        part = re.sub(r"\s*#.*", "", part)
        if part in ("...",):
            continue
        names.append(re.split(r"\s*[:=]", part, maxsplit=1)[0].strip())
    return names


def _actual_parameters(obj: object) -> list[str]:
    names, star = [], False
    for param in inspect.signature(obj).parameters.values():  # type: ignore[arg-type]
        if param.kind is param.KEYWORD_ONLY and not star:
            names.append("*")
            star = True
        if param.kind is param.VAR_KEYWORD:
            names.append(f"**{param.name}")
        elif param.kind is param.VAR_POSITIONAL:
            names.append(f"*{param.name}")
            star = True
        else:
            names.append(param.name)
    return names


SIGNATURES = _signatures()


def test_the_page_shows_the_main_signatures() -> None:
    shown = {(module, name) for module, name, _ in SIGNATURES}
    assert {
        ("podbench.engine", "train_run"),
        ("podbench.tasks", "load_task"),
        ("podbench.ray_cluster", "init_ray"),
        ("podbench.executor", "run_suite"),
        ("podbench.worker", "train_in_worker"),
    } <= shown


@pytest.mark.parametrize(
    ("module", "name", "text"), SIGNATURES, ids=[f"{m}.{n}" for m, n, _ in SIGNATURES]
)
def test_each_signature_shown_is_the_codes(module: str, name: str, text: str) -> None:
    obj = getattr(importlib.import_module(module), name)
    shown, actual = _shown_parameters(text), _actual_parameters(obj)
    # the positional parameters in order; keyword-only ones in any order
    cut = [names.index("*") if "*" in names else len(names) for names in (shown, actual)]
    assert shown[: cut[0]] == actual[: cut[1]]
    assert sorted(shown[cut[0] :]) == sorted(actual[cut[1] :])


def test_a_plugin_needs_only_the_public_losses_package() -> None:
    # the example plugin imports what podbench.losses exports (its tests: the conformance kit)
    example = ROOT / "examples" / "podbench-focal-loss"
    sources = [p for p in example.rglob("*.py") if "build" not in p.relative_to(example).parts]
    imports = {
        m
        for p in sources
        for m in re.findall(r"^from (podbench\S*) import", p.read_text(), flags=re.M)
    }
    assert imports <= {"podbench.losses", "podbench.losses.testing"}, imports
    import podbench.losses

    plugin = (example / "podbench_focal_loss" / "__init__.py").read_text()
    (names,) = re.findall(r"^from podbench\.losses import (.+)$", plugin, flags=re.M)
    assert {n.strip() for n in names.split(",")} <= set(podbench.losses.__all__)


def test_the_runspec_table_names_every_field_and_no_other() -> None:
    from podbench.runs import RunSpec

    start = CONTRACTS.index("| field | type, default | meaning |")
    rows = CONTRACTS[start : CONTRACTS.index("\n\n", start)].splitlines()[2:]
    first_column = {n for row in rows for n in re.findall(r"`(\w+)`", row.split("|")[1])}
    anywhere = {n for row in rows for n in re.findall(r"`(\w+)`", row)}
    fields = set(RunSpec.model_fields)
    assert first_column <= fields  # a row per field or group of fields
    assert fields <= anywhere  # optimiser and schedule settings are named in their row's text

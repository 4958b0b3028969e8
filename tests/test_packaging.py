"""The distribution: every source file ships, the console script and `python -m` both work."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {
    "bench": "podbench",
    "losses": "podbench/losses",
    "tasks": "podbench/tasks",
    "reports": "podbench/reports",
}


def _expected_wheel_files() -> set[str]:
    expected = set()
    for folder, target in FOLDERS.items():
        for path in (ROOT / folder).rglob("*"):
            if "__pycache__" in path.parts or not path.is_file():
                continue
            rel = path.relative_to(ROOT / folder)
            # a sub-folder of bench/ that is itself mapped (none today) would be counted twice
            if folder == "bench" and rel.parts[0] in FOLDERS:
                continue
            if path.suffix in {".py", ".yaml", ".html", ".tex", ".j2"}:
                expected.add(f"{target}/{rel.as_posix()}")
    return expected


@pytest.mark.slow
def test_wheel_contains_every_source_and_data_file(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("podbench-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = sorted(_expected_wheel_files() - names)
    assert not missing, f"files left out of the wheel (list their package in pyproject): {missing}"
    assert any(n.startswith("podbench/suites/") and n.endswith(".yaml") for n in names)


def test_version_from_module_and_metadata_agree() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "podbench", "--version"], check=True, capture_output=True, text=True
    ).stdout
    assert out.strip() == f"podbench {version('podbench')}"


def test_console_script_lists_commands() -> None:
    exe = Path(sys.executable).with_name("podbench")
    out = subprocess.run([str(exe), "--help"], check=True, capture_output=True, text=True).stdout
    for command in ("losses", "tasks", "doctor", "validate", "run", "results", "tune", "report"):
        assert command in out


def test_unknown_command_exits_2() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "podbench", "no-such-command"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr

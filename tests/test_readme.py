"""The README's examples stay true: its suite file validates, its commands exist."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from podbench.suite_spec import load_suite

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_readme_suite_example_is_a_valid_suite(tmp_path: Path) -> None:
    (block,) = re.findall(r"```yaml\n(.*?)```", README, flags=re.S)
    path = tmp_path / "my-suite.yaml"
    path.write_text(block)
    runs = load_suite(str(path)).expand()
    # 4 loss entries x 1 dataset x 1 architecture x 3 seeds, counted from the text itself
    assert len(runs) == 4 * 3
    assert {r.label for r in runs} == {"pod", "pod[no-sc]", "cosface", "softmax"}


def test_readme_commands_name_real_subcommands() -> None:
    used = set(re.findall(r"^podbench (\w+)", README, flags=re.M))
    assert used >= {"losses", "tasks", "doctor", "validate", "run", "results", "tune", "report"}
    for command in used:
        proc = subprocess.run(
            [sys.executable, "-m", "podbench", command, "--help"], capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr

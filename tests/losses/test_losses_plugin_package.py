"""Third-party plugins through the entry-point group, with the real example package."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "podbench-focal-loss"


def _python(code: str, *paths: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(str(p) for p in paths))
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )


def _fake_distribution(site: Path, name: str, entry_points: str) -> None:
    info = site / f"{name}-0.0.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.0.0\n")
    (info / "entry_points.txt").write_text(f"[podbench.losses]\n{entry_points}\n")


@pytest.mark.slow
def test_losses_example_package_installs_and_plugs_in(tmp_path):
    site = tmp_path / "site"
    source = tmp_path / "podbench-focal-loss"  # pip builds in the source tree: keep ours clean
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--target", str(site), str(source)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert pip.returncode == 0, pip.stderr
    code = (
        "import json, podbench_focal_loss\n"
        "from podbench.losses import create_loss, list_losses, loss_info\n"
        "from podbench.losses.testing import run_conformance\n"
        "info = loss_info('focal')\n"
        "loss = create_loss('focal', num_classes=3, feat_dim=4, variant='gamma-1')\n"
        "run_conformance('focal')\n"
        "print(json.dumps({'names': list_losses(), 'source': info.source, 'gamma': loss.gamma,\n"
        "                  'file': podbench_focal_loss.__file__}))\n"
    )
    run = _python(code, site)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert "focal" in result["names"] and "pod" in result["names"]
    assert result["source"] == "podbench-focal-loss" and result["gamma"] == 1.0
    assert result["file"].startswith(str(site))  # the copy just installed, not another one
    cli = _python(
        "from podbench.cli import main; raise SystemExit(main(['losses', 'focal']))", site
    )
    assert cli.returncode == 0 and "Lin, Goyal" in cli.stdout


def test_losses_broken_plugins_are_reported_not_fatal(tmp_path):
    site = tmp_path / "site"
    _fake_distribution(site, "broken_loss", "broken = no_such_module_xyz:Loss")
    (site / "undecorated_loss.py").write_text(
        "from podbench.losses import LossPlugin\nclass Loss(LossPlugin):\n    pass\n"
    )
    _fake_distribution(site, "undecorated_loss", "undecorated = undecorated_loss:Loss")
    code = (
        "import warnings; warnings.simplefilter('ignore')\n"
        "from podbench.errors import UserError\n"
        "from podbench.losses import create_loss, list_losses\n"
        "assert 'pod' in list_losses() and 'broken' not in list_losses()\n"
        "for name in ('broken', 'undecorated'):\n"
        "    try:\n"
        "        create_loss(name, num_classes=2, feat_dim=2)\n"
        "    except UserError as err:\n"
        "        print(err)\n"
        "from podbench.cli import main\n"
        "raise SystemExit(main(['losses']))\n"
    )
    run = _python(code, site)
    assert run.returncode == 0, run.stderr
    assert "loss 'broken' is installed but broken" in run.stdout
    assert "no_such_module_xyz" in run.stdout
    assert "not decorated with @register_loss" in run.stdout
    assert "broken plugin broken" in run.stdout and "broken plugin undecorated" in run.stdout


def test_losses_plugin_docs_show_the_example_files_unchanged():
    doc = (ROOT / "docs" / "plugins.md").read_text()
    for rel in ("pyproject.toml", "podbench_focal_loss/__init__.py"):
        text = (EXAMPLE / rel).read_text()
        assert text in doc, f"docs/plugins.md no longer shows examples/podbench-focal-loss/{rel}"
    assert "pip install --no-deps --no-build-isolation ./examples/podbench-focal-loss" in doc


def test_readme_shows_the_example_plugin_unchanged():
    readme = (ROOT / "README.md").read_text()
    text = (EXAMPLE / "podbench_focal_loss/__init__.py").read_text()
    assert text in readme, "README.md no longer shows examples/podbench-focal-loss's plugin module"
    assert 'focal = "podbench_focal_loss:FocalLoss"' in readme

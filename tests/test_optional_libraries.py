"""Without the optional extras, `pml:` and `timm:` names fail with a sentence saying what to install."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent("""
    import sys
    sys.modules["pytorch_metric_learning"] = None  # as if neither extra were installed
    sys.modules["timm"] = None
    from podbench.cli import main
    from podbench.errors import UserError
    from podbench.losses import create_loss, list_losses
    assert "pod" in list_losses() and not any(n.startswith("pml:") for n in list_losses())
    try:
        create_loss("pml:ArcFaceLoss", num_classes=3, feat_dim=4)
    except UserError as err:
        print("create:", err)
    print("losses-suite exit", main(["validate", sys.argv[1]]))
    print("timm-suite exit", main(["validate", sys.argv[2]]))
    main(["losses"])
    main(["tasks"])
""")


def test_library_names_without_the_extras_say_what_to_install(tmp_path: Path) -> None:
    common = "datasets: [digits]\nfeat_dim: 8\n"
    losses = tmp_path / "losses.yaml"
    losses.write_text("name: x\nlosses: [pod, pml:ArcFaceLoss]\narchs: [mlp]\n" + common)
    archs = tmp_path / "archs.yaml"
    archs.write_text("name: y\nlosses: [pod]\narchs: [timm:resnet18]\n" + common)
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(losses), str(archs)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    out, err = proc.stdout, proc.stderr
    assert "create: loss names 'pml:...' need the pytorch-metric-learning package" in out
    assert "pip install 'podbench[pml]'" in out
    assert "losses-suite exit 2" in out and "timm-suite exit 2" in out
    assert "field 'losses.1.name'" in err and "podbench[pml]" in err
    assert "field 'archs.0'" in err and "pip install 'podbench[timm]'" in err
    assert "timm: not installed" in out and "Traceback" not in err

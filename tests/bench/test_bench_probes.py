"""Evaluation probes end to end: the registry, spec fields, the engine hook, the test-set rule."""

from __future__ import annotations

import hashlib
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from podbench.engine import train_run
from podbench.errors import UserError
from podbench.probes import PROBES, Probe, create_probe, list_probes, register_probe
from podbench.probes.builtin import convert_channels
from podbench.record import RunRecord
from podbench.runs import RunSpec
from podbench.suite_spec import load_suite
from podbench.tasks.task import TensorTask

BASE = dict(
    loss="softmax",
    dataset="digits",
    arch="mlp",
    feat_dim=16,
    epochs=2,
    batch_size=64,
    lr=0.05,
    milestones=[],
    device="cpu",
    limit_train=400,
    limit_eval=200,
)


def _run(**fields: object) -> dict:
    record = train_run(RunSpec(**{**BASE, **fields}))
    assert record["status"] == "completed", record["error"]
    RunRecord.model_validate(record)  # what the results store will accept
    return record


def test_registry_lists_builtins_and_checks_settings() -> None:
    assert list_probes() == ["calibration", "corruptions", "ood"]
    with pytest.raises(UserError, match="did you mean 'calibration'"):
        create_probe("calibraton")
    with pytest.raises(UserError, match="evaluate.bins: .*greater than or equal to 2"):
        create_probe("calibration", {"bins": 1})
    with pytest.raises(UserError, match="no setting 'dataset'.*datasets"):
        create_probe("ood", {"dataset": ["mnist"]})
    with pytest.raises(UserError, match="unknown corruption 'frost'"):
        create_probe("corruptions", {"corruptions": ["frost"]})


def test_engine_writes_probe_values_and_their_cross_checks() -> None:
    record = _run(
        evaluate=[
            "calibration",
            {"name": "ood", "datasets": ["synthetic"]},
            {
                "name": "corruptions",
                "severities": [1, 5],
                "every": 1,
                "corruptions": ["gaussian-noise", "contrast"],
            },
        ],
        open_set={"known": 6, "seed": 1},
    )
    ev = record["evaluation"]
    # the three probes and the engine measure the same test split with the same network
    assert ev["calibration"]["acc"] == pytest.approx(record["final_test_acc"])
    assert ev["corruptions"]["clean.acc"] == pytest.approx(record["final_test_acc"])
    cal = ev["calibration"]
    assert cal["temperature"] > 0
    shares = [cal[f"reliability.{m:02d}.share"] for m in range(15)]
    assert sum(shares) == pytest.approx(1.0)
    ood = ev["ood"]
    assert {"open-set.msp.auroc", "synthetic.energy.fpr95", "open-set.max-logit.aupr_out"} <= set(
        ood
    )
    # near (the open-set split) and far (the far-OOD sets) apart, never averaged together
    assert "auroc" not in ood
    assert ood["near.auroc"] == ood["open-set.msp.auroc"]
    assert ood["far.auroc"] == ood["synthetic.msp.auroc"]
    assert ood["far.openood_fpr95"] == ood["synthetic.msp.openood_fpr95"]
    corr = ev["corruptions"]
    assert corr["mca"] == pytest.approx(
        np.mean([corr[f"{c}.s{s}.acc"] for c in ("gaussian-noise", "contrast") for s in (1, 5)])
    )
    assert corr["n"] == 200 and "extras.mca" not in corr  # limit_eval; no extra measured
    assert corr["contrast.acc"] == pytest.approx(
        (corr["contrast.s1.acc"] + corr["contrast.s5.acc"]) / 2
    )
    # every: 1 -> also after the first epoch; the last epoch's values are the record's
    assert set(record["history"][0]["evaluation"]) == {"corruptions"}
    assert "evaluation" not in record["history"][-1]
    # the open-set run trained on its 6 known classes
    assert record["spec"]["open_set"] == {"known": 6, "seed": 1}


def test_probes_never_read_the_test_set_while_tuning(monkeypatch: pytest.MonkeyPatch) -> None:
    read: set[str] = set()
    for method in ("eval_batches", "pixel_batches"):
        original = getattr(TensorTask, method)

        def spy(self: TensorTask, split: str, batch_size: int, _original=original):  # type: ignore[no-untyped-def]
            read.add(split)
            return _original(self, split, batch_size)

        monkeypatch.setattr(TensorTask, method, spy)
    record = _run(
        eval_split="val",
        open_set={"known": 6},
        evaluate=[
            "calibration",
            "ood",
            {"name": "corruptions", "severities": [2], "corruptions": ["fog"]},
        ],
    )
    assert set(record["evaluation"]) == {"calibration", "ood", "corruptions"}
    assert read == {"val", "val-unknown"}


def test_label_noise_is_recorded_and_test_labels_stay_clean() -> None:
    record = _run(label_noise={"kind": "symmetric", "rate": 0.4})
    noise = record["evaluation"]["label-noise"]
    assert noise["rate"] == 0.4 and noise["changed"] == pytest.approx(0.4, abs=0.08)
    clean = _run()
    assert clean["evaluation"] == {} and clean["run_id"] != record["run_id"]


def test_a_third_party_probe_runs_from_a_suite_entry() -> None:
    with PROBES.scratch():

        @register_probe("mean-confidence", description="mean max softmax probability")
        class MeanConfidence(Probe):
            def measure(self, context):  # type: ignore[no-untyped-def]
                scores, _ = context.scores(context.split)
                return {
                    "value": float(torch.softmax(scores, 1).max(1).values.mean()),
                    "undefined": float("nan"),
                }

        record = _run(evaluate=["mean-confidence"])
        assert 0.1 <= record["evaluation"]["mean-confidence"]["value"] <= 1.0
        assert record["evaluation"]["mean-confidence"]["undefined"] is None  # NaN -> null


def test_run_ids_of_runs_without_the_new_fields_are_unchanged() -> None:
    run = RunSpec(**BASE)
    # the id as computed before evaluate/label_noise/open_set (and deterministic) existed
    payload = run.model_dump(
        mode="json",
        exclude={
            "suite",
            "label",
            "imports",
            "cpus",
            "gpus",
            "checkpoint",
            "evaluate",
            "label_noise",
            "open_set",
            "deterministic",
            # and before the airbench recipe's settings (#20)
            "warmup",
            "drop_last",
            "augmentation",
            "lookahead",
            "tta",
            "proj",
        },
    )
    payload.update({"data_root": None, "device": "auto", "channels_last": False, "compile": False})
    old = hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode())
    assert run.run_id == old.hexdigest()[:16]
    assert RunSpec(**BASE, evaluate=["calibration"]).run_id != run.run_id
    assert RunSpec(**BASE, open_set={"known": 5}).run_id != run.run_id


def test_suite_noise_axis_and_probe_errors(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(
        textwrap.dedent("""
        name: noisy
        losses: [softmax]
        datasets: [digits]
        archs: [mlp]
        feat_dim: 16
        epochs: 1
        evaluate: [calibration, {name: ood, datasets: [synthetic]}]
        label_noise: [null, {kind: symmetric, rate: 0.2}, {kind: pair, rate: 0.4, seed: 3}]
    """)
    )
    runs = load_suite(path).expand()
    assert [r.label_noise and (r.label_noise.kind, r.label_noise.rate) for r in runs] == [
        None,
        ("symmetric", 0.2),
        ("pair", 0.4),
    ]
    assert len({r.run_id for r in runs}) == 3
    assert all(r.evaluate[1].probe_settings() == {"datasets": ["synthetic"]} for r in runs)
    for override, needle in [
        (["evaluate=[calibraton]"], "field 'evaluate.0.name': unknown probe 'calibraton'"),
        (
            ["evaluate=[{name: ood, datasets: [svhm]}]"],
            "evaluate.0.datasets.0.*unknown dataset 'svhm'",
        ),
        (
            ["evaluate=[{name: ood, score: [msp]}]"],
            "evaluate.0.score: the ood probe has no setting",
        ),
        (["evaluate=[ood, ood]"], "list each probe once"),
        (["evaluate=[ood]"], "field evaluate.0: the ood probe has no OOD set"),
        (["label_noise={kind: uniform, rate: 0.2}"], "label_noise"),
        (["open_set={known: 1}"], "open_set.known"),
    ]:
        with pytest.raises(UserError, match=needle):
            load_suite(path, override)


def test_convert_channels_matches_pil_luma() -> None:
    rgb = torch.rand(1, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    pixels = (rgb[0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    ref = np.asarray(Image.fromarray(pixels, "RGB").convert("L"), dtype=np.float64) / 255
    got = convert_channels((rgb * 255).round() / 255, 1)[0, 0].numpy()
    assert np.abs(got - ref).max() <= 1 / 255 + 1e-6  # PIL rounds to whole levels
    grey = torch.rand(2, 1, 4, 4)
    assert torch.equal(convert_channels(grey, 3), grey.expand(-1, 3, -1, -1))


def test_run_with_a_missing_far_ood_set_exits_2_before_writing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from podbench.cli import main

    empty = tmp_path / "no-data"
    empty.mkdir()
    results = tmp_path / "results"
    args = [
        "run",
        "robustness-quickstart",
        "--results",
        str(results),
        "--set",
        f"evaluate=[{{name: ood, datasets: [digits, cifar10], data_root: {empty}}}]",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "field 'evaluate.0.datasets.1': dataset 'cifar10' was not found" in err
    assert "evaluate.0.data_root" in err and not results.exists()


def test_probes_run_with_tf32_off_and_restore_it() -> None:
    from podbench.probes.runner import run_probes
    from podbench.tasks import load_task

    seen: dict[str, object] = {}
    before = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.get_float32_matmul_precision(),
    )
    task = load_task(
        "digits", use_val=True, augment=False, limit={"train": 100, "val": 50, "test": 50}
    )
    try:
        with PROBES.scratch():

            @register_probe("tf32-spy", description="records the TF32 flags while it measures")
            class Spy(Probe):
                def measure(self, context):  # type: ignore[no-untyped-def]
                    seen["flags"] = (
                        torch.backends.cuda.matmul.allow_tf32,
                        torch.backends.cudnn.allow_tf32,
                        torch.get_float32_matmul_precision(),
                    )
                    return {"value": 1.0}

            run = RunSpec(**{**BASE, "evaluate": ["tf32-spy"]})
            # as a GPU run trains: TF32 on (the engine switches it on for CUDA runs)
            torch.set_float32_matmul_precision("high")
            torch.backends.cudnn.allow_tf32 = True
            out = run_probes(
                run,
                run.evaluate,
                forward=lambda x: x.flatten(1)[:, :10],
                predict=lambda f: f,
                task=task,
            )
        assert out == {"tf32-spy": {"value": 1.0}}
        assert seen["flags"] == (False, False, "highest")
        # restored after the probes
        assert torch.get_float32_matmul_precision() == "high" and torch.backends.cudnn.allow_tf32
    finally:
        torch.set_float32_matmul_precision(before[2])
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before[:2]


def test_corruption_draws_do_not_depend_on_the_other_corruptions() -> None:
    both = _run(
        evaluate=[
            {
                "name": "corruptions",
                "severities": [3],
                "corruptions": ["gaussian-noise", "speckle-noise"],
            }
        ]
    )
    alone = _run(
        evaluate=[{"name": "corruptions", "severities": [3], "corruptions": ["speckle-noise"]}]
    )
    b, a = both["evaluation"]["corruptions"], alone["evaluation"]["corruptions"]
    assert a["speckle-noise.s3.acc"] == b["speckle-noise.s3.acc"]
    # the benchmark's mean and the extras' apart
    assert b["mca"] == b["gaussian-noise.s3.acc"] and b["extras.mca"] == b["speckle-noise.s3.acc"]
    assert "mca" not in a and a["extras.mca"] == a["speckle-noise.s3.acc"]

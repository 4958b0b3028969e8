"""Criteria beyond accuracy in the report: --metric by probe value, conditions as blocks, mCE
against softmax worked by hand, the multi-criteria summary and its figures."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from podbench.errors import UserError
from podbench.record import RunRecord
from podbench.reports.build import build_report
from podbench.reports.criteria import (
    add_conditions,
    add_corruption_errors,
    criterion_metric,
    with_criteria,
)
from podbench.reports.records import load_results

COLUMNS = ["evaluation.calibration.ece", "evaluation.calibration.temperature",
           "evaluation.ood.auroc", "evaluation.ood.open-set.msp.auroc",
           "evaluation.ood.digits.msp.auroc", "evaluation.corruptions.fog.acc",
           "evaluation.corruptions.contrast.acc", "final_test_acc"]


def test_metric_by_short_name_or_column_with_its_direction() -> None:
    ece = criterion_metric("ece", COLUMNS)
    assert (ece.name, ece.higher_is_better, ece.scale, ece.unit) == (
        "evaluation.calibration.ece", False, 100.0, "%")
    auroc = criterion_metric("auroc", COLUMNS)  # the headline, not a per-set value
    assert auroc.name == "evaluation.ood.auroc" and auroc.higher_is_better
    per_set = criterion_metric("evaluation.ood.open-set.msp.auroc", COLUMNS)
    assert "open-set, msp" in per_set.title
    with pytest.raises(UserError, match="ambiguous.*contrast.acc.*fog.acc"):
        criterion_metric("acc", COLUMNS)
    with pytest.raises(UserError, match="not a criterion"):
        criterion_metric("temperature", COLUMNS)
    with pytest.raises(UserError, match="not recorded by these runs.*auroc.*ece"):
        criterion_metric("aurok", COLUMNS)


def _runs(rows: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(rows)


def test_conditions_make_their_own_blocks() -> None:
    runs = add_conditions(_runs([
        {"dataset": "fmnist", "spec.label_noise.kind": None, "spec.label_noise.rate": None,
         "spec.open_set.known": 6, "spec.open_set.seed": 0},
        {"dataset": "fmnist", "spec.label_noise.kind": "symmetric", "spec.label_noise.rate": 0.4,
         "spec.open_set.known": None, "spec.open_set.seed": None},
        {"dataset": "fmnist", "spec.label_noise.kind": None, "spec.label_noise.rate": None,
         "spec.open_set.known": None, "spec.open_set.seed": None},
    ]))
    assert runs["dataset"].tolist() == ["fmnist [open 6, split 0]", "fmnist [symmetric noise 0.4]",
                                        "fmnist"]
    assert runs["condition.dataset"].tolist() == ["fmnist"] * 3
    assert runs["condition.noise_rate"].tolist() == [0.0, 0.4, 0.0]


def test_mce_and_relative_mce_against_softmax_by_hand() -> None:
    def row(label: str, seed: int, clean: float, fog: tuple[float, float],
            blur: tuple[float, float], block: str = "a") -> dict[str, Any]:
        return {"dataset": block, "arch": "cnn", "label": label, "seed": seed,
                "status": "completed", "evaluation.corruptions.clean.acc": clean,
                "evaluation.corruptions.fog.s1.acc": fog[0],
                "evaluation.corruptions.fog.s2.acc": fog[1],
                "evaluation.corruptions.blur.s1.acc": blur[0],
                "evaluation.corruptions.blur.s2.acc": blur[1]}

    runs = add_corruption_errors(_runs([
        # softmax, two seeds: mean errors fog (0.2, 0.4), blur (0.3, 0.5), clean 0.1
        row("softmax", 0, 0.9, (0.8, 0.6), (0.7, 0.5)),
        row("softmax", 1, 0.9, (0.8, 0.6), (0.7, 0.5)),
        # pod: errors fog (0.1, 0.3), blur (0.3, 0.3), clean 0.05
        row("pod", 0, 0.95, (0.9, 0.7), (0.7, 0.7)),
        row("pod", 0, 0.95, (0.9, 0.7), (0.7, 0.7), block="no-softmax"),
    ]))
    # mCE = mean(0.4 / 0.6, 0.6 / 0.8); relative: mean((0.4 - 0.1) / (0.6 - 0.2),
    #                                                   (0.6 - 0.1) / (0.8 - 0.2))
    pod = runs.iloc[2]
    assert pod["evaluation.corruptions.mce"] == pytest.approx((0.4 / 0.6 + 0.6 / 0.8) / 2)
    assert pod["evaluation.corruptions.rel_mce"] == pytest.approx((0.3 / 0.4 + 0.5 / 0.6) / 2)
    assert runs.iloc[0]["evaluation.corruptions.mce"] == pytest.approx(1.0)
    assert pd.isna(runs.iloc[3]["evaluation.corruptions.mce"])  # no softmax in that block


def _with_probes(record: dict[str, Any], acc: float, noise: float | None) -> dict[str, Any]:
    """A record with probe values that follow its accuracy (better accuracy, lower ECE)."""
    rec = dict(record)
    rec["spec"] = {**rec["spec"], "open_set": {"known": 6, "seed": 0},
                   "label_noise": None if noise is None else {"kind": "symmetric",
                                                              "rate": noise, "seed": None}}
    cal = {"ece": 1 - acc, "nll": 2 * (1 - acc), "brier": 1 - acc, "temperature": 1.5,
           "acc": acc}
    for m in range(15):
        centre = (m + 0.5) / 15
        cal[f"reliability.{m:02d}.conf"] = centre
        cal[f"reliability.{m:02d}.acc"] = centre * acc
        cal[f"reliability.{m:02d}.share"] = 1 / 15
        cal[f"reliability_raw.{m:02d}.conf"] = centre
        cal[f"reliability_raw.{m:02d}.acc"] = centre
        cal[f"reliability_raw.{m:02d}.share"] = 1 / 15
    ood = {"auroc": acc, "fpr95": 1 - acc, "open-set.msp.auroc": acc}
    for fpr in (0, 5, 10, 50, 100):
        ood[f"open-set.msp.roc.tpr_at_fpr{fpr:03d}"] = min(1.0, fpr / 100 + acc / 2)
    corr = {"clean.acc": acc, "mca": acc - 0.1}
    for s in (1, 2, 3):
        corr[f"fog.s{s}.acc"] = acc - 0.05 * s
    rec["evaluation"] = {"calibration": cal, "ood": ood, "corruptions": corr}
    return RunRecord.model_validate(rec).to_json_dict()


def test_report_compares_any_criterion_and_summarises_them(
    tmp_path: Path, record_maker: Callable[..., dict[str, Any]],
    results_writer: Callable[..., Path],
) -> None:
    records = []
    for noise in (None, 0.4):
        for label, acc in (("softmax", 0.80), ("pod", 0.86), ("cosface", 0.83)):
            for seed in range(3):
                value = acc - (0.1 if noise else 0.0) + 0.005 * seed
                rec = record_maker(label, "fmnist", "small-cnn", seed + (10 if noise else 0), value)
                records.append(_with_probes(rec, value, noise))
    root = results_writer(tmp_path / "results", records, "name: robust\n")
    data = with_criteria(load_results(root))
    assert sorted(set(data.runs["dataset"])) == ["fmnist [open 6, split 0, symmetric noise 0.4]",
                                                 "fmnist [open 6, split 0]"]
    html = build_report(root, control="softmax", metric="ece")
    stats = json.loads((html.parent / "stats.json").read_text())
    assert stats["metric"]["name"] == "evaluation.calibration.ece"
    assert stats["metric"]["higher_is_better"] is False
    by_name = {c["metric"]["name"]: c for c in stats["criteria"]}
    assert set(by_name) >= {"final_test_acc", "evaluation.calibration.ece",
                            "evaluation.ood.auroc", "evaluation.corruptions.mca",
                            "evaluation.corruptions.rel_mce"}
    ece = by_name["evaluation.calibration.ece"]
    # lower ECE is better: pod (highest accuracy) ranks first in both blocks
    assert ece["mean_ranks"] == {"softmax": 3.0, "pod": 1.0, "cosface": 2.0}
    assert ece["means"]["pod"] == pytest.approx(100 * (1 - 0.86 - 0.005 + 0.05), abs=1e-9)
    assert by_name["final_test_acc"]["best"] == "pod"
    assert "pod (fmnist [open 6, split 0] / small-cnn)" in by_name["final_test_acc"]["verdict"]
    for figure in ("reliability", "roc", "corruption_severity", "label_noise"):
        assert (html.parent / "figures" / f"{figure}.png").is_file(), figure
    text = html.read_text()
    assert "Beyond accuracy: every criterion" in text and "relative mCE" in text
    tex = (html.parent / "report.tex").read_text()
    assert "(lower better)" in tex and "Beyond accuracy" in tex
    with pytest.raises(UserError, match="--metric 'aurok' is not recorded"):
        build_report(root, control="softmax", metric="aurok")

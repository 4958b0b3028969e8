"""Criteria beyond accuracy in the report: --metric by probe value, conditions as blocks, the
corruption errors against softmax worked by hand (denominators refused when within noise), mean
ranks on the shared cases, the multi-criteria summary and its figures."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from cases import RankCase, rank_cases

from podbench.errors import UserError
from podbench.record import RunRecord
from podbench.reports.build import build_report
from podbench.reports.criteria import (
    add_conditions,
    add_corruption_errors,
    corruption_denominators,
    criterion_metric,
    with_criteria,
)
from podbench.reports.records import load_results
from podbench.reports.stats import mean_ranks

COLUMNS = [
    "evaluation.calibration.ece",
    "evaluation.calibration.temperature",
    "evaluation.ood.near.auroc",
    "evaluation.ood.far.auroc",
    "evaluation.ood.open-set.msp.auroc",
    "evaluation.ood.digits.msp.auroc",
    "evaluation.corruptions.fog.acc",
    "evaluation.corruptions.contrast.acc",
    "final_test_acc",
]


def test_metric_by_short_name_or_column_with_its_direction() -> None:
    ece = criterion_metric("ece", COLUMNS)
    assert (ece.name, ece.higher_is_better, ece.scale, ece.unit) == (
        "evaluation.calibration.ece",
        False,
        100.0,
        "%",
    )
    # near and far are two headlines: the short name does not pick one
    with pytest.raises(UserError, match="ambiguous.*far.auroc.*near.auroc"):
        criterion_metric("auroc", COLUMNS)
    near = criterion_metric("auroc", [c for c in COLUMNS if ".far." not in c])
    assert near.name == "evaluation.ood.near.auroc" and near.higher_is_better
    assert "[ood: near]" in near.title
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
    runs = add_conditions(
        _runs(
            [
                {
                    "dataset": "fmnist",
                    "spec.label_noise.kind": None,
                    "spec.label_noise.rate": None,
                    "spec.open_set.known": 6,
                    "spec.open_set.seed": 0,
                },
                {
                    "dataset": "fmnist",
                    "spec.label_noise.kind": "symmetric",
                    "spec.label_noise.rate": 0.4,
                    "spec.open_set.known": None,
                    "spec.open_set.seed": None,
                },
                {
                    "dataset": "fmnist",
                    "spec.label_noise.kind": None,
                    "spec.label_noise.rate": None,
                    "spec.open_set.known": None,
                    "spec.open_set.seed": None,
                },
            ]
        )
    )
    assert runs["dataset"].tolist() == [
        "fmnist [open 6, split 0]",
        "fmnist [symmetric noise 0.4]",
        "fmnist",
    ]
    assert runs["condition.dataset"].tolist() == ["fmnist"] * 3
    assert runs["condition.noise_rate"].tolist() == [0.0, 0.4, 0.0]


def _corruption_row(
    label: str,
    seed: int,
    clean: float,
    errors: dict[str, tuple[float, float]],
    block: str = "a",
    n: int | None = 1000,
) -> dict[str, Any]:
    row = {
        "dataset": block,
        "arch": "cnn",
        "label": label,
        "seed": seed,
        "status": "completed",
        "evaluation.corruptions.clean.acc": clean,
    }
    if n is not None:
        row["evaluation.corruptions.n"] = n
    for name, (e1, e2) in errors.items():
        row[f"evaluation.corruptions.{name}.s1.acc"] = 1 - e1
        row[f"evaluation.corruptions.{name}.s2.acc"] = 1 - e2
    return row


SOFTMAX_ERRORS = [  # two seeds, clean error 0.1 in both
    {
        "fog": (0.2, 0.4),
        "pixelate": (0.11, 0.09),
        "contrast": (0.09, 0.08),
        "speckle-noise": (0.3, 0.5),
    },
    {
        "fog": (0.2, 0.4),
        "pixelate": (0.10, 0.12),
        "contrast": (0.09, 0.08),
        "speckle-noise": (0.3, 0.5),
    },
]
POD_ERRORS = {
    "fog": (0.1, 0.3),
    "pixelate": (0.2, 0.2),
    "contrast": (0.06, 0.06),
    "speckle-noise": (0.2, 0.3),
}


def test_corruption_errors_against_softmax_by_hand() -> None:
    runs = add_corruption_errors(
        _runs(
            [
                _corruption_row("softmax", 0, 0.9, SOFTMAX_ERRORS[0]),
                _corruption_row("softmax", 1, 0.9, SOFTMAX_ERRORS[1]),
                _corruption_row("pod", 0, 0.95, POD_ERRORS),
                _corruption_row("pod", 0, 0.95, POD_ERRORS, block="no-softmax"),
            ]
        )
    )
    pod = runs.iloc[2]
    # the benchmark's corruptions (fog, pixelate, contrast): summed errors over softmax's means
    ce = np.mean([0.4 / 0.6, 0.4 / (0.105 + 0.105), 0.12 / 0.17])
    assert pod["evaluation.corruptions.ce_vs_softmax"] == pytest.approx(ce)
    assert pod["evaluation.corruptions.ce_vs_softmax_n"] == 3
    # relative: softmax's rise on fog is 0.1 + 0.3 = 0.4, far above its noise; on pixelate it
    # is 0.01 +- 0.0105 (within noise) and on contrast -0.03 (<= 0): both refused
    assert pod["evaluation.corruptions.rel_ce_vs_softmax"] == pytest.approx(
        ((0.1 - 0.05) + (0.3 - 0.05)) / 0.4
    )
    assert pod["evaluation.corruptions.rel_ce_vs_softmax_n"] == 1
    # the extras apart: speckle noise only
    assert pod["evaluation.corruptions.extras.ce_vs_softmax"] == pytest.approx(0.5 / 0.8)
    assert pod["evaluation.corruptions.extras.rel_ce_vs_softmax"] == pytest.approx(0.4 / 0.6)
    assert runs.iloc[0]["evaluation.corruptions.rel_ce_vs_softmax"] == pytest.approx(1.0)
    assert pd.isna(runs.iloc[3]["evaluation.corruptions.ce_vs_softmax"])  # no softmax there
    assert "evaluation.corruptions.mce" not in runs and "evaluation.corruptions.rel_mce" not in runs


def test_softmax_denominators_and_their_standard_errors_by_hand() -> None:
    runs = _runs(
        [_corruption_row("softmax", s, 0.9, SOFTMAX_ERRORS[s]) for s in (0, 1)]
        + [_corruption_row("pod", 0, 0.95, POD_ERRORS)]
    )
    table = corruption_denominators(runs).set_index("corruption")
    # pixelate: rises 0.0 and 0.02 -> D = 0.01; seeds: sd 0.01414 / sqrt(2) = 0.01; images
    # (n = 1000, shared by the seeds): mean rises per severity 0.005 and 0.005, each a paired
    # difference with variance 0.005 * 0.995 / 1000
    var = 0.01**2 + 2 * 0.005 * 0.995 / 1000
    assert table.loc["pixelate", "rise"] == pytest.approx(0.01)
    assert table.loc["pixelate", "se"] == pytest.approx(var**0.5)
    # fog: D = 0.1 + 0.3, no spread over seeds: SE from the images only
    assert table.loc["fog", "se"] == pytest.approx(((0.1 * 0.9 + 0.3 * 0.7) / 1000) ** 0.5)
    assert table["entered"].to_dict() == {
        "fog": True,
        "pixelate": False,
        "contrast": False,
        "speckle-noise": True,
    }
    assert table["benchmark"].to_dict() == {
        "fog": True,
        "pixelate": True,
        "contrast": True,
        "speckle-noise": False,
    }
    # records without the image count: the seeds' spread alone
    old = corruption_denominators(
        _runs([_corruption_row("softmax", s, 0.9, SOFTMAX_ERRORS[s], n=None) for s in (0, 1)])
    )
    assert old.set_index("corruption").loc["pixelate", "se"] == pytest.approx(0.01)


def test_relative_error_is_undefined_when_no_denominator_enters() -> None:
    flat = {"pixelate": (0.1, 0.1)}  # softmax's error does not rise at all
    runs = add_corruption_errors(
        _runs([_corruption_row("softmax", 0, 0.9, flat), _corruption_row("pod", 0, 0.95, flat)])
    )
    assert runs["evaluation.corruptions.rel_ce_vs_softmax"].isna().all()
    assert runs["evaluation.corruptions.rel_ce_vs_softmax_n"].isna().all()
    assert runs.iloc[1]["evaluation.corruptions.ce_vs_softmax"] == pytest.approx(0.1 / 0.1)


@pytest.mark.parametrize("case", list(rank_cases()), ids=lambda c: c.name)
def test_mean_ranks_average_ties_on_the_shared_cases(case: RankCase) -> None:
    ranks = mean_ranks(case.table, higher_is_better=case.higher_is_better)
    assert ranks.to_dict() == pytest.approx(case.expected)
    # pandas' own average ranks, per row, agree
    oriented = case.table if not case.higher_is_better else -case.table
    assert ranks.to_dict() == pytest.approx(
        oriented.rank(axis=1, method="average").mean(axis=0).to_dict()
    )


def _with_probes(record: dict[str, Any], acc: float, noise: float | None) -> dict[str, Any]:
    """A record with probe values that follow its accuracy (better accuracy, lower ECE)."""
    rec = dict(record)
    rec["spec"] = {
        **rec["spec"],
        "open_set": {"known": 6, "seed": 0},
        "label_noise": None
        if noise is None
        else {"kind": "symmetric", "rate": noise, "seed": None},
    }
    cal = {"ece": 1 - acc, "nll": 2 * (1 - acc), "brier": 1 - acc, "temperature": 1.5, "acc": acc}
    for m in range(15):
        centre = (m + 0.5) / 15
        cal[f"reliability.{m:02d}.conf"] = centre
        cal[f"reliability.{m:02d}.acc"] = centre * acc
        cal[f"reliability.{m:02d}.share"] = 1 / 15
        cal[f"reliability_raw.{m:02d}.conf"] = centre
        cal[f"reliability_raw.{m:02d}.acc"] = centre
        cal[f"reliability_raw.{m:02d}.share"] = 1 / 15
    ood = {"near.auroc": acc, "near.fpr95": 1 - acc, "open-set.msp.auroc": acc}
    for fpr in (0, 5, 10, 50, 100):
        ood[f"open-set.msp.roc.tpr_at_fpr{fpr:03d}"] = min(1.0, fpr / 100 + acc / 2)
    corr = {"clean.acc": acc, "mca": acc - 0.1, "n": 1000}
    for s in (1, 2, 3):
        corr[f"fog.s{s}.acc"] = acc - 0.05 * s
        corr[f"pixelate.s{s}.acc"] = acc - 0.001 * (s - 2)  # softmax barely hurt: refused
    rec["evaluation"] = {"calibration": cal, "ood": ood, "corruptions": corr}
    return RunRecord.model_validate(rec).to_json_dict()


def test_report_compares_any_criterion_and_summarises_them(
    tmp_path: Path,
    record_maker: Callable[..., dict[str, Any]],
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
    assert sorted(set(data.runs["dataset"])) == [
        "fmnist [open 6, split 0, symmetric noise 0.4]",
        "fmnist [open 6, split 0]",
    ]
    html = build_report(root, control="softmax", metric="ece")
    stats = json.loads((html.parent / "stats.json").read_text())
    assert stats["metric"]["name"] == "evaluation.calibration.ece"
    assert stats["metric"]["higher_is_better"] is False
    by_name = {c["metric"]["name"]: c for c in stats["criteria"]}
    assert set(by_name) >= {
        "final_test_acc",
        "evaluation.calibration.ece",
        "evaluation.ood.near.auroc",
        "evaluation.corruptions.mca",
        "evaluation.corruptions.rel_ce_vs_softmax",
    }
    rel = by_name["evaluation.corruptions.rel_ce_vs_softmax"]["verdict"]
    assert "1 of 2 corruptions" in rel and "refused pixelate (D = 0.00 ±" in rel
    ece = by_name["evaluation.calibration.ece"]
    # lower ECE is better: pod (highest accuracy) ranks first in both blocks
    assert ece["mean_ranks"] == {"softmax": 3.0, "pod": 1.0, "cosface": 2.0}
    assert ece["means"]["pod"] == pytest.approx(100 * (1 - 0.86 - 0.005 + 0.05), abs=1e-9)
    assert by_name["final_test_acc"]["best"] == "pod"
    assert "pod (fmnist [open 6, split 0] / small-cnn)" in by_name["final_test_acc"]["verdict"]
    for figure in ("reliability", "roc", "corruption_severity", "label_noise"):
        assert (html.parent / "figures" / f"{figure}.png").is_file(), figure
    text = html.read_text()
    assert "Beyond accuracy: every criterion" in text
    assert "relative corruption error vs softmax" in text and "relative mCE" not in text
    tex = (html.parent / "report.tex").read_text()
    assert "(lower better)" in tex and "Beyond accuracy" in tex
    with pytest.raises(UserError, match="--metric 'aurok' is not recorded"):
        build_report(root, control="softmax", metric="aurok")

"""Calibration and detection metrics against scikit-learn, torchmetrics and hand-worked cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from cases import CalibrationCase, DetectionCase, calibration_cases, detection_cases
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    log_loss,
    roc_auc_score,
)
from sklearn.metrics import roc_curve as sk_roc_curve

from podbench.probes.calibration import (
    adaptive_calibration_error,
    brier_score,
    classwise_calibration_error,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    reliability_bins,
    softmax_probabilities,
)
from podbench.probes.detection import (
    average_precision,
    detection_metrics,
    detection_score,
    fpr_at_tpr,
    openood_metrics,
    roc_auc,
    tpr_at_fpr,
)


def _random_probs(n: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=gen, dtype=torch.float64) * 2.5
    labels = torch.randint(0, k, (n,), generator=gen)
    labels = torch.where(torch.rand(n, generator=gen) < 0.6, logits.argmax(1), labels)
    return logits, labels


# -- calibration ------------------------------------------------------------------------------


def test_ece_hand_worked() -> None:
    # confidences 0.9 (hit), 0.9 (miss), 0.62 (hit), 0.55 (miss); 15 bins of width 1/15:
    # 0.9 -> (0.8667, 0.9333], 0.62 -> (0.6, 0.6667], 0.55 -> (0.5333, 0.6]
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.38, 0.62], [0.55, 0.45]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 1, 1])
    expected = 0.5 * abs(0.9 - 0.5) + 0.25 * abs(0.62 - 1) + 0.25 * abs(0.55 - 0)
    assert expected_calibration_error(probs, labels) == pytest.approx(expected, abs=1e-12)
    # two equal-count bins: {0.55 miss, 0.62 hit}, {0.9 hit, 0.9 miss}
    adaptive = 0.5 * abs((0.55 + 0.62) / 2 - 0.5) + 0.5 * abs(0.9 - 0.5)
    assert adaptive_calibration_error(probs, labels, bins=2) == pytest.approx(adaptive, abs=1e-12)


def test_ece_bin_edges_follow_guo() -> None:
    # a confidence of exactly 2/3 = 10/15 belongs to the bin (9/15, 10/15], not (10/15, 11/15]
    probs = torch.tensor([[2 / 3, 1 / 3], [0.7, 0.3]], dtype=torch.float64)
    labels = torch.tensor([0, 0])
    # separate bins: |1 - 2/3| / 2 + |1 - 0.7| / 2
    assert expected_calibration_error(probs, labels) == pytest.approx((1 / 3 + 0.3) / 2)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ece_matches_torchmetrics(seed: int) -> None:
    from torchmetrics.functional.classification import multiclass_calibration_error

    logits, labels = _random_probs(2000, 7, seed)
    probs = softmax_probabilities(logits)
    ours = expected_calibration_error(probs, labels, bins=15)
    theirs = multiclass_calibration_error(
        probs.float(), labels, num_classes=7, n_bins=15, norm="l1"
    )
    assert ours == pytest.approx(float(theirs), abs=1e-5)
    assert ours > 0.01  # a miscalibrated case, not a trivial zero


def test_adaptive_ece_against_array_split() -> None:
    logits, labels = _random_probs(1003, 5, 4)
    probs = softmax_probabilities(logits).numpy()
    conf, hit = probs.max(1), (probs.argmax(1) == labels.numpy()).astype(float)
    order = np.argsort(conf, kind="stable")
    reference = sum(
        len(chunk) / len(conf) * abs(hit[chunk].mean() - conf[chunk].mean())
        for chunk in np.array_split(order, 15)
    )
    assert adaptive_calibration_error(torch.from_numpy(probs), labels) == pytest.approx(reference)


def test_classwise_ece_hand_worked_and_against_loops() -> None:
    # two classes, two samples: p = (0.8, 0.2) label 0, p = (0.3, 0.7) label 0
    probs = torch.tensor([[0.8, 0.2], [0.3, 0.7]], dtype=torch.float64)
    labels = torch.tensor([0, 0])
    # class 0: bins of 0.8 and 0.3 differ: (|0.8 - 1| + |0.3 - 1|) / 2 = 0.45
    # class 1: bins of 0.2 and 0.7 differ: (|0.2 - 0| + |0.7 - 0|) / 2 = 0.45
    assert classwise_calibration_error(probs, labels) == pytest.approx(0.45)

    logits, labels = _random_probs(800, 4, 5)
    p = softmax_probabilities(logits).numpy()
    y = labels.numpy()
    total = 0.0
    for k in range(4):
        edges = np.linspace(0, 1, 16)
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            inside = (p[:, k] > lo) & (p[:, k] <= hi) if lo > 0 else (p[:, k] <= hi)
            if inside.any():
                total += inside.sum() / len(y) * abs(p[inside, k].mean() - (y[inside] == k).mean())
    assert classwise_calibration_error(torch.from_numpy(p), labels) == pytest.approx(total / 4)


def test_nll_and_brier_against_sklearn() -> None:
    logits, labels = _random_probs(500, 6, 6)
    probs = softmax_probabilities(logits).numpy()
    assert negative_log_likelihood(logits, labels) == pytest.approx(
        log_loss(labels.numpy(), probs, labels=list(range(6))), rel=1e-9
    )
    assert brier_score(torch.from_numpy(probs), labels) == pytest.approx(
        brier_score_loss(labels.numpy(), probs, labels=list(range(6)), scale_by_half=False)
    )
    # hand-worked Brier: p = (0.7, 0.2, 0.1), y = 0 -> 0.09 + 0.04 + 0.01
    assert brier_score(torch.tensor([[0.7, 0.2, 0.1]]), torch.tensor([0])) == pytest.approx(0.14)


def test_reliability_bins_hand_worked() -> None:
    probs = torch.tensor([[0.9, 0.1], [0.95, 0.05], [0.45, 0.55]])
    labels = torch.tensor([0, 1, 1])
    conf, acc, share = reliability_bins(probs, labels, bins=5)
    # bins of width 0.2: 0.55 -> (0.4, 0.6] = bin 2; 0.9 and 0.95 -> (0.8, 1] = bin 4
    assert share.tolist() == pytest.approx([0, 0, 1 / 3, 0, 2 / 3])
    assert conf[2] == pytest.approx(0.55) and conf[4] == pytest.approx(0.925)
    assert acc[2] == 1.0 and acc[4] == 0.5
    assert np.isnan(acc[0]) and np.isnan(conf[3])


def test_temperature_closed_form_two_classes() -> None:
    # every sample has logits (a, 0); a share q has label 0. The NLL is minimal where
    # sigmoid(a / T) = q, i.e. T = a / log(q / (1 - q)).
    a, q, n = 3.0, 0.8, 1000
    scores = torch.tensor([[a, 0.0]] * n)
    labels = torch.tensor([0] * int(q * n) + [1] * (n - int(q * n)))
    assert fit_temperature(scores, labels) == pytest.approx(a / math.log(q / (1 - q)), rel=1e-5)


def test_temperature_against_a_grid_search() -> None:
    logits, labels = _random_probs(600, 5, 7)
    scores = logits * 0.1  # cosine-like scores: the optimum is far below 1
    x, y = scores.numpy(), labels.numpy()

    def nll(t: float) -> float:  # written with numpy's log-sum-exp
        z = x / t
        m = z.max(1, keepdims=True)
        return float(np.mean(m[:, 0] + np.log(np.exp(z - m).sum(1)) - z[np.arange(len(y)), y]))

    grid = np.exp(np.linspace(np.log(0.01), np.log(10), 4001))
    best = grid[np.argmin([nll(t) for t in grid])]
    fitted = fit_temperature(scores, labels)
    assert fitted == pytest.approx(best, rel=2e-3)
    assert nll(fitted) <= nll(best) + 1e-9
    assert fitted < 0.5


# -- detection --------------------------------------------------------------------------------


@pytest.mark.parametrize("ties", [False, True])
def test_detection_metrics_against_sklearn(ties: bool) -> None:
    gen = torch.Generator().manual_seed(3)
    inside = torch.randn(700, generator=gen, dtype=torch.float64) + 1.0
    outside = torch.randn(400, generator=gen, dtype=torch.float64)
    if ties:  # few distinct values: thresholds with both kinds of samples
        inside, outside = inside.round(), outside.round()
    y = np.r_[np.ones(700), np.zeros(400)]
    s = np.r_[inside.numpy(), outside.numpy()]
    got = detection_metrics(inside, outside)
    assert got["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert got["aupr_in"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert got["aupr_out"] == pytest.approx(average_precision_score(1 - y, -s), abs=1e-12)
    fpr, tpr, _ = sk_roc_curve(y, s, drop_intermediate=False)
    assert got["fpr95"] == pytest.approx(fpr[np.argmax(tpr >= 0.95)], abs=1e-12)
    assert roc_auc(inside, outside) == got["auroc"]
    assert average_precision(inside, outside) == got["aupr_in"]


def test_detection_hand_worked() -> None:
    inside = torch.tensor([3.0, 2.0])
    outside = torch.tensor([2.5, 1.0])
    # pairs (in > out): (3 > 2.5), (3 > 1), (2 > 1); (2 < 2.5): AUROC = 3/4
    assert roc_auc(inside, outside) == pytest.approx(0.75)
    # accept the top 1 -> TPR 1/2, FPR 0; top 2 -> 1/2, 1/2; top 3 -> 1, 1/2
    assert fpr_at_tpr(inside, outside, 0.95) == pytest.approx(0.5)
    # precision at recall 1/2 is 1, at recall 1 is 2/3: AP = 1/2 * 1 + 1/2 * 2/3
    assert average_precision(inside, outside) == pytest.approx(0.5 + 1 / 3)
    # ROC points (0,0) (0,.5) (.5,.5) (.5,1) (1,1): read at FPR 0, .25, .5, .75
    assert tpr_at_fpr(inside, outside, [0.0, 0.25, 0.5, 0.75]) == pytest.approx([0.5, 0.5, 1, 1])


def test_detection_scores() -> None:
    s = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.4, 0.3]])
    msp = detection_score(s, "msp")
    assert msp[0] == pytest.approx(math.exp(2) / (math.exp(2) + 1 + math.exp(-1)))
    assert detection_score(s, "max-logit").tolist() == [2.0, 0.5]
    energy = detection_score(s, "energy", temperature=2.0)
    assert energy[1] == pytest.approx(2 * math.log(sum(math.exp(v / 2) for v in (0.5, 0.4, 0.3))))
    with pytest.raises(ValueError, match="unknown detection score"):
        detection_score(s, "odin")


# -- every metric on the shared cases (tests/cases.py) ----------------------------------------

CALIBRATION = list(calibration_cases())
DETECTION = list(detection_cases())


def _guo_ece_loop(p: np.ndarray, y: np.ndarray, bins: int) -> float:
    """Top-label ECE written as a loop over Guo's bins (lo, hi], the first also holding 0."""
    conf, hit = p.max(1), (p.argmax(1) == y).astype(float)
    total = 0.0
    for m in range(bins):
        lo, hi = m / bins, (m + 1) / bins
        inside = (conf > lo) & (conf <= hi) if m else (conf <= hi)
        if inside.any():
            total += inside.mean() * abs(hit[inside].mean() - conf[inside].mean())
    return total


@pytest.mark.parametrize("case", CALIBRATION, ids=lambda c: c.name)
def test_calibration_metrics_on_the_shared_cases(case: CalibrationCase) -> None:
    p, y = case.probs.numpy(), case.labels.numpy()
    ece = expected_calibration_error(case.probs, case.labels, case.bins)
    assert ece == pytest.approx(_guo_ece_loop(p, y, case.bins), abs=1e-12)
    if case.name != "exact-bin-edges":  # torchmetrics puts an edge value in the bin above it
        from torchmetrics.functional.classification import multiclass_calibration_error

        theirs = multiclass_calibration_error(
            case.probs, case.labels, num_classes=p.shape[1], n_bins=case.bins, norm="l1"
        )
        assert ece == pytest.approx(float(theirs), abs=1e-6)  # torchmetrics sums in float32
    conf, hit = p.max(1), (p.argmax(1) == y).astype(float)
    order = np.argsort(conf, kind="stable")
    adaptive = sum(
        len(c) / len(y) * abs(hit[c].mean() - conf[c].mean())
        for c in np.array_split(order, min(case.bins, len(y)))
    )
    assert adaptive_calibration_error(case.probs, case.labels, case.bins) == pytest.approx(
        adaptive, abs=1e-12
    )
    total = 0.0
    for k in range(p.shape[1]):
        for m in range(case.bins):
            lo, hi = m / case.bins, (m + 1) / case.bins
            inside = (p[:, k] > lo) & (p[:, k] <= hi) if m else (p[:, k] <= hi)
            if inside.any():
                total += inside.mean() * abs(p[inside, k].mean() - (y[inside] == k).mean())
    assert classwise_calibration_error(case.probs, case.labels, case.bins) == pytest.approx(
        total / p.shape[1], abs=1e-12
    )
    k = p.shape[1]
    assert brier_score(case.probs, case.labels) == pytest.approx(
        brier_score_loss(y, p, labels=list(range(k)), scale_by_half=False), abs=1e-12
    )
    if (p > 0).all():
        assert negative_log_likelihood(case.probs.log(), case.labels) == pytest.approx(
            log_loss(y, p, labels=list(range(k))), rel=1e-9
        )


def test_ece_bin_edges_with_hits_and_misses_hand_worked() -> None:
    # 4 bins, edges 0.5 and 0.75 exact: 0.75 (hit) and 0.75 (miss) belong to (0.5, 0.75],
    # 0.8 (hit) to (0.75, 1], 0.5 (argmax class 0: a hit) to (0.25, 0.5]
    probs = torch.tensor([[0.75, 0.25], [0.75, 0.25], [0.8, 0.2], [0.5, 0.5]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 0])
    guo = 2 / 4 * abs(0.75 - 0.5) + 1 / 4 * abs(0.8 - 1) + 1 / 4 * abs(0.5 - 1)
    assert expected_calibration_error(probs, labels, bins=4) == pytest.approx(guo, abs=1e-12)
    # were the edge values put in the bin above ([lo, hi), torchmetrics' convention), the edge
    # bin would pool 0.75, 0.75 and 0.8 and 0.5 would move up: 3/4 |0.7667 - 2/3| + 1/4 |0.5 - 1|
    above = 3 / 4 * abs((0.75 + 0.75 + 0.8) / 3 - 2 / 3) + 1 / 4 * 0.5
    assert abs(guo - above) > 0.05


@pytest.mark.parametrize("case", DETECTION, ids=lambda c: c.name)
def test_detection_metrics_on_the_shared_cases(case: DetectionCase) -> None:
    from sklearn.metrics import auc, precision_recall_curve

    y = np.r_[np.ones(case.inside.numel()), np.zeros(case.outside.numel())]
    s = np.r_[case.inside.numpy(), case.outside.numpy()]
    got = detection_metrics(case.inside, case.outside)
    assert got["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert got["aupr_in"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert got["aupr_out"] == pytest.approx(average_precision_score(1 - y, -s), abs=1e-12)
    fpr, tpr, _ = sk_roc_curve(y, s, drop_intermediate=False)
    assert got["fpr95"] == pytest.approx(fpr[np.argmax(tpr >= 0.95)], abs=1e-12)
    # OpenOOD's auc_and_fpr_recall, written out with scikit-learn as OpenOOD computes it
    ood = 1 - y
    fpr_o, tpr_o, _ = sk_roc_curve(ood, -s)
    p_in, r_in, _ = precision_recall_curve(y, s)
    p_out, r_out, _ = precision_recall_curve(ood, -s)
    assert got["openood_fpr95"] == pytest.approx(fpr_o[np.argmax(tpr_o >= 0.95)], abs=1e-12)
    assert got["openood_aupr_in"] == pytest.approx(auc(r_in, p_in), abs=1e-12)
    assert got["openood_aupr_out"] == pytest.approx(auc(r_out, p_out), abs=1e-12)
    assert auc(fpr_o, tpr_o) == pytest.approx(got["auroc"], abs=1e-12)  # AUROC either way


def test_openood_columns_hand_worked() -> None:
    inside = torch.tensor([3.0, 2.0])
    outside = torch.tensor([2.5, 1.0])
    # OOD positive, score -s: ranks 1.0 (ood), 2.0 (id), 2.5 (ood), 3.0 (id) by -s descending.
    # flagging the top 1: 1 of 2 OOD caught; top 3: 2 of 2 caught and 1 of 2 ID flagged
    got = openood_metrics(inside, outside)
    assert got["openood_fpr95"] == pytest.approx(0.5)
    # PR points of the ID positives: (0, 1), (1/2, 1), (1/2, 1/2), (1, 2/3), (1, 1/2):
    # trapezoids 1/2 * (1 + 1) / 2 + 1/2 * (1/2 + 2/3) / 2 = 0.5 + 0.29167
    assert got["openood_aupr_in"] == pytest.approx(0.5 + 0.5 * (0.5 + 2 / 3) / 2)
    # average precision of the same points is 1/2 * 1 + 1/2 * 2/3: the conventions differ
    assert average_precision(inside, outside) == pytest.approx(0.5 + 1 / 3)

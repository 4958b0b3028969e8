"""Statistical comparison of methods over (dataset, architecture) blocks.

Follows Demšar (2006) and Benavoli et al. (2016/2017): the unit of comparison is a block with the
seeds averaged first; Friedman with the Iman–Davenport correction, mean ranks and the Nemenyi
critical difference; Wilcoxon signed-rank against a control with Holm's correction; Cliff's delta
and Cohen's d; the Bayesian signed-rank test with a region of practical equivalence. With too few
blocks the seeds are compared within each block (Welch's t-test, Holm within the block).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import baycomp
import numpy as np
import pandas as pd
import scikit_posthocs as sp
from numpy.typing import ArrayLike
from scipy import stats
from statsmodels.stats.multitest import multipletests  # a dependency of scikit-posthocs

from podbench.reports.records import GEOMETRY_KEYS, MetricInfo, ResultsData

__all__ = [
    "MIN_BLOCKS",
    "analyse",
    "bayesian_signed_rank",
    "cliffs_delta",
    "cohens_d",
    "describe",
    "epochs_to_fraction",
    "friedman_iman_davenport",
    "holm",
    "mean_ranks",
    "nemenyi_critical_difference",
    "welch_vs_control",
    "wilcoxon_vs_control",
]

# Demšar (2006): with fewer data sets the Friedman/Wilcoxon p-values cannot reach usual levels.
MIN_BLOCKS = 5
BAYES_SAMPLES = 20000
BAYES_SEED = 0


def _num(x: Any) -> float | None:
    """A finite float or None (stats.json never holds NaN or infinity)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def describe(values: Sequence[float], confidence: float = 0.95) -> dict[str, Any]:
    """Mean, sample standard deviation and the Student-t confidence interval of the mean.

    Args:
        values: the observations (one per seed).
        confidence: the interval's coverage.

    Returns:
        ``{"n", "mean", "std", "ci_low", "ci_high"}``; std and the interval are None for n < 2.
    """
    x = np.asarray(values, dtype=float)
    n = int(x.size)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "ci_low": None, "ci_high": None}
    mean = float(x.mean())
    if n < 2:
        return {"n": 1, "mean": mean, "std": None, "ci_low": None, "ci_high": None}
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half}


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error control)."""
    if len(pvalues) == 0:
        return []
    return [float(p) for p in multipletests(np.asarray(pvalues, float), method="holm")[1]]


def cliffs_delta(x: ArrayLike, y: ArrayLike) -> float:
    """Cliff's delta: P(X > Y) - P(X < Y) over all pairs, in [-1, 1]."""
    a = np.asarray(x, float)[:, None]
    b = np.asarray(y, float)[None, :]
    return float(np.sign(a - b).mean())


def cohens_d(x: ArrayLike, y: ArrayLike) -> float | None:
    """Cohen's d of two independent samples with the pooled standard deviation."""
    a, b = np.asarray(x, float), np.asarray(y, float)
    if a.size < 2 or b.size < 2:
        return None
    pooled = ((a.size - 1) * a.var(ddof=1) + (b.size - 1) * b.var(ddof=1)) / (a.size + b.size - 2)
    if pooled <= 0:
        return None
    return float((a.mean() - b.mean()) / math.sqrt(pooled))


def mean_ranks(table: pd.DataFrame, higher_is_better: bool = True) -> pd.Series:
    """Average rank of each column over the rows (1 = best; ties share the average rank)."""
    oriented = -table.to_numpy(float) if higher_is_better else table.to_numpy(float)
    ranks = stats.rankdata(oriented, axis=1, method="average")
    return pd.Series(ranks.mean(axis=0), index=table.columns)


def friedman_iman_davenport(table: pd.DataFrame) -> dict[str, Any]:
    """Friedman's test over blocks (rows) and methods (columns), with Iman–Davenport's F.

    Returns:
        ``chi2`` and ``chi2_p`` (scipy's Friedman), ``F`` = (N-1)χ²/(N(k-1)-χ²) with
        ``df1`` = k-1, ``df2`` = (k-1)(N-1) and its ``p``; None where undefined.
    """
    n, k = table.shape
    columns = [table[c].to_numpy(float) for c in table.columns]
    chi2, chi2_p = stats.friedmanchisquare(*columns)
    out: dict[str, Any] = {
        "n_blocks": n,
        "k_methods": k,
        "chi2": _num(chi2),
        "chi2_p": _num(chi2_p),
        "F": None,
        "df1": k - 1,
        "df2": (k - 1) * (n - 1),
        "p": None,
    }
    if out["chi2"] is None:  # every block tied throughout: no test possible
        return out
    denom = n * (k - 1) - chi2
    if denom <= 0:  # complete agreement of the rankings: F is infinite, p is 0
        out["F"], out["p"], out["F_infinite"] = None, 0.0, True
        return out
    f_stat = (n - 1) * chi2 / denom
    out["F"] = float(f_stat)
    out["p"] = float(stats.f.sf(f_stat, k - 1, (k - 1) * (n - 1)))
    return out


def nemenyi_critical_difference(k: int, n: int, alpha: float = 0.05) -> dict[str, float]:
    """Nemenyi's critical difference of mean ranks: CD = q_α √(k(k+1)/(6N)).

    q_α is the studentized range quantile for k groups and infinite df divided by √2.
    """
    q_alpha = float(stats.studentized_range.ppf(1 - alpha, k, np.inf)) / math.sqrt(2)
    return {"q_alpha": q_alpha, "cd": q_alpha * math.sqrt(k * (k + 1) / (6 * n))}


def wilcoxon_vs_control(
    table: pd.DataFrame, control: str, alpha: float = 0.05
) -> list[dict[str, Any]]:
    """Two-sided Wilcoxon signed-rank of each method against the control, Holm-corrected.

    Args:
        table: blocks × methods, one value per block (seeds averaged).
        control: the column every other column is compared with.
        alpha: family-wise level for the ``significant`` flag.
    """
    results: list[dict[str, Any]] = []
    ctrl = table[control].to_numpy(float)
    for label in table.columns:
        if label == control:
            continue
        x = table[label].to_numpy(float)
        diff = x - ctrl
        row: dict[str, Any] = {
            "label": label,
            "n_blocks": int(diff.size),
            "mean_diff": float(diff.mean()),
            "median_diff": float(np.median(diff)),
            "wins": int((diff > 0).sum()),
            "ties": int((diff == 0).sum()),
            "losses": int((diff < 0).sum()),
            "cliffs_delta": cliffs_delta(x, ctrl),
            "statistic": None,
            "p": None,
            "p_holm": None,
            "significant": False,
            "note": None,
        }
        if np.all(diff == 0):
            row["note"] = "identical to the control on every block: no test"
        else:
            res = stats.wilcoxon(x, ctrl, alternative="two-sided")
            row["statistic"], row["p"] = _num(res.statistic), _num(res.pvalue)
        results.append(row)
    return _with_holm(results, alpha)



def _with_holm(results: list[dict[str, Any]], alpha: float) -> list[dict[str, Any]]:
    """Holm-adjust the p-values of the rows that have one (rows without a test stay as they are)."""
    tested = [r for r in results if r["p"] is not None]
    for r, p_adj in zip(tested, holm([r["p"] for r in tested]), strict=True):
        r["p_holm"] = p_adj
        r["significant"] = p_adj < alpha
    return results

def bayesian_signed_rank(
    control: ArrayLike,
    other: ArrayLike,
    rope: float,
    *,
    nsamples: int = BAYES_SAMPLES,
    seed: int = BAYES_SEED,
) -> dict[str, float]:
    """Benavoli's Bayesian signed-rank test (baycomp) of ``other`` against ``control``.

    Values are oriented so that higher is better. Returns the posterior probabilities that the
    control is practically better, that the two are practically equivalent (difference within
    ±rope), and that ``other`` is practically better.
    """
    x, y = np.asarray(control, float), np.asarray(other, float)
    if rope > 0:
        left, eq, right = baycomp.SignedRankTest.probs(
            x, y, rope, nsamples=nsamples, random_state=seed
        )
    else:
        left, right = baycomp.SignedRankTest.probs(x, y, 0, nsamples=nsamples, random_state=seed)
        eq = 0.0
    return {
        "p_control_better": float(left),
        "p_equivalent": float(eq),
        "p_other_better": float(right),
    }


def welch_vs_control(
    groups: Mapping[str, Sequence[float]], control: str, alpha: float = 0.05
) -> list[dict[str, Any]]:
    """Welch's t-test of each method's seeds against the control's, Holm within the family.

    A comparison without at least two values on each side, or without any variation, gets no
    p-value and a note saying why.
    """
    ctrl = np.asarray(groups[control], float)
    results: list[dict[str, Any]] = []
    for label, vals in groups.items():
        if label == control:
            continue
        x = np.asarray(vals, float)
        row: dict[str, Any] = {
            "label": label,
            "n": int(x.size),
            "n_control": int(ctrl.size),
            "mean_diff": float(x.mean() - ctrl.mean()) if x.size and ctrl.size else None,
            "cohens_d": cohens_d(x, ctrl),
            "cliffs_delta": cliffs_delta(x, ctrl) if x.size and ctrl.size else None,
            "t": None,
            "df": None,
            "p": None,
            "p_holm": None,
            "significant": False,
            "note": None,
        }
        if x.size < 2 or ctrl.size < 2:
            row["note"] = "needs at least 2 completed seeds on each side"
        elif x.var(ddof=1) == 0 and ctrl.var(ddof=1) == 0:
            row["note"] = "no variation across seeds on either side"
        else:
            with warnings.catch_warnings():
                # scipy warns when one side has no spread; Welch's test is still defined then
                warnings.simplefilter("ignore", RuntimeWarning)
                res = stats.ttest_ind(x, ctrl, equal_var=False)
            row["t"], row["p"] = _num(res.statistic), _num(res.pvalue)
            row["df"] = _num(getattr(res, "df", None))
        results.append(row)
    return _with_holm(results, alpha)


def epochs_to_fraction(
    test_acc: Sequence[float], final: float, fraction: float = 0.95
) -> int | None:
    """Epochs (counted from 1) until test accuracy first reaches ``fraction`` of ``final``."""
    target = fraction * final
    for i, acc in enumerate(test_acc):
        if acc is not None and math.isfinite(acc) and acc >= target:
            return i + 1
    return None


def _fmt_p(p: float | None) -> str:
    if p is None:
        return "no p-value"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def _block_key(dataset: str, arch: str) -> str:
    return f"{dataset} / {arch}"


def analyse(
    data: ResultsData,
    *,
    control: str,
    metric: MetricInfo,
    rope: float,
    alpha: float,
) -> dict[str, Any]:
    """Every statistic of the report as one JSON-ready dict (written as stats.json).

    Args:
        data: the results directory's tables.
        control: the label every method is compared with (must have runs).
        metric: the compared metric.
        rope: half-width of the region of practical equivalence, in the metric's report unit.
        alpha: significance level.
    """
    runs = data.runs
    labels = sorted(runs["label"].unique())
    if control in labels:
        labels = [control] + [lab for lab in labels if lab != control]
    blocks = sorted({(d, a) for d, a in zip(runs["dataset"], runs["arch"], strict=True)})
    sign = 1.0 if metric.higher_is_better else -1.0
    ok = runs[(runs["status"] == "completed") & runs[metric.name].notna()].copy()
    ok["value"] = ok[metric.name] * metric.scale

    # Runs that did not complete (or completed without the metric) are listed, never dropped.
    not_used = runs[~runs.index.isin(ok.index)]
    excluded = [
        {
            "run_id": r.run_id,
            "label": r.label,
            "block": _block_key(r.dataset, r.arch),
            "seed": r.seed,
            "status": r.status,
            "error_type": r.error_type,
            "error_message": r.error_message,
            "error_epoch": None if pd.isna(r.error_epoch) else int(r.error_epoch),
            "reason": (
                f"run {r.status}" if r.status != "completed" else f"no {metric.name} recorded"
            ),
        }
        for r in not_used.itertuples()
    ]

    per_block: list[dict[str, Any]] = []
    within: list[dict[str, Any]] = []
    for dataset, arch in blocks:
        in_block = runs[(runs["dataset"] == dataset) & (runs["arch"] == arch)]
        ok_block = ok[(ok["dataset"] == dataset) & (ok["arch"] == arch)]
        groups: dict[str, list[float]] = {}
        for label in labels:
            lab_runs = in_block[in_block["label"] == label]
            if lab_runs.empty:
                continue
            vals = ok_block.loc[ok_block["label"] == label].sort_values("seed")["value"].tolist()
            groups[label] = vals
            desc = describe(vals)
            per_block.append(
                {
                    "dataset": dataset,
                    "arch": arch,
                    "block": _block_key(dataset, arch),
                    "label": label,
                    "n_runs": int(len(lab_runs)),
                    "n_completed": int((lab_runs["status"] == "completed").sum()),
                    "n_diverged": int((lab_runs["status"] == "diverged").sum()),
                    "n_failed": int((lab_runs["status"] == "failed").sum()),
                    "seeds": sorted(int(s) for s in lab_runs["seed"]),
                    "values": vals,
                    **desc,
                }
            )
        family = {lab: v for lab, v in groups.items() if v}
        if control in family and len(family) > 1:
            oriented = {lab: [sign * x for x in v] for lab, v in family.items()}
            comps = welch_vs_control(oriented, control, alpha)
            for c in comps:  # report differences in the metric's own direction (method - control)
                if c["mean_diff"] is not None:
                    c["mean_diff"] *= sign
                for key in ("cohens_d", "cliffs_delta"):  # effect sizes share that direction
                    if c[key] is not None:
                        c[key] *= sign
                c["better"] = None if c["mean_diff"] is None else (sign * c["mean_diff"] > 0)
            note = None
        else:
            comps = []
            note = (
                f"the control {control!r} has no completed run in this block"
                if control not in family
                else "only the control has completed runs in this block"
            )
        within.append(
            {
                "block": _block_key(dataset, arch),
                "dataset": dataset,
                "arch": arch,
                "test": "Welch's t-test (two-sided) against the control, Holm within the block",
                "comparisons": comps,
                "note": note,
            }
        )

    # Across blocks: seeds averaged first; only blocks where every method has a completed run.
    means = ok.groupby(["dataset", "arch", "label"])["value"].mean().unstack("label")
    means = means.reindex(columns=[lab for lab in labels if lab in means.columns])
    # Demšar's tests need a complete blocks × methods table: drop incomplete blocks if enough
    # remain, else drop the methods missing somewhere (both choices are reported).
    complete = means.dropna(axis=0, how="any")
    dropped_methods: list[str] = []
    if len(complete) < MIN_BLOCKS:
        by_method = means.dropna(axis=1, how="any")
        if (
            len(by_method) >= MIN_BLOCKS
            and by_method.shape[1] >= 2
            and control in by_method.columns
        ):
            dropped_methods = [lab for lab in means.columns if lab not in by_method.columns]
            complete = by_method
    methods_in_table = [lab for lab in labels if lab in complete.columns]
    incomplete_blocks = [
        {
            "block": _block_key(d, a),
            "missing": [
                lab
                for lab in labels
                if (d, a) not in means.index
                or lab not in means.columns
                or pd.isna(means.loc[(d, a), lab])
            ],
        }
        for d, a in blocks
        if (d, a) not in complete.index
    ]
    n_blocks, k = len(complete), len(methods_in_table)
    across: dict[str, Any] = {
        "n_blocks": n_blocks,
        "k_methods": k,
        "methods": methods_in_table,
        "blocks": [_block_key(d, a) for d, a in complete.index],
        "block_means": {
            _block_key(d, a): {lab: float(complete.loc[(d, a), lab]) for lab in methods_in_table}
            for d, a in complete.index
        },
        "incomplete_blocks": incomplete_blocks,
        "methods_left_out": [
            {
                "label": lab,
                "blocks_without_completed_run": [
                    _block_key(d, a)
                    for d, a in blocks
                    if (d, a) not in means.index or pd.isna(means.loc[(d, a), lab])
                ],
            }
            for lab in dropped_methods
        ],
        "friedman": None,
        "mean_ranks": None,
        "nemenyi": None,
        "wilcoxon": [],
        "bayesian": [],
    }
    control_ok = control in methods_in_table
    if n_blocks >= MIN_BLOCKS and k >= 2 and control_ok:
        primary = "across-blocks"
        reason = (
            f"{n_blocks} blocks (dataset × architecture) have a completed run of every method, "
            f"at least the {MIN_BLOCKS} that tests across blocks need (Demšar 2006); seeds are "
            "averaged within each block first."
        )
        oriented = complete[methods_in_table] * sign
        ranks = mean_ranks(oriented, higher_is_better=True)
        across["mean_ranks"] = {lab: float(ranks[lab]) for lab in methods_in_table}
        if k >= 3:
            across["friedman"] = friedman_iman_davenport(oriented)
            cd = nemenyi_critical_difference(k, n_blocks, alpha)
            pmat = sp.posthoc_nemenyi_friedman(oriented.to_numpy(float))
            pmat.index = pmat.columns = methods_in_table
            across["nemenyi"] = {
                **cd,
                "alpha": alpha,
                "p_values": {
                    a: {b: float(pmat.loc[a, b]) for b in methods_in_table}
                    for a in methods_in_table
                },
            }
        across["wilcoxon"] = wilcoxon_vs_control(oriented, control, alpha)
        for w in across["wilcoxon"]:
            w["mean_diff"] *= sign
            w["median_diff"] *= sign
            w["cliffs_delta"] *= sign
            w["better"] = sign * w["mean_diff"] > 0
            x, c = complete[w["label"]].to_numpy(float), complete[control].to_numpy(float)
            w["cohens_dz"] = (
                float((x - c).mean() / (x - c).std(ddof=1)) if (x - c).std(ddof=1) > 0 else None
            )
        for lab in methods_in_table:
            if lab == control:
                continue
            bayes = bayesian_signed_rank(oriented[control], oriented[lab], rope)
            across["bayesian"].append({"label": lab, "rope": rope, **bayes})
    else:
        primary = "within-blocks"
        if not control_ok:
            why = f"the control {control!r} has no completed run in some block"
        elif k < 2:
            why = "fewer than two methods have completed runs in the same blocks"
        else:
            blocks_txt = (
                "1 block (dataset × architecture) has"
                if n_blocks == 1
                else (f"{n_blocks} blocks (dataset × architecture) have")
            )
            why = (
                f"only {blocks_txt} a completed run of every method, and tests across blocks "
                f"need at least {MIN_BLOCKS} to mean anything (Demšar 2006)"
            )
        reason = (
            f"{why[0].upper()}{why[1:]}; so the seeds are compared within each block instead "
            "(Welch's t-test against the control, which does not assume equal variances, with "
            "Holm's correction within the block). No test across blocks is reported."
        )

    # Convergence: epochs to reach 95% of the run's final test accuracy.
    convergence = []
    hist = data.history
    order = {lab: i for i, lab in enumerate(labels)}
    ok_sorted = ok.assign(_order=ok["label"].map(order)).sort_values(
        ["dataset", "arch", "_order", "seed"]
    )
    for r in ok_sorted.itertuples():
        h = hist[hist["run_id"] == r.run_id].sort_values("epoch")
        final = r.final_test_acc if pd.notna(r.final_test_acc) else None
        if h.empty or final is None:
            continue
        convergence.append(
            {
                "run_id": r.run_id,
                "label": r.label,
                "block": _block_key(r.dataset, r.arch),
                "seed": int(r.seed),
                "epochs_to_95pct": epochs_to_fraction(h["test_acc"].tolist(), float(final)),
                "epochs": int(len(h)),
            }
        )

    geometry = []
    completed = runs[runs["status"] == "completed"]
    for (dataset, arch, label), g in completed.groupby(["dataset", "arch", "label"]):
        entry: dict[str, Any] = {"block": _block_key(dataset, arch), "label": label}
        for key in GEOMETRY_KEYS:
            vals = g[f"geometry.{key}"].dropna()
            entry[key] = float(vals.mean()) if len(vals) else None
        geometry.append(entry)
    geometry.sort(key=lambda e: (e["block"], order[e["label"]]))

    counts = {
        status: int((runs["status"] == status).sum())
        for status in ("completed", "diverged", "failed")
    }
    return {
        "metric": {
            "name": metric.name,
            "title": metric.title,
            "unit": metric.unit,
            "scale": metric.scale,
            "higher_is_better": metric.higher_is_better,
        },
        "control": control,
        "alpha": alpha,
        "rope": rope,
        "labels": labels,
        "blocks": [_block_key(d, a) for d, a in blocks],
        "counts": {"runs": int(len(runs)), **counts, "used": int(len(ok))},
        "primary_analysis": primary,
        "primary_reason": reason,
        "per_block": per_block,
        "within_blocks": within,
        "across_blocks": across,
        "excluded_runs": excluded,
        "convergence": convergence,
        "geometry": geometry,
        "bayes_settings": {"nsamples": BAYES_SAMPLES, "random_state": BAYES_SEED, "prior": 0.5},
    }


def verdicts(result: dict[str, Any]) -> list[str]:
    """The tests and their outcomes in plain words, one sentence each."""
    out: list[str] = []
    metric = result["metric"]
    unit = metric["unit"]
    dunit = "points" if unit == "%" else unit  # differences of percentages are points
    ctrl = result["control"]
    alpha = result["alpha"]
    across = result["across_blocks"]
    if result["primary_analysis"] == "across-blocks":
        fr = across["friedman"]
        if fr is not None:
            if fr["p"] is None:
                out.append(
                    "Friedman's test could not be computed: every block ranks all methods equal."
                )
            else:
                f_txt = (
                    "F = ∞"
                    if fr.get("F_infinite")
                    else f"F({fr['df1']}, {fr['df2']}) = {fr['F']:.3f}"
                )
                decision = "differ" if fr["p"] < alpha else "cannot be told apart"
                out.append(
                    f"Friedman's test with the Iman–Davenport correction over {fr['n_blocks']} blocks "
                    f"and {fr['k_methods']} methods: {f_txt}, {_fmt_p(fr['p'])}; at α = {alpha} the "
                    f"methods {decision} overall."
                )
        if across["nemenyi"] is not None:
            out.append(
                f"Nemenyi's critical difference of mean ranks at α = {alpha} is "
                f"{across['nemenyi']['cd']:.3f} (q_α = {across['nemenyi']['q_alpha']:.3f}); methods "
                "whose mean ranks differ by less are not significantly different."
            )
        for w in across["wilcoxon"]:
            direction = "better" if w["better"] else "worse"
            if w["p_holm"] is None:
                out.append(f"{w['label']} vs {ctrl}: {w['note']}.")
                continue
            sig = (
                f"significantly {direction} than {ctrl}"
                if w["significant"]
                else f"not significantly different from {ctrl}"
            )
            out.append(
                f"{w['label']} vs {ctrl} (Wilcoxon signed-rank over {w['n_blocks']} blocks, Holm): "
                f"mean difference {w['mean_diff']:+.2f} {dunit}, {w['wins']} wins / {w['ties']} ties / "
                f"{w['losses']} losses, Holm-adjusted {_fmt_p(w['p_holm'])}: {sig}; Cliff's delta "
                f"{w['cliffs_delta']:+.2f}."
            )
        for b in across["bayesian"]:
            probs = (b["p_other_better"], b["p_equivalent"], b["p_control_better"])
            words = (
                f"{b['label']} is practically better",
                "they are practically equivalent",
                f"{ctrl} is practically better",
            )
            best = int(np.argmax(probs))
            conclusion = (
                f"{words[best]} with probability {probs[best]:.3f}"
                if probs[best] >= 0.95
                else "no conclusion reaches probability 0.95"
            )
            out.append(
                f"Bayesian signed-rank, {b['label']} vs {ctrl} (ROPE ±{b['rope']:g} {dunit}): "
                f"P({b['label']} better) = {probs[0]:.3f}, P(equivalent) = {probs[1]:.3f}, "
                f"P({ctrl} better) = {probs[2]:.3f}; {conclusion}."
            )
    else:
        for w in result["within_blocks"]:
            if w["note"]:
                out.append(f"{w['block']}: no comparison, {w['note']}.")
                continue
            for c in w["comparisons"]:
                if c["p_holm"] is None:
                    out.append(f"{w['block']}, {c['label']} vs {ctrl}: no p-value, {c['note']}.")
                    continue
                direction = "better" if c["better"] else "worse"
                sig = (
                    f"significantly {direction} than {ctrl}"
                    if c["significant"]
                    else f"not significantly different from {ctrl}"
                )
                d_txt = f", Cohen's d {c['cohens_d']:+.2f}" if c["cohens_d"] is not None else ""
                out.append(
                    f"{w['block']}, {c['label']} vs {ctrl} (Welch's t-test over {c['n']} and "
                    f"{c['n_control']} seeds, Holm): mean difference {c['mean_diff']:+.2f} {dunit}, "
                    f"Holm-adjusted {_fmt_p(c['p_holm'])}: {sig}{d_txt}."
                )
    return out

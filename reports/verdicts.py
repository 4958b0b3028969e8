"""The report's prose: which analysis is primary and why, and each outcome in words.

Rendered into report.html, report.tex and stats.json; the numbers come from
:class:`podbench.reports.analysis.Analysis`, the words from here only. A sentence never says
"not significantly different" where significance could not be attained, and every sentence that
rests on runs still improving when training stopped says so.
"""

from __future__ import annotations

from collections.abc import Iterable

from podbench.convergence import STILL_IMPROVING_FRACTION, STILL_IMPROVING_THRESHOLD
from podbench.reports.analysis import AcrossBlocks, Analysis, BayesianComparison, WithinBlock
from podbench.reports.stats import SignedRankComparison

__all__ = [
    "across_power_sentence",
    "convergence_sentences",
    "dataset_sentences",
    "difference_unit",
    "failure_sentence",
    "improving_sentence",
    "metric_caveat",
    "power_sentence",
    "primary_reason",
    "variance_sentence",
    "verdicts",
]

EVIDENCE = 0.95  # posterior probability a Bayesian conclusion needs


def difference_unit(unit: str) -> str:
    """The unit of a difference of two values: differences of percentages are points."""
    return "points" if unit == "%" else unit


def _p(p: float | None) -> str:
    if p is None:
        return "no p-value"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def _sentence(text: str) -> str:
    return f"{text[0].upper()}{text[1:]}"


def _improving_counts(
    result: Analysis, labels: Iterable[str], blocks: Iterable[str]
) -> dict[str, int]:
    """The runs of labels in blocks still improving when training stopped, by label (> 0 only)."""
    labels, blocks = set(labels), set(blocks)
    counts: dict[str, int] = {}
    for s in result.per_block:
        if s.label in labels and s.block in blocks:
            counts[s.label] = counts.get(s.label, 0) + sum(s.still_improving)
    return {lab: n for lab, n in counts.items() if n}


def _by_label(counts: dict[str, int]) -> str:
    """'arcface: 2, cosface: 3'."""
    return ", ".join(f"{lab}: {n}" for lab, n in counts.items())


def _still_improving(result: Analysis, labels: Iterable[str], blocks: Iterable[str]) -> str:
    """' It rests on n run(s) still improving ...' for the runs of labels in blocks, or ''."""
    counts = _improving_counts(result, labels, blocks)
    if not counts:
        return ""
    return (
        f" It rests on {sum(counts.values())} run(s) still improving when training stopped "
        f"({_by_label(counts)}), so it may change with longer training."
    )


def improving_sentence(result: Analysis) -> str:
    """How many of the runs that enter were still improving when training stopped (first screen)."""
    if not result.still_improving_recorded:
        return (
            "These records do not say whether runs were still improving when training stopped "
            "(they predate the flag), so no verdict here can be said to rest on converged runs."
        )
    rule = (
        f"held-out accuracy up more than {STILL_IMPROVING_THRESHOLD * 100:g} point over the "
        f"last {STILL_IMPROVING_FRACTION:.0%} of epochs, at least the last one"
    )
    n, used = result.counts.still_improving, result.counts.used
    if n == 0:
        return f"None of the {used} runs that enter was still improving when training stopped ({rule})."
    parts = _by_label(_improving_counts(result, result.labels, result.blocks))
    return (
        f"{n} of the {used} runs that enter were still improving when training stopped ({rule}; "
        f"{parts}), marked † below: every verdict that rests on one says so, and it may change "
        "with longer training."
    )


def primary_reason(result: Analysis) -> str:
    """Why the primary analysis is across or within blocks, with the attainable p."""
    b = result.primary_basis
    floor = (
        f"with {b.n_blocks} blocks the exact two-sided Wilcoxon p cannot go below "
        f"2/2^{b.n_blocks} = {2.0 ** (1 - b.n_blocks):.4g}, so the smallest Holm-adjusted p "
        f"attainable over the {b.n_comparisons} comparison(s) against {result.control} is "
        f"{b.min_p:.4g}"
        if b.n_blocks
        else "no block has a value of every method"
    )
    if b.why == "attainable":
        return (
            f"{b.n_blocks} blocks (dataset × architecture) have a value of every method: "
            f"{floor} < α = {b.alpha}, and at least Demšar's {b.min_blocks} blocks; seeds are "
            "averaged within each block first. That floor holds without zero differences: each "
            "block where a method ties the control raises it, so every comparison below states "
            "its own smallest attainable p."
        )
    if b.why == "control-missing":
        why = f"the control {result.control!r} has no value in some block"
    elif b.why == "too-few-methods":
        why = "fewer than two methods have values in the same blocks"
    else:
        why = (
            f"{floor}, and tests across blocks need one below α = {b.alpha} (and at least "
            f"Demšar's {b.min_blocks} blocks): at least {b.blocks_needed} blocks would be "
            "needed"
        )
    return (
        f"{_sentence(why)}. So the seeds are compared within each block instead "
        "(Welch's t-test against the control, which does not assume equal variances, with "
        "Holm's correction within the block). No test across blocks is reported."
    )


def failure_sentence(result: Analysis) -> str:
    """How diverged and failed runs were counted."""
    f, counts = result.failure_handling, result.counts
    n = counts.diverged + counts.failed
    if f.policy == "exclude":
        return (
            f"Policy for diverged and failed runs: exclude (--failed exclude). The {n} such "
            "run(s) are left out of means, tests and profiles, so a method is compared only where "
            "it survived, which favours unstable methods."
        )
    basis = {
        "chance": "chance accuracy 1/K of its block",
        "accuracy floor": (
            "accuracy 0 (the records do not carry the number of classes K, so chance 1/K is "
            "unknown)"
        ),
        "worst recorded": "the worst value recorded in its block",
    }[f.basis]
    return (
        f"Policy for diverged and failed runs: worst (the default; --failed exclude leaves them "
        f"out). Each of the {n} such run(s) enters the means and tests with {basis}, so it ranks "
        "last in its block, and never reaches the convergence target. No block is dropped for "
        "them."
    )


def _friedman(result: Analysis, across: AcrossBlocks, alpha: float) -> list[str]:
    fr = across.friedman
    if fr is None:
        return []
    if fr.p is None:
        return ["Friedman's test could not be computed: every block ranks all methods equal."]
    f_txt = "F = ∞" if fr.F_infinite else f"F({fr.df1}, {fr.df2}) = {fr.F:.3f}"
    decision = "differ" if fr.p < alpha else "cannot be told apart"
    return [
        f"Friedman's test with the Iman–Davenport correction over {fr.n_blocks} blocks "
        f"and {fr.k_methods} methods: {f_txt}, {_p(fr.p)}; at α = {alpha} the "
        f"methods {decision} overall." + _still_improving(result, across.methods, across.blocks)
    ]


def _nemenyi(result: Analysis, across: AcrossBlocks, alpha: float) -> list[str]:
    nem = across.nemenyi
    if across.nemenyi_gated:
        return [
            "Nemenyi's post-hoc test and the critical-difference diagram are left out: they "
            "are only meaningful after Friedman's test rejects (Demšar 2006, section 3.2.2), "
            f"and it did not at α = {alpha}. The mean ranks above are descriptive."
            + _still_improving(result, across.methods, across.blocks)
        ]
    if nem is None:
        return []
    rising = _still_improving(result, across.methods, across.blocks)
    text = (
        f"Nemenyi's critical difference of mean ranks at α = {alpha} is "
        f"{nem.cd:.3f} (q_α = {nem.q_alpha:.3f}); "
    )
    if nem.cd >= across.k_methods - 1:  # mean ranks of k methods differ by at most k - 1
        return [
            text + f"mean ranks of {across.k_methods} methods differ by at most "
            f"{across.k_methods - 1}, so with {across.n_blocks} blocks no pair could be "
            "separated: this post-hoc test cannot decide anything here." + rising
        ]
    return [
        text + "methods whose mean ranks differ by less are not significantly different." + rising
    ]


def _floor_text(w: SignedRankComparison) -> str:
    """'smallest attainable Holm-adjusted p 0.047 (1 zero difference: raw p >= 0.0156)'."""
    zeros = f"{w.ties} zero difference(s)" if w.ties else "no zero difference"
    return (
        f"smallest attainable Holm-adjusted p {w.min_p_holm:.3f}; {zeros}, so its raw p cannot "
        f"go below {w.min_p:.3g}"
    )


def _wilcoxon(result: Analysis, w: SignedRankComparison, dunit: str, over: str = "blocks") -> str:
    ctrl = result.control
    rising = _still_improving(result, [w.label, ctrl], result.across_blocks.blocks)
    if w.p_holm is None:
        return f"{w.label} vs {ctrl}: {w.note}.{rising}"
    direction = "better" if w.better else "worse"
    if w.significant:
        sig = f"significantly {direction} than {ctrl}"
    elif w.min_p_holm >= result.alpha:
        sig = f"significance was unattainable for this comparison ({_floor_text(w)})"
    else:
        sig = f"not significantly different from {ctrl} ({_floor_text(w)})"
    rb = "–" if w.rank_biserial is None else f"{w.rank_biserial:+.2f}"
    dz = "" if w.cohens_dz is None else f", Cohen's d_z {w.cohens_dz:+.2f}"
    return (
        f"{w.label} vs {ctrl} (Wilcoxon signed-rank over {w.n_blocks} {over}, zero differences "
        f"split, Holm): mean difference {w.mean_diff:+.2f} {dunit}, {w.wins} wins / {w.ties} "
        f"ties / {w.losses} losses, Holm-adjusted {_p(w.p_holm)}: {sig}; matched-pairs "
        f"rank-biserial correlation {rb}{dz}.{rising}"
    )


def _bayesian(result: Analysis, b: BayesianComparison, dunit: str) -> str:
    ctrl = result.control
    mass = (b.mass_other_better, b.mass_equivalent, b.mass_control_better)
    words = (
        f"{b.label} is practically better",
        "they are practically equivalent",
        f"{ctrl} is practically better",
    )
    best = max(range(3), key=lambda i: mass[i])
    conclusion = (
        f"{words[best]} (posterior mass {mass[best]:.3f} ≥ {EVIDENCE})"
        if mass[best] >= EVIDENCE
        else f"no region holds {EVIDENCE} of the posterior mass, so no conclusion"
    )
    return (
        f"Bayesian signed-rank, {b.label} vs {ctrl} (ROPE ±{b.rope:g} {dunit}): posterior mass "
        f"of the difference inside the ROPE {mass[1]:.3f}, above it ({b.label} better) "
        f"{mass[0]:.3f}, below it ({ctrl} better) {mass[2]:.3f}: {conclusion}. The ROPE is "
        f"the most probable region in {b.p_equivalent:.3f} of the posterior samples (baycomp's "
        f"P(equivalent); {b.label} better: {b.p_other_better:.3f}, {ctrl} better: "
        f"{b.p_control_better:.3f}), which is not the probability that the difference lies "
        "inside it." + _still_improving(result, [b.label, ctrl], result.across_blocks.blocks)
    )


def _equivalence(result: Analysis, dunit: str) -> list[str]:
    ctrl, out = result.control, []
    for e in result.across_blocks.equivalence:
        t = e.test
        rising = _still_improving(result, [e.label, ctrl], result.across_blocks.blocks)
        if t.p is None:
            out.append(
                f"TOST, {e.label} vs {ctrl}: not computed (no spread of block differences)."
                + rising
            )
            continue
        verdict = (
            f"equivalent within ±{t.bound:g} {dunit}"
            if t.equivalent
            else f"equivalence within ±{t.bound:g} {dunit} not shown"
        )
        out.append(
            f"TOST (paired t over blocks), {e.label} vs {ctrl}: mean difference "
            f"{t.mean_diff:+.2f} {dunit}, {100 * t.confidence:g}% interval "
            f"[{t.ci_low:+.2f}, {t.ci_high:+.2f}], {_p(t.p)}: {verdict} at α = {result.alpha}."
            + rising
        )
    return out


_RESAMPLED = {
    "runs": "stratified bootstrap (runs resampled within each block)",
    "blocks": "bootstrap over blocks (a block has fewer than 2 runs of a method)",
}


def _improvement(result: Analysis) -> list[str]:
    boot, ctrl = result.bootstrap, result.control
    return [
        f"Probability of improvement P({i.label} > {ctrl}) over {i.n_blocks} block(s) = "
        f"{i.estimate:.3f}, {100 * boot.confidence:g}% {_RESAMPLED[i.resampling]} interval "
        f"[{i.ci_low:.3f}, {i.ci_high:.3f}]"
        + (
            f": {i.label} is more likely better than not."
            if i.ci_low > 0.5
            else f": {ctrl} is more likely better than not."
            if i.ci_high < 0.5
            else ": the interval includes 0.5 (no preference)."
        )
        + _still_improving(result, [i.label, ctrl], boot.blocks)
        for i in boot.improvement
    ]


def variance_sentence(result: Analysis) -> str:
    """Which sources of variance the bootstrap intervals hold and which they hold fixed."""
    kinds = {i.resampling for i in result.bootstrap.improvement} | {
        q.resampling for q in result.bootstrap.iqm
    }
    parts = []
    if "runs" in kinds:
        parts.append(
            'resampled "runs": the seeds (training randomness) are resampled within each block '
            "and the blocks are held fixed"
        )
    if "blocks" in kinds:
        parts.append(
            'resampled "blocks": the blocks are resampled and the runs within each are held '
            "fixed (a block with one run has no seed variance to resample)"
        )
    if not parts:
        return ""
    return (
        "What the intervals hold: " + "; ".join(parts) + ". They do not include the sampling "
        "of the test sets (each block's test images are fixed), nor data sets or architectures "
        "other than these blocks."
    )


def _within(result: Analysis, w: WithinBlock, dunit: str) -> list[str]:
    ctrl = result.control
    if w.note:
        return [f"{w.block}: no comparison, {w.note}."]
    out = []
    for c in w.comparisons:
        rising = _still_improving(result, [c.label, ctrl], [w.block])
        if c.p_holm is None:
            out.append(f"{w.block}, {c.label} vs {ctrl}: no p-value, {c.note}.{rising}")
            continue
        direction = "better" if c.better else "worse"
        sig = (
            f"significantly {direction} than {ctrl}"
            if c.significant
            else f"not significantly different from {ctrl}"
        )
        d_txt = f", Cohen's d {c.cohens_d:+.2f}" if c.cohens_d is not None else ""
        out.append(
            f"{w.block}, {c.label} vs {ctrl} (Welch's t-test over {c.n} and "
            f"{c.n_control} seeds, Holm): mean difference {c.mean_diff:+.2f} {dunit}, "
            f"Holm-adjusted {_p(c.p_holm)}: {sig}{d_txt}.{rising}"
        )
    return out


def verdicts(result: Analysis) -> list[str]:
    """The primary analysis's tests and the probabilities of improvement, in plain words."""
    dunit = difference_unit(result.metric.unit)
    if result.primary_analysis != "across-blocks":
        tests = [s for w in result.within_blocks for s in _within(result, w, dunit)]
    else:
        across = result.across_blocks
        tests = (
            _friedman(result, across, result.alpha)
            + _nemenyi(result, across, result.alpha)
            + [_wilcoxon(result, w, dunit) for w in across.wilcoxon]
            + [_bayesian(result, b, dunit) for b in across.bayesian]
            + _equivalence(result, dunit)
        )
    return tests + _improvement(result)


def across_power_sentence(result: Analysis) -> str | None:
    """The across-block test's power for the planned differences (beside the seeds table, which
    is about tests within a block)."""
    pw, dunit = result.across_blocks.power, difference_unit(result.metric.unit)
    if pw is None or not pw.comparisons:
        return None
    parts = []
    for c in pw.comparisons:
        if c.sd is None:
            parts.append(f"{c.label}: no spread of block differences")
            continue
        at = ", ".join(f"{v:.3f} for {d} {dunit}" for d, v in c.power.items() if v is not None)
        parts.append(f"{c.label} (sd of block differences {c.sd:.2f} {dunit}): {at}")
    return (
        f"Power across blocks: the chance that Wilcoxon over the {pw.n_blocks} blocks rejects at "
        f"Holm's first-step level α/m = {pw.level:.4g}, if the method truly differed from "
        f"{result.control} by the stated mean, with block differences spread as observed: "
        + "; ".join(parts)
        + ". A non-significant result here is weak evidence of no difference where this is low."
    )


def dataset_sentences(result: Analysis) -> list[str]:
    """The analysis over datasets (blocks of one dataset averaged), beside the block-level one."""
    lev = result.across_blocks.by_dataset
    if lev is None:
        return []
    dunit = difference_unit(result.metric.unit)
    ranks = ", ".join(f"{lab} {r:.2f}" for lab, r in lev.mean_ranks.items())
    head = (
        f"Blocks that share a dataset share its test set and are not independent data sets, so "
        f"the blocks of each dataset are also averaged into one value: {lev.n_datasets} "
        f"datasets ({', '.join(lev.datasets)}); mean ranks over them {ranks}."
    )
    return [head] + [_wilcoxon(result, w, dunit, over="datasets") for w in lev.wilcoxon]


def metric_caveat(result: Analysis) -> str | None:
    """A caveat for metrics that pick an epoch by reading the test set."""
    if result.metric.name != "best_test_acc":
        return None
    return (
        "Caveat: best test accuracy takes, for each run, the epoch with the highest test "
        "accuracy, so the epoch is chosen on the test set itself: it is biased upwards, more "
        "for noisier and longer runs, and is no estimate of accuracy on new data. Compare "
        "final_test_acc (the default) for a verdict."
    )


def power_sentence(result: Analysis) -> str | None:
    """Seeds needed for the planned difference, and the smallest difference the seeds detect."""
    pw, dunit = result.seed_power, difference_unit(result.metric.unit)
    known = [b for b in pw.blocks if b.sd is not None]
    if not known:
        return None
    worst = max(known, key=lambda b: b.seeds_needed or 0)
    mdes = [b.min_detectable for b in known if b.min_detectable is not None]
    detect = (
        f"; the seeds run detect, at the same power, differences of {min(mdes):.2f} to "
        f"{max(mdes):.2f} {dunit}"
        if mdes
        else ""
    )
    return (
        f"Seeds and power: from the seed standard deviation of completed runs in each block, "
        f"detecting a difference of {pw.difference:g} {dunit} between two methods at "
        f"{100 * pw.power:g}% power (two-sided t-test, α = {pw.alpha}) needs up to "
        f"{pw.seeds_needed} seeds per method ({worst.block}, sd {worst.sd:.2f} {dunit})"
        f"{detect}."
    )


def convergence_sentences(result: Analysis) -> list[str]:
    """The target's definition and each method's benchmark score."""
    conv = result.convergence
    if not conv.targets:
        return []
    out = [
        f"Target per block: {conv.target_fraction:g} × the best method's median final test "
        "accuracy; a run's time to target is the epochs and wall seconds until its test "
        "accuracy first reaches it (never: infinite)"
        + (
            "; diverged and failed runs never reach it."
            if conv.policy == "worst"
            else "; diverged and failed runs are left out."
        )
    ]
    for measure in ("epochs", "seconds"):
        scores = [p for p in conv.profiles if p.measure == measure]
        if scores:
            top = max(round(p.score, 9) for p in scores)
            leaders = [p.label for p in scores if round(p.score, 9) == top]
            listing = ", ".join(f"{p.label} {p.score:.3f}" for p in scores)
            lead = (
                f"highest: {leaders[0]}"
                if len(leaders) == 1
                else "all tied"
                if len(leaders) == len(scores)
                else f"highest, tied: {', '.join(leaders)}"
            )
            out.append(
                f"AlgoPerf benchmark score in {measure} to target (r_max = {conv.r_max:g}, 1 = "
                f"fastest on every block): {listing}; {lead}."
            )
    return out

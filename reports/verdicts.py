"""The report's prose: which analysis is primary and why, and each test's outcome in words.

Rendered into report.html, report.tex and stats.json; the numbers come from
:class:`podbench.reports.analysis.Analysis`, the words from here only.
"""

from __future__ import annotations

from podbench.reports.analysis import AcrossBlocks, Analysis, BayesianComparison, WithinBlock
from podbench.reports.stats import SignedRankComparison

__all__ = ["difference_unit", "primary_reason", "verdicts"]

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


def primary_reason(result: Analysis) -> str:
    """Why the report's primary analysis is across or within blocks, in one or two sentences."""
    basis = result.primary_basis
    if basis.why == "enough-blocks":
        return (
            f"{basis.n_blocks} blocks (dataset × architecture) have a completed run of every "
            f"method, at least the {basis.min_blocks} that tests across blocks need (Demšar 2006); "
            "seeds are averaged within each block first."
        )
    if basis.why == "control-missing":
        why = f"the control {result.control!r} has no completed run in some block"
    elif basis.why == "too-few-methods":
        why = "fewer than two methods have completed runs in the same blocks"
    else:
        blocks_txt = (
            "1 block (dataset × architecture) has"
            if basis.n_blocks == 1
            else f"{basis.n_blocks} blocks (dataset × architecture) have"
        )
        why = (
            f"only {blocks_txt} a completed run of every method, and tests across blocks "
            f"need at least {basis.min_blocks} to mean anything (Demšar 2006)"
        )
    return (
        f"{_sentence(why)}; so the seeds are compared within each block instead "
        "(Welch's t-test against the control, which does not assume equal variances, with "
        "Holm's correction within the block). No test across blocks is reported."
    )


def _friedman(across: AcrossBlocks, alpha: float) -> list[str]:
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
        f"methods {decision} overall."
    ]


def _nemenyi(across: AcrossBlocks, alpha: float) -> list[str]:
    if across.nemenyi is None:
        return []
    return [
        f"Nemenyi's critical difference of mean ranks at α = {alpha} is "
        f"{across.nemenyi.cd:.3f} (q_α = {across.nemenyi.q_alpha:.3f}); methods "
        "whose mean ranks differ by less are not significantly different."
    ]


def _wilcoxon(w: SignedRankComparison, ctrl: str, dunit: str) -> str:
    if w.p_holm is None:
        return f"{w.label} vs {ctrl}: {w.note}."
    direction = "better" if w.better else "worse"
    sig = (
        f"significantly {direction} than {ctrl}"
        if w.significant
        else f"not significantly different from {ctrl}"
    )
    return (
        f"{w.label} vs {ctrl} (Wilcoxon signed-rank over {w.n_blocks} blocks, Holm): "
        f"mean difference {w.mean_diff:+.2f} {dunit}, {w.wins} wins / {w.ties} ties / "
        f"{w.losses} losses, Holm-adjusted {_p(w.p_holm)}: {sig}; Cliff's delta "
        f"{w.cliffs_delta:+.2f}."
    )


def _bayesian(b: BayesianComparison, ctrl: str, dunit: str) -> str:
    probs = (b.p_other_better, b.p_equivalent, b.p_control_better)
    words = (
        f"{b.label} is practically better",
        "they are practically equivalent",
        f"{ctrl} is practically better",
    )
    best = max(range(3), key=lambda i: probs[i])
    conclusion = (
        f"{words[best]} with probability {probs[best]:.3f}"
        if probs[best] >= EVIDENCE
        else f"no conclusion reaches probability {EVIDENCE}"
    )
    return (
        f"Bayesian signed-rank, {b.label} vs {ctrl} (ROPE ±{b.rope:g} {dunit}): "
        f"P({b.label} better) = {probs[0]:.3f}, P(equivalent) = {probs[1]:.3f}, "
        f"P({ctrl} better) = {probs[2]:.3f}; {conclusion}."
    )


def _within(w: WithinBlock, ctrl: str, dunit: str) -> list[str]:
    if w.note:
        return [f"{w.block}: no comparison, {w.note}."]
    out = []
    for c in w.comparisons:
        if c.p_holm is None:
            out.append(f"{w.block}, {c.label} vs {ctrl}: no p-value, {c.note}.")
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
            f"Holm-adjusted {_p(c.p_holm)}: {sig}{d_txt}."
        )
    return out


def verdicts(result: Analysis) -> list[str]:
    """The tests of the primary analysis and their outcomes in plain words, one sentence each."""
    dunit = difference_unit(result.metric.unit)
    ctrl, alpha = result.control, result.alpha
    if result.primary_analysis != "across-blocks":
        return [s for w in result.within_blocks for s in _within(w, ctrl, dunit)]
    across = result.across_blocks
    return (
        _friedman(across, alpha)
        + _nemenyi(across, alpha)
        + [_wilcoxon(w, ctrl, dunit) for w in across.wilcoxon]
        + [_bayesian(b, ctrl, dunit) for b in across.bayesian]
    )

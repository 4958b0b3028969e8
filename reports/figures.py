"""Report figures (matplotlib with the Agg backend, seaborn), drawn from the run tables.

Every function returns a :class:`matplotlib.figure.Figure` or None when the results hold nothing
to draw; :func:`render` turns a figure into PNG bytes (for the HTML) and a PDF (for LaTeX).
"""

from __future__ import annotations

import io
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: reports are written on servers and in CI

import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.transforms as mtransforms  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scikit_posthocs as sp  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from podbench.reports.analysis import AcrossBlocks, BlockMethodSummary, SeedPower  # noqa: E402
from podbench.reports.convergence import Convergence, performance_profile  # noqa: E402
from podbench.reports.records import GEOMETRY_KEYS, MetricInfo, ResultsData, TuningStudy  # noqa: E402
from podbench.reports.stats import min_detectable_difference  # noqa: E402

__all__ = [
    "accuracy_figure",
    "cd_figure",
    "profiles_figure",
    "seeds_figure",
    "geometry_figure",
    "importance_figure",
    "learning_curves_figure",
    "optimisation_history_figure",
    "render",
]

# Labels come from user files: never let "$" start matplotlib's math parser.
STYLE: Any = {"text.parse_math": False, "svg.fonttype": "none", "pdf.fonttype": 42}
CD_BAR_PT = 26  # the CD bar's height above the axes, in points: clear of the tick labels


def _palette(labels: list[str]) -> dict[str, Any]:
    colours = sns.color_palette("colorblind", n_colors=max(len(labels), 1))
    return {lab: colours[i % len(colours)] for i, lab in enumerate(labels)}


def _grid(n: int, width: float = 4.2, height: float = 3.2) -> tuple[Figure, np.ndarray]:
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes


def _rotate_labels(ax: Any) -> None:
    # Long method names: slanted and right-aligned so neighbours do not collide.
    for tick in ax.get_xticklabels():
        tick.set_rotation(30)
        tick.set_horizontalalignment("right")


def _legend_outside(ax: Any, title: str | None = None) -> None:
    handles, names = ax.get_legend_handles_labels()
    if handles:
        ax.legend(
            handles,
            names,
            fontsize=7,
            title=title,
            title_fontsize=7,
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            borderaxespad=0.0,
        )


def render(fig: Figure) -> tuple[bytes, bytes]:
    """PNG and PDF bytes of a figure; the figure is closed afterwards."""
    png, pdf = io.BytesIO(), io.BytesIO()
    with plt.rc_context(STYLE):
        fig.savefig(png, format="png", dpi=110, bbox_inches="tight")
        fig.savefig(pdf, format="pdf", bbox_inches="tight")
    plt.close(fig)
    return png.getvalue(), pdf.getvalue()


def _run_points(ax: Any, xs: np.ndarray, r: BlockMethodSummary, colour: Any) -> None:
    """One method's runs in a block: filled dots, crosses for worst values, rings if still
    improving."""
    vals = np.asarray(r.values, float)
    imputed = np.asarray(r.imputed, bool)
    rising = np.asarray(r.still_improving, bool) & ~imputed
    plain = ~imputed & ~rising
    ax.scatter(xs[plain], vals[plain], s=18, alpha=0.6, color=colour)
    ax.scatter(xs[rising], vals[rising], s=22, facecolors="none", edgecolors=colour)
    ax.scatter(xs[imputed], vals[imputed], s=22, marker="x", color=colour)


def accuracy_figure(
    per_block: list[BlockMethodSummary], labels: list[str], metric: MetricInfo
) -> Figure | None:
    """Per block: each method's values over seeds (points) with the mean and its 95% CI."""
    rows = [r for r in per_block if r.n > 0 and r.mean is not None]
    if not rows:
        return None
    colours = _palette(labels)
    blocks = list(dict.fromkeys(r.block for r in rows))
    with plt.rc_context(STYLE):
        fig, axes = _grid(len(blocks))
        for ax, block in zip(axes.flat, blocks, strict=False):
            here = [r for r in rows if r.block == block]
            for i, r in enumerate(here):
                xs = np.full(len(r.values), i) + np.linspace(-0.12, 0.12, len(r.values))
                _run_points(ax, xs, r, colours[r.label])
                if r.ci_low is not None and r.ci_high is not None and r.mean is not None:
                    ax.errorbar(
                        i + 0.3,
                        r.mean,
                        yerr=[[r.mean - r.ci_low], [r.ci_high - r.mean]],
                        fmt="D",
                        color="black",
                        capsize=3,
                        markersize=4,
                    )
                else:
                    ax.plot(i + 0.3, r.mean, "D", color="black", markersize=4)
            ax.set_xticks(range(len(here)), [r.label for r in here])
            _rotate_labels(ax)
            ax.set_title(block, fontsize=9)
            ax.set_ylabel(f"{metric.title} ({metric.unit})" if metric.unit else metric.title)
            ax.grid(axis="y", alpha=0.3)
        fig.suptitle(
            "Seeds (points; x: diverged/failed, counted with the worst value; hollow: still "
            "improving), mean and 95% t-interval (diamond)",
            fontsize=9,
        )
        fig.tight_layout()
    return fig


def learning_curves_figure(data: ResultsData, labels: list[str]) -> Figure | None:
    """Per block: test accuracy per epoch, mean over seeds with a ±1 standard deviation band."""
    hist = data.history.dropna(subset=["epoch", "test_acc"])
    hist = hist[hist["status"] == "completed"].copy()
    if hist.empty:
        return None
    hist["test accuracy (%)"] = hist["test_acc"] * 100
    hist["block"] = hist["dataset"] + " / " + hist["arch"]
    blocks = sorted(hist["block"].unique())
    colours = _palette(labels)
    with plt.rc_context(STYLE):
        fig, axes = _grid(len(blocks))
        for ax, block in zip(axes.flat, blocks, strict=False):
            here = hist[hist["block"] == block]
            sns.lineplot(
                data=here,
                x="epoch",
                y="test accuracy (%)",
                hue="label",
                hue_order=[lab for lab in labels if lab in set(here["label"])],
                palette=colours,
                errorbar="sd",
                ax=ax,
                marker="o",
                markersize=3,
            )
            ax.set_title(block, fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="lower right")
        fig.suptitle(
            "Test accuracy per epoch: mean over seeds, band ±1 sd (completed runs)", fontsize=10
        )
        fig.tight_layout()
    return fig


def cd_figure(across: AcrossBlocks) -> Figure | None:
    """Critical difference diagram (scikit-posthocs) from mean ranks and Nemenyi p-values; only
    when Nemenyi was run, i.e. after a rejecting Friedman test (analysis.across_blocks)."""
    if across.nemenyi is None or across.mean_ranks is None:
        return None
    ranks = pd.Series(across.mean_ranks)
    pmat = pd.DataFrame(across.nemenyi.p_values).loc[ranks.index, ranks.index]
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(7, 1.2 + 0.35 * len(ranks)))
        # The library draws its CD bar over the tick labels; ours goes above them instead.
        sp.critical_difference_diagram(ranks, pmat, ax=ax, alpha=across.nemenyi.alpha)
        cd = across.nemenyi.cd
        start = float(ranks.min())
        # Offsets in points above the axes (not axes fractions, which scale with the figure's
        # height): the tick labels, then the CD bar and its label, then the title above both.
        base = ax.get_xaxis_transform()  # x in rank units, y in axes fraction
        bar = mtransforms.offset_copy(base, fig=fig, y=CD_BAR_PT, units="points")
        label = mtransforms.offset_copy(base, fig=fig, y=CD_BAR_PT + 3, units="points")
        ax.plot([start, start + cd], [1.0, 1.0], color="black", lw=2, transform=bar, clip_on=False)
        ax.text(
            start + cd / 2,
            1.0,
            f"CD = {cd:.2f}",
            ha="center",
            va="bottom",
            fontsize=8,
            transform=label,
        )
        ax.set_title(
            f"Mean ranks over {across.n_blocks} blocks (1 = best); bars join methods Nemenyi "
            "cannot separate",
            fontsize=9,
            pad=CD_BAR_PT + 20,
        )
        fig.tight_layout()
    return fig


def profiles_figure(conv: Convergence, labels: list[str]) -> Figure | None:
    """Performance profiles rho(tau) over blocks, in epochs and in wall seconds to target."""
    measures = list(dict.fromkeys(p.measure for p in conv.profiles))
    if not measures:
        return None
    colours = _palette(labels)
    taus = np.linspace(1.0, conv.r_max, 301)
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(
            1, len(measures), figsize=(5.2 * len(measures), 3.6), squeeze=False
        )
        for ax, measure in zip(axes.flat, measures, strict=True):
            for p in [p for p in conv.profiles if p.measure == measure]:
                ratios = [np.inf if v is None else v for v in p.ratios.values()]
                ax.step(
                    taus,
                    performance_profile(ratios, taus),
                    where="post",
                    color=colours[p.label],
                    label=f"{p.label} (score {p.score:.2f})",
                )
            ax.set_xlim(1.0, conv.r_max)
            ax.set_ylim(-0.02, 1.02)
            ax.set_xlabel(f"tau: {measure} to target / fastest method's")
            ax.set_ylabel("share of blocks within tau")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="lower right")
        fig.suptitle(
            f"Performance profiles over {len(conv.profile_blocks)} block(s): target "
            f"{conv.target_fraction:g} x the best method's median final test accuracy",
            fontsize=9,
        )
        fig.tight_layout()
    return fig


def seeds_figure(power: SeedPower, unit: str) -> Figure | None:
    """Per block: the smallest difference a t-test detects at the power against seeds per
    method, with the planned difference and the seeds run."""
    rows = [b for b in power.blocks if b.sd is not None]
    if not rows:
        return None
    top = max(20, *(b.seeds_needed or 2 for b in rows), *(b.seeds_run for b in rows))
    # at most 40 points, spread evenly in log: a noisy block may need thousands of seeds
    seeds = np.unique(np.geomspace(2, min(top, 10_000), 40).round().astype(int))
    colours = _palette([b.block for b in rows])
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(6.5, 3.6))
        for b in rows:
            assert b.sd is not None
            mde = [min_detectable_difference(b.sd, int(n), power.alpha, power.power) for n in seeds]
            ax.plot(
                seeds,
                [np.nan if m is None else m for m in mde],
                color=colours[b.block],
                label=b.block,
            )
            if b.min_detectable is not None:
                ax.plot(b.seeds_run, b.min_detectable, "o", color=colours[b.block])
        ax.axhline(power.difference, color="black", ls="--", lw=1)
        ax.set_yscale("log")
        ax.set_xscale("log" if seeds[-1] > 50 else "linear")
        plain = FuncFormatter(lambda v, _: f"{v:g}")  # no mathtext: STYLE turns its parser off
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(plain)
            axis.set_minor_formatter(plain)
        ax.set_xlabel("seeds per method")
        ax.set_ylabel(f"smallest detectable difference ({unit})")
        ax.grid(alpha=0.3, which="both")
        _legend_outside(ax, "block (dot: seeds run)")
        ax.set_title(
            f"Power {power.power:g} at alpha = {power.alpha:g}; dashed: the planned "
            f"{power.difference:g} {unit}",
            fontsize=9,
        )
        fig.tight_layout()
    return fig


def geometry_figure(data: ResultsData, labels: list[str]) -> Figure | None:
    """Latent-geometry statistics of the completed runs, one panel per statistic."""
    runs = data.runs[data.runs["status"] == "completed"].copy()
    keys = [k for k in GEOMETRY_KEYS if runs[f"geometry.{k}"].notna().any()]
    if not keys:
        return None
    runs["block"] = runs["dataset"] + " / " + runs["arch"]
    order = [lab for lab in labels if lab in set(runs["label"])]
    with plt.rc_context(STYLE):
        fig, axes = _grid(len(keys), width=4.0, height=3.0)
        for ax, key in zip(axes.flat, keys, strict=False):
            sns.stripplot(
                data=runs,
                x="label",
                y=f"geometry.{key}",
                hue="block",
                order=order,
                dodge=True,
                ax=ax,
                size=4,
                alpha=0.8,
                legend=key == keys[0],
            )
            ax.set_title(key.replace("_", " "), fontsize=9)
            ax.set_ylabel("")
            ax.set_xlabel("")
            _rotate_labels(ax)
            ax.grid(axis="y", alpha=0.3)
        handles, names = axes.flat[0].get_legend_handles_labels()
        if axes.flat[0].get_legend() is not None:
            axes.flat[0].get_legend().remove()
        if handles:
            axes.flat[len(keys) - 1].legend(
                handles,
                names,
                fontsize=7,
                title="block",
                title_fontsize=7,
                loc="upper left",
                bbox_to_anchor=(1.01, 1.0),
                borderaxespad=0.0,
            )
        fig.suptitle("Latent geometry of the learned features (completed runs)", fontsize=10)
        fig.tight_layout()
    return fig


def optimisation_history_figure(study: TuningStudy) -> Figure | None:
    """Objective value per trial and the best value so far, per loss."""
    trials = study.trials
    if trials is None or "value" not in trials or "number" not in trials:
        return None
    df = trials.copy()
    if "state" in df:
        df = df[df["state"].astype(str).str.upper() == "COMPLETE"]
    df = df.dropna(subset=["value"]).sort_values("number")
    if df.empty:
        return None
    if "loss" not in df:
        df["loss"] = study.name
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(6.5, 3.4))
        colours = _palette(sorted(df["loss"].astype(str).unique()))
        for loss, g in df.groupby(df["loss"].astype(str)):
            ax.scatter(g["number"], g["value"], s=14, alpha=0.6, color=colours[loss], label=loss)
            ax.step(g["number"], g["value"].cummax(), where="post", color=colours[loss])
        ax.set_xlabel("trial")
        ax.set_ylabel("objective (validation)")
        ax.grid(alpha=0.3)
        _legend_outside(ax, "loss")
        ax.set_title(f"Study {study.name}: trials (points) and best so far (line)", fontsize=9)
        fig.tight_layout()
    return fig


def importance_figure(study: TuningStudy) -> Figure | None:
    """Hyperparameter importances (as written by the tuner), per loss."""
    if not study.importances:
        return None
    rows = [
        {"loss": loss, "parameter": p, "importance": v}
        for loss, params in study.importances.items()
        for p, v in params.items()
    ]
    if not rows:
        return None
    df = pd.DataFrame(rows)
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(6.5, 0.8 + 0.35 * len(df)))
        sns.barplot(data=df, y="parameter", x="importance", hue="loss", ax=ax, orient="h")
        ax.set_ylabel("")
        ax.grid(axis="x", alpha=0.3)
        ax.set_title(f"Study {study.name}: parameter importances", fontsize=9)
        fig.tight_layout()
    return fig

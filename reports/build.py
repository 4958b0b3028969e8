"""Build the report of a results directory: report.html, report.tex, stats.json, figures/."""

from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import json
import math
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
from markupsafe import Markup

from podbench.errors import UserError
from podbench.fileio import atomic_write
from podbench.record import package_version
from podbench.reports import figures as figs
from podbench.reports.analysis import DETECT_DIFFERENCE, Analysis, analyse
from podbench.reports.convergence import TARGET_FRACTION
from podbench.reports.criteria import with_criteria
from podbench.reports.latex import latex_escape, main_table_latex, rows_table
from podbench.reports.observations import check_failed_policy
from podbench.reports.records import MetricInfo, ResultsData, load_results, metric_info
from podbench.reports.robustness import criteria_rows, criteria_summary, robustness_figures
from podbench.reports.tables import (
    BETTER_MARK,
    RISING_MARK,
    WORSE_MARK,
    main_table,
    secondary_tables,
)
from podbench.reports.verdicts import (
    across_power_sentence,
    convergence_sentences,
    dataset_sentences,
    difference_unit,
    failure_sentence,
    improving_sentence,
    metric_caveat,
    power_sentence,
    primary_reason,
    variance_sentence,
    verdicts,
)

__all__ = ["build_report"]

TEMPLATES = Path(__file__).parent / "templates"
REPORT_TOOLS = (
    "podbench",
    "pandas",
    "scipy",
    "scikit-posthocs",
    "baycomp",
    "statsmodels",
    "matplotlib",
    "seaborn",
    "jinja2",
)


def _jsonable(obj: Any) -> Any:
    """Plain JSON values: dataclasses as objects, numpy scalars as numbers, NaN/inf as null."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def _determinism(runs: Any) -> str:
    """How many runs asked for deterministic kernels, and the ops that had none (torch warned)."""
    if "env.deterministic" not in runs:
        return "not recorded"
    on = runs["env.deterministic"].map(lambda v: v is True)
    text = f"on in {int(on.sum())} of {len(runs)} runs"
    if not on.any():
        return text
    column = "env.nondeterministic_ops"
    # a list is one cell of JSON text; records written before the field have none
    cells = [c for c in runs.loc[on, column] if isinstance(c, str)] if column in runs else []
    unknown = int(on.sum()) - len(cells)
    if not cells:
        return text + "; which ops had no deterministic kernel is not recorded"
    used: dict[str, int] = {}
    for cell in cells:
        for op in json.loads(cell):
            used[op] = used.get(op, 0) + 1
    if used:
        listed = ", ".join(f"{op} ({n} runs)" for op, n in sorted(used.items()))
        text += f"; ops that had no deterministic kernel (torch warned, the run went on): {listed}"
    else:
        text += "; every op had a deterministic kernel"
    if unknown:
        text += f" (in the {len(cells)} runs that record it; {unknown} predate the record)"
    return text


def _provenance(data: ResultsData) -> dict[str, Any]:
    """Where the results came from and which tools wrote the report."""
    runs = data.runs

    def uniq(col: str) -> list[str]:
        return sorted({str(v) for v in runs[col].dropna()}) if col in runs else []

    started = list(runs["started_at"].dropna())
    finished = list(runs["finished_at"].dropna())
    return {
        "results_dir": str(data.root),
        "suites": uniq("suite"),
        "datasets": uniq("dataset"),
        "archs": uniq("arch"),
        "seeds": sorted({int(s) for s in runs["seed"]}),
        "podbench_versions": uniq("env.podbench"),
        "torch_versions": uniq("env.torch"),
        "python_versions": uniq("env.python"),
        "ray_versions": uniq("env.ray"),
        "devices": uniq("env.device"),
        "git_commits": uniq("env.git_commit"),
        "hostnames": uniq("env.hostname"),
        "deterministic": _determinism(runs),
        "first_start": min(started) if started else None,
        "last_finish": max(finished) if finished else None,
        "report_generated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "report_tools": {dist: package_version(dist) for dist in REPORT_TOOLS},
        "suite_yaml": data.suite_yaml,
    }


def _figures(data: ResultsData, result: Analysis) -> list[tuple[str, str, Any]]:
    """(file name, title, figure or None) of every figure the report can hold."""
    labels = result.labels
    specs: list[tuple[str, str, Any]] = [
        (
            "accuracy",
            f"{result.metric.title} per method and block",
            figs.accuracy_figure(result.per_block, labels, result.metric),
        ),
        ("learning_curves", "Learning curves", figs.learning_curves_figure(data, labels)),
        (
            "critical_difference",
            "Critical difference diagram",
            figs.cd_figure(result.across_blocks),
        ),
        (
            "performance_profiles",
            "Convergence: performance profiles of time to target",
            figs.profiles_figure(result.convergence, labels),
        ),
        (
            "seeds",
            "Seeds and power: smallest detectable difference against seeds per method",
            figs.seeds_figure(result.seed_power, difference_unit(result.metric.unit)),
        ),
        ("geometry", "Latent geometry", figs.geometry_figure(data, labels)),
    ]
    specs += robustness_figures(data, labels)
    for i, study in enumerate(data.studies):
        specs.append(
            (
                f"tune_{i}_history",
                f"Tuning study {study.name}: optimisation history",
                figs.optimisation_history_figure(study),
            )
        )
        specs.append(
            (
                f"tune_{i}_importances",
                f"Tuning study {study.name}: parameter importances",
                figs.importance_figure(study),
            )
        )
    return specs


def _figure_entries(data: ResultsData, result: Analysis, out_dir: Path) -> list[dict[str, Any]]:
    """Write PNG and PDF of every figure there is something for; return the HTML entries."""
    entries = []
    for name, title, fig in _figures(data, result):
        if fig is None:
            continue
        png, pdf = figs.render(fig)
        atomic_write(out_dir / "figures" / f"{name}.png", png)
        atomic_write(out_dir / "figures" / f"{name}.pdf", pdf)
        entries.append(
            {
                "name": name,
                "title": title,
                "png_b64": base64.b64encode(png).decode("ascii"),
                "pdf": f"figures/{name}.pdf",
            }
        )
    return entries


def _environment(latex: bool) -> jinja2.Environment:
    if not latex:
        return jinja2.Environment(
            loader=jinja2.FileSystemLoader(TEMPLATES),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
    # LaTeX: delimiters that never clash with braces; every value escaped unless Markup.
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        block_start_string="<%",
        block_end_string="%>",
        variable_start_string="<<",
        variable_end_string=">>",
        comment_start_string="<#",
        comment_end_string="#>",
        autoescape=False,
        undefined=jinja2.StrictUndefined,
        finalize=lambda v: v if isinstance(v, Markup) else latex_escape(str(v)),
    )


def _latex_tables(context: dict[str, Any]) -> dict[str, Markup | None]:
    """The LaTeX tables, with captions that say what each number is."""
    result: Analysis = context["result"]
    info, ctrl, tables = result.metric, result.control, context["tables"]
    dunit = difference_unit(info.unit)
    main_caption = (
        f"{info.title} ({info.unit}), mean ± std over seeds; best per block in bold; "
        f"up/down triangle: significantly better/worse than {ctrl} (Welch, Holm within the "
        f"block); dagger: a run still improving when training stopped; (k worst): k diverged "
        "or failed runs counted with the worst value; (n/m): n of m runs enter."
    )
    marks = {BETTER_MARK: r"$^{\blacktriangle}$", WORSE_MARK: r"$^{\blacktriangledown}$"}
    boot = result.bootstrap
    captions = {
        "comparisons": (
            f"Across blocks, each method against {ctrl}: mean difference ({dunit}), Wilcoxon "
            "signed-rank (zero differences split) with Holm's correction, matched-pairs "
            "rank-biserial correlation, Cohen's d_z and the Bayesian signed-rank posterior "
            f"(ROPE ±{result.rope:g} {dunit}): posterior mass above, inside and below the ROPE, "
            "and the share of samples in which the ROPE is the most probable region "
            "(baycomp's P(equivalent)). Lowest attainable Holm p: from each comparison's own "
            "zero differences.",
            "method",
        ),
        "equivalence": (
            f"Across blocks, TOST of each method against {ctrl} (paired t over block means) with "
            f"bounds ±ROPE and the matching {100 * (1 - 2 * result.alpha):g}% interval.",
            "method",
        ),
        "across_power": (
            "Power of the exact Wilcoxon test across blocks at Holm's first-step level alpha/m "
            f"for true mean differences ({dunit}), block differences normal with the observed "
            "standard deviation.",
            "method",
        ),
        "datasets": (
            f"Over datasets (the blocks of each dataset averaged), each method against {ctrl}: "
            "Wilcoxon with Holm's correction.",
            "method",
        ),
        "within": (
            f"Within each block, each method against {ctrl} over seeds (Welch's t-test, Holm).",
            "block",
        ),
        "improvement": (
            f"Interquartile mean over the runs of {len(boot.blocks)} block(s), normalised per "
            "block (0 = the block's worst run of any method, 1 = its best), and probability "
            f"of improvement over {ctrl}, {100 * boot.confidence:g}% bootstrap intervals "
            f"({boot.reps} resamples, seed {boot.seed}; resampled: runs within blocks, or "
            "blocks where a block has fewer than 2 runs).",
            "method",
        ),
        "power": (
            f"Seeds and power per block: pooled seed standard deviation ({dunit}), seeds run, "
            f"seeds per method needed to detect {result.seed_power.difference:g} {dunit} at "
            f"{100 * result.seed_power.power:g}% power, and the difference the seeds run detect.",
            "block",
        ),
        "convergence": (
            "Median epochs and wall seconds to the block's target, and the ratio to the fastest "
            "method (never: the median run did not reach it).",
            "block",
        ),
        "profiles": (
            f"AlgoPerf benchmark score (r_max = {result.convergence.r_max:g}) and share of "
            "blocks where the method was fastest.",
            "method",
        ),
        "still_improving": ("Runs still improving when training stopped.", "block"),
        "excluded": ("Runs that did not complete.", "block"),
        "summary": (
            f"{info.title} per block and method over the runs that enter: mean, standard "
            "deviation and the 95% Student-t confidence interval of the mean.",
            "block",
        ),
        "criteria": (
            "Every criterion the runs recorded: the mean over the complete blocks (seeds "
            "averaged first) and the mean rank over those blocks (1 = best); the arrow says "
            "whether higher or lower is better.",
            "method",
        ),
    }
    out: dict[str, Markup | None] = {
        name: rows_table(
            [{k: v for k, v in r.items() if k != "note"} for r in tables[name]], caption, index
        )
        for name, (caption, index) in captions.items()
    }
    out["main"] = main_table_latex(context["main"], main_caption, marks)
    return out


def _render(context: dict[str, Any], out: Path) -> None:
    """Write report.html and report.tex from the templates."""
    html = _environment(latex=False).get_template("report.html.j2").render(**context)
    atomic_write(out / "report.html", html)
    tex = (
        _environment(latex=True)
        .get_template("report.tex.j2")
        .render(**context, latex_tables=_latex_tables(context))
    )
    atomic_write(out / "report.tex", tex)


def _check_options(alpha: float, rope: float, difference: float, target_fraction: float) -> None:
    if not 0 < alpha < 1:
        raise UserError(f"--alpha {alpha} must lie strictly between 0 and 1, e.g. 0.05.")
    if not (rope >= 0 and math.isfinite(rope)):
        raise UserError(f"--rope {rope} must be a finite number >= 0 (accuracy points), e.g. 1.0.")
    if not (difference > 0 and math.isfinite(difference)):
        raise UserError(
            f"--difference {difference} must be a finite number > 0 (accuracy points), e.g. 0.5."
        )
    if not 0 < target_fraction <= 1:
        raise UserError(
            f"--target-fraction {target_fraction} must lie in (0, 1] (a fraction of the best "
            "method's median final accuracy), e.g. 0.99."
        )


def _resolve_control(control: str | None, data: ResultsData) -> str:
    labels = sorted(data.runs["label"].unique())
    if control is None:
        # Auto: POD when present (the harness's seed method), else the most-run label.
        if "pod" in labels:
            return "pod"
        return str(data.runs["label"].value_counts().sort_index().idxmax())
    if control not in labels:
        raise UserError(
            f"--control {control!r} is not a label in {data.root / 'runs'}; use one of: "
            f"{', '.join(labels)}."
        )
    return control


def _output_dir(out_dir: str | Path | None, data: ResultsData) -> Path:
    out = Path(out_dir) if out_dir is not None else data.root / "report"
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a directory for the report.")
    out.mkdir(parents=True, exist_ok=True)
    return out


def build_report(
    results_dir: str | Path,
    out_dir: str | Path | None = None,
    *,
    control: str | None = "pod",
    rope: float = 1.0,
    metric: str = "final_test_acc",
    alpha: float = 0.05,
    failed: str = "worst",
    difference: float = DETECT_DIFFERENCE,
    target_fraction: float = TARGET_FRACTION,
) -> Path:
    """Write report.html, report.tex, stats.json and figures/ for a results directory.

    Args:
        results_dir: the folder `podbench run` wrote (``runs/*.json``).
        out_dir: where the report goes (default ``results_dir/report``).
        control: the method every other is compared with; None picks ``pod`` when present,
            else the label with the most runs.
        rope: half-width of the region of practical equivalence, in the metric's report unit
            (accuracy points for accuracies).
        metric: the compared metric of the run records.
        alpha: significance level.
        failed: ``worst`` (diverged and failed runs enter with the worst value: chance
            accuracy) or ``exclude`` (they are left out).
        difference: the difference (report unit, accuracy points) the seeds-and-power table
            plans for.
        target_fraction: the convergence target as a fraction of the best method's median
            final test accuracy in each block.

    Returns:
        The path of report.html.

    Example (it needs a results folder, so the doctests skip it):
        >>> build_report("results/quickstart", control="pod")  # doctest: +SKIP
    """
    _check_options(alpha, rope, difference, target_fraction)
    policy = check_failed_policy(failed)
    data = with_criteria(load_results(results_dir))  # conditions as blocks, errors vs softmax
    info: MetricInfo = metric_info(metric, data.runs.columns)
    chosen = _resolve_control(control, data)
    out = _output_dir(out_dir, data)

    result = analyse(
        data,
        control=chosen,
        metric=info,
        rope=rope,
        alpha=alpha,
        failed=policy,
        difference=difference,
        target_fraction=target_fraction,
    )
    prose = {
        "primary_reason": primary_reason(result),
        "verdicts": verdicts(result),
        "failure_policy": failure_sentence(result),
        "improving": improving_sentence(result),
        "power_summary": power_sentence(result),
        "convergence_summary": convergence_sentences(result),
        "variance_summary": variance_sentence(result),
        "across_power_summary": across_power_sentence(result),
        "dataset_summary": dataset_sentences(result),
        "metric_caveat": metric_caveat(result),
    }
    criteria = criteria_summary(data, chosen, alpha=alpha, rope=rope, failed=policy)
    prov = _provenance(data)
    stats_json = {**_jsonable(result), **prose, "criteria": _jsonable(criteria), "provenance": prov}
    atomic_write(
        out / "stats.json", json.dumps(stats_json, indent=2, allow_nan=False, ensure_ascii=False)
    )
    context: dict[str, Any] = {
        "title": "podbench report: " + (", ".join(prov["suites"]) or data.root.name),
        "result": result,
        **prose,
        "metric": info,
        "main": main_table(result),
        "tables": {
            **secondary_tables(result, data.studies),
            "criteria": criteria_rows(criteria, result.labels),
        },
        "criteria": criteria,
        "figures": _figure_entries(data, result, out),
        "prov": prov,
        "better_mark": BETTER_MARK,
        "worse_mark": WORSE_MARK,
        "rising_mark": RISING_MARK,
    }
    _render(context, out)
    return out / "report.html"

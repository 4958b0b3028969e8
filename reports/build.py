"""Build the report of a results directory: report.html, report.tex, stats.json, figures/."""

from __future__ import annotations

import base64
import datetime as _dt
import json
import math
import os
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd
from markupsafe import Markup

from podbench.errors import UserError
from podbench.reports import figures as figs
from podbench.reports.latex import latex_escape, styler_table
from podbench.reports.records import MetricInfo, ResultsData, load_results, metric_info
from podbench.reports.stats import analyse, verdicts

__all__ = ["build_report"]

TEMPLATES = Path(__file__).parent / "templates"
BETTER_MARK, WORSE_MARK = "▲", "▼"


def _atomic_write(path: Path, data: bytes | str) -> None:
    """Write a file so that readers see the old or the new content, never a partial one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _fmt(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _fmt_p(p: float | None) -> str:
    if p is None:
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _main_table(result: dict[str, Any], metric: MetricInfo) -> dict[str, Any]:
    """Blocks × methods: mean ± std, best in bold, marks for significance against the control."""
    labels = result["labels"]
    blocks = result["blocks"]
    cells = {(r["block"], r["label"]): r for r in result["per_block"]}
    marks: dict[tuple[str, str], str] = {}
    for w in result["within_blocks"]:
        for c in w["comparisons"]:
            if c["significant"]:
                marks[(w["block"], c["label"])] = BETTER_MARK if c["better"] else WORSE_MARK
    rows = []
    for block in blocks:
        present = [cells[(block, lab)] for lab in labels if (block, lab) in cells]
        means = [c["mean"] for c in present if c["mean"] is not None]
        best = (max(means) if metric.higher_is_better else min(means)) if means else None
        row_cells = []
        for lab in labels:
            c = cells.get((block, lab))
            if c is None:
                row_cells.append({"text": "not run", "bold": False, "mark": "", "note": ""})
                continue
            text = "–" if c["mean"] is None else _fmt(c["mean"])
            if c["std"] is not None:
                text += f" ± {c['std']:.2f}"
            note = "" if c["n"] == c["n_runs"] else f"({c['n']}/{c['n_runs']})"
            row_cells.append(
                {
                    "text": text,
                    "bold": c["mean"] is not None
                    and best is not None
                    and np.isclose(c["mean"], best),
                    "mark": marks.get((block, lab), ""),
                    "note": note,
                }
            )
        rows.append({"block": block, "cells": row_cells})
    ranks = result["across_blocks"]["mean_ranks"]
    rank_row = None
    if ranks:
        best_rank = min(ranks.values())
        rank_row = [
            {"text": _fmt(ranks.get(lab)), "bold": ranks.get(lab) == best_rank} for lab in labels
        ]
    return {"labels": labels, "rows": rows, "rank_row": rank_row}


def _main_latex(table: dict[str, Any], metric: MetricInfo, control: str) -> Markup:
    mark_tex = {BETTER_MARK: r"$^{\blacktriangle}$", WORSE_MARK: r"$^{\blacktriangledown}$"}
    data, bold = [], []
    index = []
    for row in table["rows"]:
        index.append(row["block"])
        data.append(
            [
                c["text"].replace("±", r"$\pm$").replace("–", "--")
                + mark_tex.get(c["mark"], "")
                + (f" {c['note']}" if c["note"] else "")
                for c in row["cells"]
            ]
        )
        bold.append([c["bold"] for c in row["cells"]])
    if table["rank_row"]:
        index.append("mean rank")
        data.append([c["text"].replace("–", "--") for c in table["rank_row"]])
        bold.append([c["bold"] for c in table["rank_row"]])
    df = pd.DataFrame(data, index=index, columns=table["labels"])
    # Cells are numbers and marks written here; labels and blocks are escaped by the Styler.
    return styler_table(
        df,
        caption=(
            f"{metric.title} ({metric.unit}), mean ± std over seeds; best per block in bold; "
            f"▲/▼: significantly better/worse than {control} (Welch, Holm within the block)."
        ).replace("▲/▼", "up/down triangle"),
        bold=pd.DataFrame(bold, index=index, columns=table["labels"]),
        escape_cells=False,
    )


def _figure_entries(
    data: ResultsData, result: dict[str, Any], metric: MetricInfo, out_dir: Path
) -> list[dict[str, Any]]:
    labels = result["labels"]
    specs: list[tuple[str, str, Any]] = [
        ("accuracy", f"{metric.title} per method and block", figs.accuracy_figure(result, metric)),
        ("learning_curves", "Learning curves", figs.learning_curves_figure(data, labels)),
        ("critical_difference", "Critical difference diagram", figs.cd_figure(result)),
        ("convergence", "Convergence", figs.convergence_figure(result)),
        ("geometry", "Latent geometry", figs.geometry_figure(data, labels)),
    ]
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
    entries = []
    for name, title, fig in specs:
        if fig is None:
            continue
        png, pdf = figs.render(fig)
        _atomic_write(out_dir / "figures" / f"{name}.png", png)
        _atomic_write(out_dir / "figures" / f"{name}.pdf", pdf)
        entries.append(
            {
                "name": name,
                "title": title,
                "png_b64": base64.b64encode(png).decode("ascii"),
                "pdf": f"figures/{name}.pdf",
            }
        )
    return entries


def _provenance(data: ResultsData) -> dict[str, Any]:
    runs = data.runs

    def uniq(col: str) -> list[str]:
        return sorted({str(v) for v in runs[col].dropna()}) if col in runs else []

    started = [v for v in runs["started_at"].dropna()]
    finished = [v for v in runs["finished_at"].dropna()]
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
        "first_start": min(started) if started else None,
        "last_finish": max(finished) if finished else None,
        "report_generated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "report_tools": {
            dist: _version(dist)
            for dist in (
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
        },
        "suite_yaml": data.suite_yaml,
    }


def _tuning_rows(studies: list[Any]) -> list[dict[str, Any]]:
    """Per study and loss: trials by state and the best completed trial's value and settings."""
    rows = []
    for study in studies:
        trials = study.trials
        if trials is None or trials.empty or "value" not in trials:
            continue
        if "loss" not in trials:
            trials = trials.assign(loss=study.name)
        for loss, g in trials.groupby(trials["loss"].astype(str), sort=True):
            states = g["state"].astype(str).str.upper() if "state" in g else None
            done = g[states == "COMPLETE"] if states is not None else g
            done = done.dropna(subset=["value"])
            best = done.loc[done["value"].idxmax()] if not done.empty else None
            params = [c for c in g.columns if str(c).startswith("params_")]
            rows.append(
                {
                    "study": study.name,
                    "loss": loss,
                    "trials": str(len(g)),
                    "complete": str(len(done)),
                    "pruned": str(int((states == "PRUNED").sum())) if states is not None else "–",
                    "failed": str(int((states == "FAIL").sum())) if states is not None else "–",
                    "best value": _fmt(None if best is None else float(best["value"]), 4),
                    "best settings": "–"
                    if best is None
                    else ", ".join(
                        f"{c[len('params_') :]}={best[c]:.4g}"
                        if isinstance(best[c], float)
                        else f"{c[len('params_') :]}={best[c]}"
                        for c in params
                        if pd.notna(best[c])
                    ),
                }
            )
    return rows


def _tables(result: dict[str, Any], studies: list[Any]) -> dict[str, list[dict[str, Any]]]:
    """Flat rows for the secondary tables (shared by HTML and LaTeX)."""
    tuning = _tuning_rows(studies)
    ctrl = result["control"]
    summary = [
        {
            "block": r["block"],
            "method": r["label"],
            "runs": str(r["n_runs"]),
            "completed": str(r["n_completed"]),
            "diverged": str(r["n_diverged"]),
            "failed": str(r["n_failed"]),
            "mean": _fmt(r["mean"]),
            "std": _fmt(r["std"]),
            "95% CI": "–" if r["ci_low"] is None else f"[{r['ci_low']:.2f}, {r['ci_high']:.2f}]",
        }
        for r in result["per_block"]
    ]
    comparisons = []
    bayes = {b["label"]: b for b in result["across_blocks"]["bayesian"]}
    for w in result["across_blocks"]["wilcoxon"]:
        b = bayes.get(w["label"], {})
        comparisons.append(
            {
                "method": w["label"],
                f"diff vs {ctrl}": _fmt(w["mean_diff"]),
                "W/T/L": f"{w['wins']}/{w['ties']}/{w['losses']}",
                "Wilcoxon p": _fmt_p(w["p"]),
                "Holm p": _fmt_p(w["p_holm"]),
                "Cliff's delta": _fmt(w["cliffs_delta"]),
                "Cohen's dz": _fmt(w["cohens_dz"]),
                "P(better)": _fmt(b.get("p_other_better"), 3),
                "P(equiv.)": _fmt(b.get("p_equivalent"), 3),
                f"P({ctrl} better)": _fmt(b.get("p_control_better"), 3),
            }
        )
    within = []
    for w in result["within_blocks"]:
        for c in w["comparisons"]:
            within.append(
                {
                    "block": w["block"],
                    "method": c["label"],
                    "seeds": f"{c['n']} vs {c['n_control']}",
                    f"diff vs {ctrl}": _fmt(c["mean_diff"]),
                    "Welch t": _fmt(c["t"], 3),
                    "df": _fmt(c["df"], 1),
                    "p": _fmt_p(c["p"]),
                    "Holm p": _fmt_p(c["p_holm"]),
                    "Cohen's d": _fmt(c["cohens_d"]),
                    "Cliff's delta": _fmt(c["cliffs_delta"]),
                    "note": c["note"] or "",
                }
            )
    excluded = [
        {
            "block": e["block"],
            "method": e["label"],
            "seed": str(e["seed"]),
            "status": e["status"],
            "epoch": "–" if e["error_epoch"] is None else str(e["error_epoch"]),
            "error": f"{e['error_type'] or ''}: {e['error_message'] or ''}".strip(": ")
            or e["reason"],
        }
        for e in result["excluded_runs"]
    ]
    conv = pd.DataFrame(result["convergence"])
    convergence = []
    if not conv.empty:
        for (block, label), g in conv.groupby(["block", "label"], sort=False):
            reached = g["epochs_to_95pct"].dropna()
            convergence.append(
                {
                    "block": block,
                    "method": label,
                    "runs": str(len(g)),
                    "mean epochs to 95%": _fmt(float(reached.mean()), 1) if len(reached) else "–",
                    "epochs run": _fmt(float(g["epochs"].mean()), 1),
                }
            )
    geometry = [
        {
            "block": g["block"],
            "method": g["label"],
            **{k.replace("_", " "): _fmt(g[k], 3) for k in g if k not in ("block", "label")},
        }
        for g in result["geometry"]
    ]
    return {
        "comparisons": comparisons,
        "tuning": tuning,
        "summary": summary,
        "within": within,
        "excluded": excluded,
        "convergence": convergence,
        "geometry": geometry,
    }


def _latex_rows(rows: list[dict[str, Any]], caption: str, index: str) -> Markup | None:
    if not rows:
        return None
    df = pd.DataFrame(rows).set_index(index)
    df = df.map(lambda v: v.replace("–", "-") if isinstance(v, str) else v)
    return styler_table(df, caption=caption)


def _environment(latex: bool) -> jinja2.Environment:
    if not latex:
        env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(TEMPLATES),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        return env
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


def _resolve_control(control: str | None, labels: list[str], data: ResultsData) -> str:
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


def build_report(
    results_dir: str | Path,
    out_dir: str | Path | None = None,
    *,
    control: str | None = "pod",
    rope: float = 1.0,
    metric: str = "final_test_acc",
    alpha: float = 0.05,
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

    Returns:
        The path of report.html.

    Example:
        >>> build_report("results/quickstart", control="pod")  # doctest: +SKIP
    """
    if not 0 < alpha < 1:
        raise UserError(f"--alpha {alpha} must lie strictly between 0 and 1, e.g. 0.05.")
    if not (rope >= 0 and math.isfinite(rope)):
        raise UserError(f"--rope {rope} must be a finite number >= 0 (accuracy points), e.g. 1.0.")
    info = metric_info(metric)
    data = load_results(results_dir)
    labels = sorted(data.runs["label"].unique())
    chosen = _resolve_control(control, labels, data)
    out = Path(out_dir) if out_dir is not None else data.root / "report"
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a directory for the report.")
    out.mkdir(parents=True, exist_ok=True)

    result = analyse(data, control=chosen, metric=info, rope=rope, alpha=alpha)
    result["verdicts"] = verdicts(result)
    result["provenance"] = _provenance(data)
    _atomic_write(
        out / "stats.json",
        json.dumps(_jsonable(result), indent=2, allow_nan=False, ensure_ascii=False),
    )

    fig_entries = _figure_entries(data, result, info, out)
    main = _main_table(result, info)
    tables = _tables(result, data.studies)
    prov = result["provenance"]
    context: dict[str, Any] = {
        "title": "podbench report: " + (", ".join(prov["suites"]) or data.root.name),
        "result": result,
        "metric": info,
        "main": main,
        "tables": tables,
        "figures": fig_entries,
        "prov": prov,
        "better_mark": BETTER_MARK,
        "worse_mark": WORSE_MARK,
        "studies": data.studies,
    }
    html = _environment(latex=False).get_template("report.html.j2").render(**context)
    _atomic_write(out / "report.html", html)

    diff_unit = "points" if info.unit == "%" else info.unit  # differences of percentages
    latex_tables = {
        "main": _main_latex(main, info, chosen),
        "comparisons": _latex_rows(
            tables["comparisons"],
            f"Across blocks, each method against {chosen}: mean difference ({diff_unit}), "
            "Wilcoxon signed-rank with Holm's correction, effect sizes and the Bayesian "
            f"signed-rank posterior (ROPE ±{rope:g} {diff_unit}).",
            "method",
        ),
        "within": _latex_rows(
            [{k: v for k, v in r.items() if k != "note"} for r in tables["within"]],
            f"Within each block, each method against {chosen} over seeds (Welch's t-test, Holm).",
            "block",
        ),
        "excluded": _latex_rows(tables["excluded"], "Runs that did not complete.", "block"),
        "summary": _latex_rows(
            tables["summary"],
            f"{info.title} per block and method over the completed runs: mean, standard "
            "deviation and the 95% Student-t confidence interval of the mean.",
            "block",
        ),
    }
    tex = (
        _environment(latex=True)
        .get_template("report.tex.j2")
        .render(**context, latex_tables=latex_tables)
    )
    _atomic_write(out / "report.tex", tex)
    return out / "report.html"

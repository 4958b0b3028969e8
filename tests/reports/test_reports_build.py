"""The report on synthetic results directories: files, numbers, escaping, LaTeX, a real browser."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import stats

from podbench.cli import main as podbench_main
from podbench.errors import UserError
from podbench.reports import build_report
from podbench.reports.records import load_results

SCRIPT_LABEL = "<script>alert(1)</script>"
TEX_LABEL = "pod[no-sc]_x&y%$"
DIVERGED_MSG = "loss is NaN <b>bold</b>"
FAILED_MSG = "CUDA out of memory & <oops>"
CHROMIUM = Path("/usr/bin/chromium")
PDFLATEX = shutil.which("pdflatex")


def _strict_json(path: Path) -> Any:
    def refuse(name: str) -> None:
        raise AssertionError(f"stats.json holds {name}")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


class _Page(HTMLParser):
    """Collects tags, attributes and table ids of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


class _TableText(HTMLParser):
    """The cell texts of one table, row by row."""

    def __init__(self, table_id: str) -> None:
        super().__init__()
        self.table_id, self.inside, self.rows = table_id, False, []
        self.cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table" and dict(attrs).get("id") == self.table_id:
            self.inside = True
        elif self.inside and tag == "tr":
            self.rows.append([])
        elif self.inside and tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self.inside = False
        elif self.inside and tag in ("td", "th") and self.cell is not None:
            self.rows[-1].append("".join(self.cell).strip())
            self.cell = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)


def _table_rows(html: str, table_id: str) -> list[list[str]]:
    parser = _TableText(table_id)
    parser.feed(html)
    return parser.rows


def _parse(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    return page


@pytest.fixture(scope="module")
def full_report(
    tmp_path_factory: pytest.TempPathFactory,
    record_maker: Callable[..., dict[str, Any]],
    results_writer: Callable[..., Path],
    many_blocks: dict[tuple[str, str, str], list[float]],
) -> dict[str, Any]:
    """Seven blocks, three methods, plus odd labels, a diverged and a failed run, and a study;
    diverged and failed runs left out (--failed exclude; the default is tested below)."""
    root = tmp_path_factory.mktemp("full") / "results"
    records = [
        record_maker(label, ds, arch, seed, acc)
        for (label, ds, arch), accs in many_blocks.items()
        for seed, acc in enumerate(accs)
    ]
    records += [record_maker(SCRIPT_LABEL, "data0", "small-cnn", s, 0.5 + 0.01 * s) for s in (0, 1)]
    records.append(record_maker(TEX_LABEL, "data0", "small-cnn", 0, 0.6))
    records.append(
        record_maker(
            "pod",
            "data0",
            "small-cnn",
            7,
            None,
            status="diverged",
            error={"type": "Divergence", "message": DIVERGED_MSG, "traceback": "", "epoch": 2},
        )
    )
    records.append(
        record_maker(
            "center",
            "data1",
            "small-cnn",
            8,
            None,
            status="failed",
            error={
                "type": "RuntimeError",
                "message": FAILED_MSG,
                "traceback": "Traceback ...",
                "epoch": 0,
            },
        )
    )
    results_writer(root, records, "name: synthetic\nlosses: ['<script>x</script>']\n")
    study = root / "tune" / "pod-study"
    study.mkdir(parents=True)
    pd.DataFrame(
        {
            "number": range(6),
            "loss": ["pod"] * 6,
            "state": ["COMPLETE"] * 5 + ["PRUNED"],
            "value": [0.80, 0.85, 0.83, 0.88, 0.86, None],
            "params_alpha": [0.1, 0.5, 1.0, 2.0, 5.0, 3.0],
            "epochs": [3] * 6,
        }
    ).to_csv(study / "trials.csv", index=False)
    (study / "importances.json").write_text(json.dumps({"pod": {"alpha": 0.7, "beta": 0.3}}))
    out = root.parent / "out"
    html_path = build_report(root, out, control="pod", rope=1.0, failed="exclude")
    return {
        "root": root,
        "out": out,
        "html_path": html_path,
        "html": html_path.read_text(encoding="utf-8"),
        "stats": _strict_json(out / "stats.json"),
        "tex": (out / "report.tex").read_text(encoding="utf-8"),
        "table": many_blocks,
    }


def test_report_files_are_written(full_report: dict[str, Any]) -> None:
    out = full_report["out"]
    assert full_report["html_path"] == out / "report.html"
    for name in (
        "accuracy",
        "learning_curves",
        "critical_difference",
        "performance_profiles",
        "seeds",
        "geometry",
        "tune_0_history",
        "tune_0_importances",
    ):
        assert (out / "figures" / f"{name}.pdf").read_bytes()[:5] == b"%PDF-"
        assert (out / "figures" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.rglob("*.tmp"))  # atomic writes leave no temporaries


def test_failed_and_diverged_runs_are_counted_and_explained(full_report: dict[str, Any]) -> None:
    s = full_report["stats"]
    assert s["counts"] == {
        "runs": 68,
        "completed": 66,
        "diverged": 1,
        "failed": 1,
        "used": 66,
        "still_improving": 0,
    }  # the fixture's records are flagged converged
    excluded = {e["status"]: e for e in s["excluded_runs"]}
    assert excluded["diverged"]["error_message"] == DIVERGED_MSG
    assert excluded["diverged"]["error_epoch"] == 2
    assert excluded["failed"]["error_type"] == "RuntimeError"
    pod0 = next(
        r for r in s["per_block"] if r["label"] == "pod" and r["block"] == "data0 / small-cnn"
    )
    assert (pod0["n_runs"], pod0["n_completed"], pod0["n_diverged"]) == (4, 3, 1)
    html = full_report["html"]
    assert "(3/4)" in html  # the table cell says one pod run of data0 is missing from the mean
    assert "1 run(s) diverged and 1 failed" in html
    assert "CUDA out of memory &amp; &lt;oops&gt;" in html
    header, *rows = _table_rows(html, "failures-table")
    assert header == ["block", "method", "seed", "status", "epoch", "error"]
    assert sorted(rows) == [
        ["data0 / small-cnn", "pod", "7", "diverged", "2", f"Divergence: {DIVERGED_MSG}"],
        ["data1 / small-cnn", "center", "8", "failed", "0", f"RuntimeError: {FAILED_MSG}"],
    ]
    assert "loss is NaN &lt;b&gt;bold&lt;/b&gt;" in html


def test_per_block_summary_matches_numpy(full_report: dict[str, Any]) -> None:
    s, table = full_report["stats"], full_report["table"]
    for r in s["per_block"]:
        key = (r["label"], r["dataset"], r["arch"])
        if key not in table:
            continue
        x = np.array(table[key]) * 100
        half = stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size)
        assert r["mean"] == pytest.approx(x.mean())
        assert r["std"] == pytest.approx(x.std(ddof=1))
        assert r["ci_low"] == pytest.approx(x.mean() - half)
    x = np.array(table[("pod", "data0", "small-cnn")]) * 100
    cell = f"{x.mean():.2f} ± {x.std(ddof=1):.2f}"
    assert f'<td class="best">{cell}' in full_report["html"]
    header, *rows = _table_rows(full_report["html"], "summary-table")
    assert header == [
        "block",
        "method",
        "runs",
        "completed",
        "diverged",
        "failed",
        "mean",
        "std",
        "95% CI",
    ]
    lo, hi = stats.t.interval(0.95, x.size - 1, loc=x.mean(), scale=stats.sem(x))
    assert [
        "data0 / small-cnn",
        "pod",
        "4",
        "3",
        "1",
        "0",
        f"{x.mean():.2f}",
        f"{x.std(ddof=1):.2f}",
        f"[{lo:.2f}, {hi:.2f}]",
    ] in rows
    # ce is about 4 points below pod in every block: Welch + Holm marks each ce cell as worse
    x = np.array(table[("ce", "data2", "small-cnn")]) * 100
    ce_cell = f'<td>{x.mean():.2f} ± {x.std(ddof=1):.2f}<span class="mark worse">▼</span>'
    assert ce_cell in full_report["html"]
    assert full_report["html"].count('<span class="mark worse">') >= 10


def test_tests_across_blocks_match_scipy(full_report: dict[str, Any]) -> None:
    s, table = full_report["stats"], full_report["table"]
    assert s["primary_analysis"] == "across-blocks"
    methods = ["pod", "ce", "center"]
    means = np.array(
        [[np.mean(table[(m, f"data{b}", "small-cnn")]) * 100 for m in methods] for b in range(7)]
    )
    across = s["across_blocks"]
    assert across["methods"] == methods and across["n_blocks"] == 7
    left_out = {m["label"] for m in across["methods_left_out"]}
    assert left_out == {SCRIPT_LABEL, TEX_LABEL}
    assert across["incomplete_blocks"] == []  # every block kept once those two are left out
    ranks = stats.rankdata(-means, axis=1).mean(axis=0)
    assert [across["mean_ranks"][m] for m in methods] == pytest.approx(ranks)
    chi2 = stats.friedmanchisquare(*means.T).statistic
    assert across["friedman"]["chi2"] == pytest.approx(chi2)
    cd = 2.343 * np.sqrt(3 * 4 / (6 * 7))  # Demšar's q_0.05 for k = 3
    assert across["nemenyi"]["cd"] == pytest.approx(cd, abs=1e-3)
    wil = {w["label"]: w for w in across["wilcoxon"]}
    p_ce = stats.wilcoxon(means[:, 1], means[:, 0]).pvalue
    p_center = stats.wilcoxon(means[:, 2], means[:, 0]).pvalue
    assert wil["ce"]["p"] == pytest.approx(p_ce)
    lo, hi = sorted([p_ce, p_center])
    assert sorted([wil["ce"]["p_holm"], wil["center"]["p_holm"]]) == pytest.approx(
        [min(1.0, 2 * lo), min(1.0, max(2 * lo, hi))]
    )
    bayes = {b["label"]: b for b in across["bayesian"]}
    assert bayes["ce"]["p_control_better"] > 0.95  # ce is ~4 points worse on every block
    verdicts = " ".join(s["verdicts"])
    for words in ("Iman–Davenport", "Wilcoxon signed-rank", "Bayesian signed-rank", "Nemenyi"):
        assert words in verdicts


def test_every_string_is_escaped_and_page_is_self_contained(full_report: dict[str, Any]) -> None:
    html = full_report["html"]
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;script&gt;x&lt;/script&gt;" in html  # from suite.yaml
    numbers_only = html.replace("loss is NaN", "")  # the diverged run's own error message
    assert not re.search(r"\b(nan|inf)\b", numbers_only, re.IGNORECASE)  # no undefined number
    page = _parse(html)
    assert not [t for t, _ in page.tags if t in ("script", "link", "iframe", "object")]
    images = [a for t, a in page.tags if t == "img"]
    assert len(images) == 8
    for attrs in images:
        src = attrs["src"] or ""
        assert src.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as img:
            img.verify()
    for _, attrs in page.tags:
        for name in ("src", "href", "action"):
            value = attrs.get(name) or ""
            assert not value.startswith(("http:", "https:", "//")), value
    table_ids = {a.get("id") for t, a in page.tags if t == "table"}
    assert {
        "tuning-table",
        "main-table",
        "across-table",
        "within-table",
        "failures-table",
        "provenance-table",
    } <= table_ids


def test_latex_uses_booktabs_via_styler_and_escapes(full_report: dict[str, Any]) -> None:
    tex = full_report["tex"]
    for rule in ("\\toprule", "\\midrule", "\\bottomrule", "\\usepackage{booktabs}"):
        assert rule in tex
    assert "pod[no-sc]\\_x\\&y\\%\\$" in tex
    assert "\\bfseries" in tex  # the best cell
    assert tex.count("\\includegraphics") == 8
    assert "Iman–Davenport" in tex or "Iman--Davenport" in tex


@pytest.mark.skipif(
    PDFLATEX is None,
    reason="pdflatex not found: apt-get install "
    "texlive-latex-recommended texlive-fonts-recommended lmodern",
)
def test_latex_report_compiles_with_pdflatex(full_report: dict[str, Any], tmp_path: Path) -> None:
    _assert_pdflatex_compiles(full_report["out"], tmp_path)


def _assert_pdflatex_compiles(out: Path, tmp_path: Path) -> None:
    """Compile a copy of the report folder's report.tex; it must give a PDF."""
    work = tmp_path / "tex"
    shutil.copytree(out, work)
    proc = subprocess.run(
        [str(PDFLATEX), "-interaction=nonstopmode", "-halt-on-error", "report.tex"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert (work / "report.pdf").read_bytes()[:5] == b"%PDF-"


def _chromium(url: str, user_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={user_dir}",
            "--enable-logging=stderr",
            "--v=0",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _console_lines(stderr: str) -> list[str]:
    # Chromium logs every console message (errors, CSP violations) as ":CONSOLE" lines.
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="/usr/bin/chromium not found: apt-get install chromium"
)
def test_report_in_headless_chromium(full_report: dict[str, Any], tmp_path: Path) -> None:
    # The detector first: a page with a console error must be caught.
    bad = tmp_path / "bad.html"
    bad.write_text(
        "<!DOCTYPE html><html><body><script>console.error('boom')</script></body></html>"
    )
    assert any(
        "boom" in line for line in _console_lines(_chromium(bad.as_uri(), tmp_path / "u1").stderr)
    )

    proc = _chromium(full_report["html_path"].as_uri(), tmp_path / "u2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _console_lines(proc.stderr) == []
    dom = _parse(proc.stdout)
    ids = {a.get("id") for t, a in dom.tags if t == "table"}
    assert {"main-table", "across-table", "failures-table", "provenance-table"} <= ids
    assert len([a for t, a in dom.tags if t == "img"]) == 8
    assert not [t for t, _ in dom.tags if t == "script"]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in proc.stdout


@pytest.fixture
def quickstart_dir(results_factory: Callable[..., Path]) -> Path:
    """One block, as in the quickstart: two methods, three seeds."""
    return results_factory(
        {
            ("pod", "fashion-mnist", "small-cnn"): [0.90, 0.91, 0.905],
            ("softmax", "fashion-mnist", "small-cnn"): [0.86, 0.87, 0.865],
        }
    )


def test_cli_report_on_one_block_compares_seeds(
    quickstart_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "qs-report"
    assert podbench_main(["report", str(quickstart_dir), "--out", str(out)]) == 0
    assert "report.html" in capsys.readouterr().out
    s = _strict_json(out / "stats.json")
    assert s["primary_analysis"] == "within-blocks"
    assert "at least 6 blocks would be needed" in s["primary_reason"]
    assert "Welch" in s["primary_reason"]
    across = s["across_blocks"]
    assert across["friedman"] is None and across["wilcoxon"] == [] and across["bayesian"] == []
    (comp,) = s["within_blocks"][0]["comparisons"]
    p = stats.ttest_ind([86, 87, 86.5], [90, 91, 90.5], equal_var=False).pvalue
    assert comp["p"] == pytest.approx(p) and comp["p_holm"] == pytest.approx(p)
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "Friedman" not in html and "Welch" in html
    assert "critical_difference" not in html


def test_default_output_folder_and_automatic_control(quickstart_dir: Path) -> None:
    path = build_report(quickstart_dir, control=None)
    assert path == quickstart_dir / "report" / "report.html"
    assert _strict_json(path.with_name("stats.json"))["control"] == "pod"


def test_cli_user_errors_exit_2_with_one_line(
    quickstart_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = [
        ["report", str(tmp_path / "nowhere")],
        ["report", str(quickstart_dir), "--control", "nosuch"],
        ["report", str(quickstart_dir), "--alpha", "1.5"],
    ]
    empty = tmp_path / "empty"
    (empty / "runs").mkdir(parents=True)
    cases.append(["report", str(empty)])
    for argv in cases:
        capsys.readouterr()
        assert podbench_main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("podbench report: error:") and "\n" not in err, err
        assert "Traceback" not in err
    with pytest.raises(UserError, match="--control 'nosuch'.*pod, softmax"):
        build_report(quickstart_dir, tmp_path / "x", control="nosuch")


def test_corrupt_or_foreign_records_are_user_errors(quickstart_dir: Path, tmp_path: Path) -> None:
    bad = quickstart_dir / "runs" / "zz.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="zz.json is not valid JSON"):
        build_report(quickstart_dir, tmp_path / "a")
    bad.write_text(json.dumps({"schema": 1, "run_id": "x", "label": "pod"}))
    with pytest.raises(UserError, match="lacks the field"):
        build_report(quickstart_dir, tmp_path / "b")
    bad.write_text(
        json.dumps(
            {
                "schema": 1,
                "run_id": "x",
                "label": "pod",
                "dataset": "d",
                "arch": "a",
                "seed": 0,
                "status": "exploded",
            }
        )
    )
    with pytest.raises(UserError, match="status"):
        build_report(quickstart_dir, tmp_path / "c")


def test_reports_never_import_torch_or_ray() -> None:
    code = (
        "import sys, podbench.reports, podbench.reports.cli, podbench.reports.build\n"
        "bad = [m for m in ('torch', 'ray', 'podbench.engine', 'podbench.losses', 'podbench.tasks')"
        " if m in sys.modules]\n"
        "print(bad); raise SystemExit(1 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_tuning_study_is_summarised(full_report: dict[str, Any]) -> None:
    header, *rows = _table_rows(full_report["html"], "tuning-table")
    assert header[:8] == [
        "study",
        "loss",
        "trials",
        "complete",
        "pruned",
        "failed",
        "best value",
        "best settings",
    ]
    # 6 trials: 5 complete, 1 pruned; best value 0.88 at alpha = 2.0 (written in the fixture)
    assert rows == [["pod-study", "pod", "6", "5", "1", "0", "0.8800", "alpha=2"]]
    html = full_report["html"]
    assert 'id="fig-tune_0_history"' in html and 'id="fig-tune_0_importances"' in html


def test_report_when_every_run_failed(
    results_factory: Callable[..., Path], record_maker: Callable[..., dict[str, Any]]
) -> None:
    err = {"type": "ValueError", "message": "bad input", "traceback": "", "epoch": 0}
    failed = [
        record_maker(label, "d", "a", seed, None, status="failed", error=err)
        for label in ("pod", "ce")
        for seed in (0, 1)
    ]
    path = build_report(results_factory({}, extra=failed), control="pod", failed="exclude")
    s = _strict_json(path.with_name("stats.json"))
    assert s["counts"] == {
        "runs": 4,
        "completed": 0,
        "diverged": 0,
        "failed": 4,
        "used": 0,
        "still_improving": 0,
    }
    assert s["verdicts"] == [
        "d / a: no comparison, the control 'pod' has no completed run in this block."
    ]
    html = path.read_text(encoding="utf-8")
    assert len(_table_rows(html, "failures-table")) == 5
    assert "No figure: nothing was recorded that could be drawn." in html
    assert "p = " not in html and not re.search(r"\bnan\b", html, re.IGNORECASE)


@pytest.fixture(scope="module")
def default_report(
    tmp_path_factory: pytest.TempPathFactory,
    record_maker: Callable[..., dict[str, Any]],
    results_writer: Callable[..., Path],
    many_blocks: dict[tuple[str, str, str], list[float]],
) -> dict[str, Any]:
    """The default policy: ce diverges twice in data0 (counted at chance 1/10), and two center
    runs were still improving when training stopped."""
    root = tmp_path_factory.mktemp("default") / "results"
    records = [
        record_maker(label, ds, arch, seed, acc)
        for (label, ds, arch), accs in many_blocks.items()
        for seed, acc in enumerate(accs)
    ]
    err = {"type": "Divergence", "message": "loss is NaN", "traceback": "", "epoch": 1}
    records += [
        record_maker("ce", "data0", "small-cnn", s, None, status="diverged", error=err)
        for s in (3, 4)
    ]
    results_writer(root, records, "name: synthetic\n")

    def load_with_fields(results_dir: Path) -> Any:
        # num_classes and still_improving as the record loader flattens them into columns
        data = load_results(results_dir)
        runs = data.runs
        data.runs["num_classes"] = 10
        data.runs["still_improving"] = (
            (runs["label"] == "center")
            & (runs["seed"] == 0)
            & runs["dataset"].isin(["data1", "data2"])
        )
        return data

    out = root.parent / "out"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("podbench.reports.build.load_results", load_with_fields)
        html_path = build_report(root, out, control="pod")
    return {
        "out": out,
        "html": html_path.read_text(encoding="utf-8"),
        "stats": _strict_json(out / "stats.json"),
        "tex": (out / "report.tex").read_text(encoding="utf-8"),
        "table": many_blocks,
    }


def _values(table: dict[tuple[str, str, str], list[float]], label: str, b: int) -> list[float]:
    """A method's values (percent) in block b as the default policy enters them."""
    vals = [100 * v for v in table[(label, f"data{b}", "small-cnn")]]
    return vals + [10.0, 10.0] if (label, b) == ("ce", 0) else vals


def test_default_report_counts_diverged_runs_against_their_method(
    default_report: dict[str, Any],
) -> None:
    s, table = default_report["stats"], default_report["table"]
    assert s["failure_handling"]["policy"] == "worst"
    assert s["failure_handling"]["basis"] == "chance" and s["failure_handling"]["n_counted"] == 2
    ce0 = next(r for r in s["per_block"] if (r["label"], r["block"]) == ("ce", "data0 / small-cnn"))
    assert ce0["values"] == pytest.approx(_values(table, "ce", 0))
    assert s["across_blocks"]["incomplete_blocks"] == []
    assert s["primary_analysis"] == "across-blocks"
    assert s["primary_basis"]["min_p"] == pytest.approx(2 * 2 / 2**7)
    assert "chance accuracy 1/K" in s["failure_policy"]
    html = default_report["html"]
    assert "(2 worst)" in html and "chance accuracy 1/K" in html
    # the matched-pairs rank-biserial correlation of ce - pod over the block means, via scipy
    means = np.array([[np.mean(_values(table, m, b)) for m in ("pod", "ce")] for b in range(7)])
    d = means[:, 1] - means[:, 0]
    r_plus = stats.wilcoxon(d, zero_method="zsplit", alternative="greater").statistic
    ce = next(w for w in s["across_blocks"]["wilcoxon"] if w["label"] == "ce")
    assert ce["rank_biserial"] == pytest.approx(2 * r_plus / 28 - 1) == -1.0
    assert ce["p"] == pytest.approx(stats.wilcoxon(d, zero_method="zsplit").pvalue)


def test_default_report_probability_of_improvement_and_iqm(default_report: dict[str, Any]) -> None:
    s, table = default_report["stats"], default_report["table"]
    boot = s["bootstrap"]
    assert (boot["reps"], boot["seed"], boot["confidence"]) == (2000, 0, 0.95)
    for imp in boot["improvement"]:
        won = []
        for b in range(7):
            x, y = _values(table, imp["label"], b), _values(table, "pod", b)
            won.append(np.mean([[1.0 if a > c else 0.5 if a == c else 0.0 for c in y] for a in x]))
        assert imp["estimate"] == pytest.approx(np.mean(won))
        assert imp["ci_low"] <= imp["estimate"] <= imp["ci_high"]
    labels = [q["label"] for q in boot["iqm"]]
    for q in boot["iqm"]:
        # each run on its block's 0-1 scale (worst run of any method 0, best 1), then pooled
        scaled = []
        for b in range(7):
            every = np.concatenate([_values(table, lab, b) for lab in labels])
            x = np.asarray(_values(table, q["label"], b))
            scaled.extend((x - every.min()) / (every.max() - every.min()))
        assert q["estimate"] == pytest.approx(stats.trim_mean(scaled, 0.25))
        assert q["resampling"] == "runs"
    header, *rows = _table_rows(default_report["html"], "improvement-table")
    assert header[:4] == ["method", "runs", "IQM (normalised)", "IQM 95% CI"] and len(rows) == 3


def test_default_report_marks_runs_still_improving(default_report: dict[str, Any]) -> None:
    s, html = default_report["stats"], default_report["html"]
    assert s["still_improving_recorded"] is True
    header, *rows = _table_rows(html, "still-improving-table")
    assert sorted(rows) == [
        ["data1 / small-cnn", "center", "0"],
        ["data2 / small-cnn", "center", "0"],
    ]
    assert "†" in _table_rows(html, "main-table")[2][3]  # data1's center cell
    center = next(v for v in s["verdicts"] if v.startswith("center vs pod (Wilcoxon"))
    assert "rests on 2 run(s) still improving" in center
    ce = next(v for v in s["verdicts"] if v.startswith("ce vs pod (Wilcoxon"))
    assert "still improving" not in ce
    # the first screen (the summary above the first table) counts them, in HTML and stats.json
    assert s["counts"]["still_improving"] == 2  # centre's seed 0 on data1 and data2, set above
    summary = html[html.index('<p class="summary">') : html.index('id="results"')]
    assert f"2 of the {s['counts']['used']} runs that enter were still improving" in summary
    assert "(center: 2)" not in summary and "center: 2)" in summary
    assert s["improving"].startswith("2 of the ")


def test_default_report_shows_power_and_convergence(default_report: dict[str, Any]) -> None:
    s, html = default_report["stats"], default_report["html"]
    pw = s["seed_power"]
    assert pw["difference"] == 0.5 and pw["power"] == 0.8 and len(pw["blocks"]) == 7
    assert s["power_summary"].startswith("Seeds and power:")
    conv = s["convergence"]
    assert conv["target_fraction"] == 0.99 and conv["r_max"] == 4.0
    assert {p["measure"] for p in conv["profiles"]} == {"epochs", "seconds"}
    for p in conv["profiles"]:
        ratios = [np.inf if r is None else r for r in p["ratios"].values()]
        expected = sum(4 - r for r in ratios if r <= 4) / (len(ratios) * 3)
        assert p["score"] == pytest.approx(expected)
    for table_id in ("power-table", "profiles-table", "convergence-table", "improvement-table"):
        assert len(_table_rows(html, table_id)) > 1, table_id
    assert 'id="fig-performance_profiles"' in html and 'id="fig-seeds"' in html
    assert "epochs to 95%" not in html


@pytest.mark.skipif(PDFLATEX is None, reason="pdflatex not found")
def test_default_latex_report_compiles(default_report: dict[str, Any], tmp_path: Path) -> None:
    tex = default_report["tex"]
    for words in ("Seeds and power", "Convergence", "still improving", "rank-biserial"):
        assert words in tex, words
    _assert_pdflatex_compiles(default_report["out"], tmp_path)


def test_cli_report_flags(
    quickstart_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "flags"
    argv = ["report", str(quickstart_dir), "--out", str(out), "--failed", "exclude"]
    argv += ["--difference", "1.0", "--target-fraction", "0.9"]
    assert podbench_main(argv) == 0
    s = _strict_json(out / "stats.json")
    assert s["failure_handling"]["policy"] == "exclude"
    assert s["seed_power"]["difference"] == 1.0 and s["convergence"]["target_fraction"] == 0.9
    for bad in (["--difference", "0"], ["--target-fraction", "1.5"]):
        capsys.readouterr()
        assert podbench_main(["report", str(quickstart_dir), *bad]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("podbench report: error: " + bad[0]) and "\n" not in err


def test_provenance_lists_ops_without_a_deterministic_kernel(
    tmp_path: Path,
    record_maker: Callable[..., dict[str, Any]],
    results_writer: Callable[..., Path],
) -> None:
    # 3 runs asked for deterministic kernels: two hit ops without one; 1 run did not ask
    envs = [
        (True, ["put_"]),
        (True, ["put_", "adaptive_avg_pool2d_backward_cuda"]),
        (True, []),
        (False, None),
        (True, None),
    ]  # the last: written before the field existed
    records = []
    for seed, (on, ops) in enumerate(envs):
        rec = record_maker("pod" if seed % 2 else "softmax", "d0", "mlp", seed, 0.9 - 0.01 * seed)
        rec["env"].update(deterministic=on, nondeterministic_ops=ops)
        records.append(rec)
    root = results_writer(tmp_path / "res", records)
    build_report(root, tmp_path / "out", control="pod")
    prov = json.loads((tmp_path / "out" / "stats.json").read_text())["provenance"]
    assert prov["deterministic"] == (
        "on in 4 of 5 runs; ops that had no deterministic kernel (torch warned, the run went on): "
        "adaptive_avg_pool2d_backward_cuda (1 runs), put_ (2 runs) (in the 3 runs that record it; "
        "1 predate the record)"
    )
    html = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert (
        "put_ (2 runs)" in html
        and "put\\_ (2 runs)" in (tmp_path / "out" / "report.tex").read_text()
    )

"""LaTeX escaping and the Styler table helper."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from podbench.reports.latex import latex_escape, latex_plain, styler_table


def test_latex_escape_specials_and_symbols() -> None:
    assert latex_escape("a_b & 50% $x$ #1 {y} ~ ^") == (
        r"a\_b \& 50\% \$x\$ \#1 \{y\} \textasciitilde{} \textasciicircum{}"
    )
    assert latex_escape(r"C:\dir") == r"C:\textbackslash{}dir"
    assert latex_escape("α = 0.05, 3 × 4, ±1, <tag>") == (
        r"$\alpha$ = 0.05, 3 $\times$ 4, $\pm$1, \textless{}tag\textgreater{}"
    )
    # Latin-1 letters stay (T1 + utf8 typeset them); a character pdflatex cannot set becomes ?
    assert latex_escape("Demšar ü 漢") == "Demšar ü ?"


def test_latex_plain_leaves_specials_for_the_styler() -> None:
    assert latex_plain("x_α ± 1 — 漢") == "x_alpha +/- 1 - ?"


def test_styler_table_is_booktabs_with_escaped_labels_and_bold() -> None:
    df = pd.DataFrame({"a_b": ["1.0", "2.0"], "c&d": ["3.0", "4.0"]}, index=["r%1", "r#2"])
    bold = pd.DataFrame([[True, False], [False, True]], index=df.index, columns=df.columns)
    tex = str(styler_table(df, caption="caption α_1", bold=bold, escape_cells=False))
    lines = tex.splitlines()
    assert "\\toprule" in lines and "\\midrule" in lines and "\\bottomrule" in lines
    assert " & a\\_b & c\\&d \\\\" in lines
    assert "r\\%1 & \\bfseries 1.0 & 3.0 \\\\" in lines
    assert "r\\#2 & 2.0 & \\bfseries 4.0 \\\\" in lines
    assert "\\caption{caption $\\alpha$\\_1}" in lines


def test_long_tables_break_across_pages(tmp_path: Path) -> None:
    df = pd.DataFrame(
        {"value": [f"{i}.0" for i in range(80)]}, index=[f"row_{i}" for i in range(80)]
    )
    tex = str(styler_table(df, caption="eighty rows"))
    assert "\\begin{longtable}" in tex and "\\end{longtable}" in tex and "\\toprule" in tex
    assert "\\begin{table}" not in tex  # a float cannot break across pages
    pdflatex = shutil.which("pdflatex")
    if pdflatex is None:
        pytest.skip("pdflatex not found: apt-get install texlive-latex-recommended")
    doc = (
        "\\documentclass{article}\\usepackage[T1]{fontenc}\\usepackage{booktabs}"
        "\\usepackage{longtable}\\usepackage{graphicx}\\begin{document}\n"
        + tex
        + "\\end{document}\n"
    )
    (tmp_path / "t.tex").write_text(doc, encoding="utf-8")
    proc = subprocess.run(
        [pdflatex, "-interaction=nonstopmode", "-halt-on-error", "t.tex"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "Output written on t.pdf (2 pages" in proc.stdout

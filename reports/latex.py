"""LaTeX output: booktabs tables through pandas' Styler and escaping of free text."""

from __future__ import annotations

import re
from typing import Any

import pandas as pd
from markupsafe import Markup

__all__ = ["latex_escape", "latex_plain", "main_table_latex", "rows_table", "styler_table"]

_SPECIALS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}
# Characters pdflatex's utf8 input cannot typeset in text mode, as LaTeX commands.
_UNICODE_MATH = {
    "α": r"$\alpha$",
    "χ": r"$\chi$",
    "²": r"$^2$",
    "×": r"$\times$",
    "±": r"$\pm$",
    "∞": r"$\infty$",
    "†": r"$^{\dagger}$",
    "−": r"$-$",
    "≥": r"$\geq$",
    "≤": r"$\leq$",
    "√": r"$\surd$",
    "↑": r"$\uparrow$",
    "↓": r"$\downarrow$",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
}
# The same characters as plain ASCII, for text that Styler escapes afterwards.
_UNICODE_PLAIN = {
    "α": "alpha",
    "χ": "chi",
    "²": "^2",
    "×": "x",
    "±": "+/-",
    "∞": "inf",
    "−": "-",
    "≥": ">=",
    "≤": "<=",
    "√": "sqrt",
    "↑": "(higher better)",
    "↓": "(lower better)",
    "–": "-",
    "—": "-",
    "…": "...",
    "‘": "'",
    "’": "'",
    "“": '"',
    "”": '"',
}
LONG_TABLE_ROWS = 30  # taller tables would not fit on one page as a float
_PATTERN = re.compile("|".join(re.escape(c) for c in {**_SPECIALS, **_UNICODE_MATH}))


def _fallback(ch: str) -> str:
    # T1 + utf8 covers Latin-1; anything beyond it (emoji, CJK) would stop pdflatex.
    return ch if ord(ch) < 0x250 or ch in "–—‘’“”…" else "?"


def latex_plain(text: str) -> str:
    """Text with characters pdflatex cannot typeset replaced by ASCII (specials left alone)."""
    text = "".join(_UNICODE_PLAIN.get(ch, ch) for ch in text)
    return "".join(_fallback(ch) for ch in text)


def latex_escape(text: str) -> str:
    """Escape free text for LaTeX: special characters and non-Latin symbols become commands."""
    escaped = _PATTERN.sub(lambda m: {**_SPECIALS, **_UNICODE_MATH}[m.group(0)], text)
    return "".join(_fallback(ch) for ch in escaped)


def _unique(names: list[str]) -> list[str]:
    """Distinct names (Styler needs them) when two labels look alike after ASCII fallback."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name} ({seen[name]})")
    return out


def styler_table(
    df: pd.DataFrame,
    *,
    caption: str | None = None,
    bold: pd.DataFrame | None = None,
    escape_cells: bool = True,
    column_format: str | None = None,
) -> Markup:
    """A booktabs table (``\\toprule``/``\\midrule``/``\\bottomrule``) rendered by pandas' Styler.

    Args:
        df: the table; index and column labels are escaped, and cells too when ``escape_cells``.
        caption: plain text caption (escaped here).
        bold: a boolean frame of df's shape; True cells are set in bold.
        escape_cells: False when the cells hold LaTeX written by podbench itself (marks).
        column_format: LaTeX column specification (default: ``l`` for the index, ``r`` for data).
    """
    table = df.copy()
    index = [latex_plain(str(i)) for i in table.index]
    # Styler.apply needs a unique index; plain rendering keeps repeated block names as they are.
    table.index = _unique(index) if bold is not None else index
    table.columns = _unique([latex_plain(str(c)) for c in table.columns])
    if escape_cells:
        table = table.map(lambda v: latex_plain(v) if isinstance(v, str) else v)
    styler = table.style.format(escape="latex" if escape_cells else None, na_rep="--")
    styler = styler.format_index(escape="latex", axis=0).format_index(escape="latex", axis=1)
    if bold is not None:
        mask = bold.to_numpy()
        styler = styler.apply(
            lambda _: pd.DataFrame(
                [["font-weight: bold;" if m else "" for m in row] for row in mask],
                index=table.index,
                columns=table.columns,
            ),
            axis=None,
        )
    nlevels = table.index.nlevels
    col_format = column_format or ("l" * nlevels + "r" * table.shape[1])
    cap = latex_escape(caption) if caption else None
    if len(table) > LONG_TABLE_ROWS:
        # A float cannot break across pages: long tables become longtables in small type.
        latex = styler.to_latex(
            hrules=True,
            convert_css=True,
            environment="longtable",
            caption=cap,
            column_format=col_format,
        )
        return Markup("{\\footnotesize\\setlength{\\tabcolsep}{4pt}\n" + latex + "}\n")
    latex = styler.to_latex(
        hrules=True,
        convert_css=True,
        position="htbp",
        position_float="centering",
        caption=cap,
        column_format=col_format,
    )
    # Wide tables shrink to the text width rather than run off the page.
    latex = latex.replace(
        "\\begin{tabular}",
        "\\resizebox{\\ifdim\\width>\\linewidth\\linewidth\\else\\width\\fi}{!}{%\n\\begin{tabular}",
        1,
    )
    latex = latex.replace("\\end{tabular}", "\\end{tabular}}", 1)
    return Markup(latex)


def rows_table(rows: list[dict[str, str]], caption: str, index: str) -> Markup | None:
    """A booktabs table of text rows (as built in tables.py) indexed by the column ``index``."""
    if not rows:
        return None
    df = pd.DataFrame(rows).set_index(index)
    df = df.map(lambda v: v.replace("–", "-") if isinstance(v, str) else v)
    return styler_table(df, caption=caption)


def main_table_latex(table: dict[str, Any], caption: str, marks: dict[str, str]) -> Markup:
    """The blocks × methods table: cells with LaTeX marks, the best per block in bold.

    ``marks`` maps each mark character of the HTML table to its LaTeX.
    """
    data, bold, index = [], [], []
    for row in table["rows"]:
        index.append(row["block"])
        data.append(
            [
                c["text"].replace("±", r"$\pm$").replace("–", "--").replace("†", r"$^{\dagger}$")
                + marks.get(c["mark"], "")
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
    # Cells are numbers and marks written by podbench; labels and blocks are escaped by Styler.
    return styler_table(
        df,
        caption=caption,
        bold=pd.DataFrame(bold, index=index, columns=table["labels"]),
        escape_cells=False,
    )

"""Leaderboards as tables people read: Markdown, CSV, LaTeX, HTML and the terminal; the headline columns,
bold for the best and those not significantly worse, intervals, ranks and the † of a method that scored fewer
images. The numbers come from `leaderboard.build_leaderboard`."""

from __future__ import annotations

import shutil
import textwrap

import pandas as pd

from .leaderboard import ARROW, Leaderboard

TABLE_NOTE = ("Mean [95% bootstrap interval] per method. Bold: the best method, and every method not "
              "significantly worse than it: one-sided Wilcoxon signed-rank test on paired samples (zero "
              "differences dropped), Holm-corrected over the methods of a column, alpha 0.05; set-level "
              "columns (MaxBoxAcc, sufficiency, consistency) are not tested. Rank columns: the mean rank (1 = best) "
              "over a metric family's columns. Scored: the "
              "images whose map was finite; a method marked † failed (NaN/inf map) on the others, and its "
              "means are over the images it scored.")
PARTIAL = " †"  # marks a method that scored fewer images than the run holds

# Each metric family's headline column, the first of these the run holds (else the family's first column).
HEADLINE = ("insertion", "pointing_game_parts", "pointing_game_mask", "pointing_game_box", "energy_pointing_game_box",
            "sparseness", "randomisation_spearman")
BOLD = {"md": "**{}**", "tex": "\\textbf{{{}}}", "plain": "{}", "terminal": "{}*"}


def headline_metrics(board: Leaderboard) -> list[str]:
    """One metric column per family (faithfulness, localisation, complexity, ...), in family order."""
    cells = board.cells[~board.cells["reference"]].drop_duplicates("metric")
    families = dict(zip(cells["metric"], cells["family"]))
    chosen = {}
    for metric in sorted(families, key=lambda m: HEADLINE.index(m) if m in HEADLINE else len(HEADLINE)):
        chosen.setdefault(families[metric], metric)
    return [chosen[f] for f in dict.fromkeys(families.values())]


def cell_text(cell, interval: bool = True) -> str:
    """'mean [lo, hi]' of one leaderboard cell as tables print it (percent or 3 decimals)."""
    k = cell["scale"]
    digits = 1 if k == 100 else 3
    mean = f"{k * cell['mean']:.{digits}f}"
    return f"{mean} [{k * cell['lo']:.{digits}f}, {k * cell['hi']:.{digits}f}]" if interval else mean


def wide_table(board: Leaderboard, markup: str = "md", metrics: list[str] | None = None, ranks: bool = True,
               intervals: bool = True) -> pd.DataFrame:
    """One row per (dataset, method): acc@1, acc@5, each metric (default: all; `metrics` picks and orders
    them) as 'mean [lo, hi]' (`intervals`) and, with `ranks`, the mean rank per metric family.

    `markup` decides how bold is written: md (**x**), tex (\\textbf{x}), html (<b>x</b>), plain."""
    wrap = BOLD[markup]
    out = []
    for dataset in dict.fromkeys(board.cells["dataset"]):
        cells = board.cells[board.cells["dataset"] == dataset]
        acc = board.accuracy[board.accuracy["dataset"] == dataset].set_index("method")
        for method in dict.fromkeys(cells["method"]):
            row = {"dataset": dataset, "method": method + (PARTIAL if partial(acc, method) else "")}
            if method in acc.index:  # unlabelled samples have no accuracy (NaN): left blank
                for key, column in (("acc1", "acc@1"), ("acc5", "acc@5")):
                    value = acc.loc[method, key]
                    row[column] = "" if pd.isna(value) else f"{100 * value:.1f}"
                if metrics is None and "scored" in acc.columns:
                    row["scored"] = f"{int(acc.loc[method, 'scored'])} of {int(acc.loc[method, 'images'])}"
            mine = cells[cells["method"] == method]
            shown = mine if metrics is None else mine[mine["metric"].isin(metrics)]
            for _, c in shown.iterrows():
                text = cell_text(c, intervals)
                row[f"{c['metric']} {ARROW[c['direction']]}"] = wrap.format(text) if c["bold"] else text
            if ranks and not mine["reference"].all():
                for family, family_ranks in mine.groupby("family", sort=False)["rank"]:
                    row[f"rank: {family}"] = f"{family_ranks.mean():.2f}"
            out.append(row)
    table = pd.DataFrame(out)
    if metrics is not None:
        order = {f"{m} {arrow}": i for i, m in enumerate(metrics) for arrow in ARROW.values()}
        lead = [c for c in ("dataset", "method", "acc@1", "acc@5") if c in table.columns]
        table = table[lead + sorted((c for c in table.columns if c in order), key=order.get)
                      + [c for c in table.columns if c not in order and c not in lead]]
    if table["dataset"].nunique() == 1:
        table = table.drop(columns="dataset")
    return table.fillna("")


def partial(accuracy: pd.DataFrame, method: str) -> bool:
    """Whether `method` (a row of a board's accuracy frame, indexed by method) scored fewer images than it has."""
    if method not in accuracy.index or "scored" not in accuracy.columns:
        return False
    return int(accuracy.loc[method, "scored"]) < int(accuracy.loc[method, "images"])


def headline_table(board: Leaderboard, markup: str = "md", intervals: bool = True) -> pd.DataFrame:
    """method, acc@1 and each family's headline metric (`headline_metrics`)."""
    table = wide_table(board, markup, headline_metrics(board), ranks=False, intervals=intervals)
    return table.drop(columns=[c for c in ("acc@5",) if c in table.columns])


def terminal_table(board: Leaderboard, width: int | None = None, files: str | None = None) -> str:
    """The headline table fitted to `width` characters (default: the terminal's): intervals dropped,
    then columns from the right, if it does not fit; ends with what the marks mean and where the full
    tables are."""
    width = width or shutil.get_terminal_size((120, 24)).columns

    def render(table: pd.DataFrame) -> str:
        align = ["left" if c in ("dataset", "method") else "right" for c in table.columns]
        return table.to_markdown(index=False, disable_numparse=True, colalign=align)

    table = headline_table(board, "terminal")
    text = render(table)
    notes = ["mean [95% bootstrap interval]; *: the best, or not significantly worse (paired Wilcoxon, Holm)"]
    if _widest(text) > width:
        table = headline_table(board, "terminal", intervals=False)
        text = render(table)
        notes[0] = "mean (95% intervals in the files); *: the best, or not significantly worse (paired Wilcoxon, Holm)"
    dropped = []
    while _widest(text) > width and len(table.columns) > 2:
        dropped.insert(0, table.columns[-1])
        table = table.iloc[:, :-1]
        text = render(table)
    if dropped:
        notes.append("not shown: " + ", ".join(dropped))
    notes.append(f"every column: {files}" if files else "every column: `xbench leaderboard --full`")
    wrapped = [line for note in notes
               for line in textwrap.wrap(note, width, break_long_words=False, break_on_hyphens=False)]
    across = cross_run_ranks(board)
    if across is not None:
        wrapped += ["", "Mean rank (1 = best) per run and over the runs:",
                    across.to_markdown(floatfmt=".2f")]
    return "\n".join([text, *wrapped])


def _widest(text: str) -> int:
    return max(len(line) for line in text.splitlines())


def cross_run_ranks(board: Leaderboard) -> pd.DataFrame | None:
    """Methods x runs: each method's mean rank over a run's metric columns, and over the runs it is in
    (None for a single run)."""
    cells = board.cells[~board.cells["reference"]]
    if cells["dataset"].nunique() < 2:
        return None
    table = cells.pivot_table(index="method", columns="dataset", values="rank", aggfunc="mean", sort=False)
    table["mean over runs"] = table.mean(axis=1)
    return table.sort_values("mean over runs")


def to_markdown(board: Leaderboard) -> str:
    text = wide_table(board, "md").to_markdown(index=False) + "\n\n" + TABLE_NOTE + "\n"
    across = cross_run_ranks(board)
    if across is not None:
        text += ("\nMean rank (1 = best) over each run's metric columns, and over the runs:\n\n"
                 + across.to_markdown(floatfmt=".2f") + "\n")
    return text


LATEX_PACKAGES = "% Needs \\usepackage{booktabs} (rules) and \\usepackage{graphicx} (\\resizebox of the full table).\n"


def _latex_tabular(table: pd.DataFrame) -> list[str]:
    columns = [c.replace("_", "\\_").replace("↑", "$\\uparrow$").replace("↓", "$\\downarrow$")
               for c in table.columns]
    text_columns = 2 if "dataset" in table.columns else 1
    spec = "l" * text_columns + "r" * (len(columns) - text_columns)
    lines = ["\\begin{tabular}{" + spec + "}", "\\toprule", " & ".join(columns) + " \\\\", "\\midrule"]
    lines += [" & ".join(str(v).replace("_", "\\_") for v in row) + " \\\\" for _, row in table.iterrows()]
    return lines + ["\\bottomrule", "\\end{tabular}"]


def to_latex(board: Leaderboard) -> str:
    """Two floats: the headline table (one metric per family) and the full table scaled to the text
    width (table*, for two-column papers); the packages they need are named at the top."""
    families = ", ".join(f"{c['family']}: {c['metric']}".replace("_", "\\_")
                         for _, c in board.cells.drop_duplicates("metric").iterrows()
                         if c["metric"] in headline_metrics(board))
    note = TABLE_NOTE.replace("%", "\\%").replace("_", "\\_")
    lines = [LATEX_PACKAGES, "\\begin{table}[t]", "\\centering", "\\small",
             *_latex_tabular(headline_table(board, "tex")),
             f"\\caption{{Headline metrics ({families}). {note}}}", "\\label{tab:xbench-headline}",
             "\\end{table}", "", "\\begin{table*}[t]", "\\centering",
             "\\resizebox{\\textwidth}{!}{%", *_latex_tabular(wide_table(board, "tex")), "}",
             f"\\caption{{Every metric. {note}}}", "\\label{tab:xbench-full}", "\\end{table*}"]
    return "\n".join(lines) + "\n"


def to_html(board: Leaderboard) -> str:
    """leaderboard.html: the report's full table, sortable, on a page of its own (one HTML table builder)."""
    from .html import leaderboard_page  # jinja2 and the templates, only when HTML is written

    return leaderboard_page(board)


def write_leaderboard(board: Leaderboard, out_dir, formats=("md", "csv", "tex", "html")) -> list:
    """Write leaderboard.<format> files; csv holds every cell with its CI, p-values and flags."""
    from pathlib import Path

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        path = out_dir / f"leaderboard.{fmt}"
        if fmt == "md":
            path.write_text(to_markdown(board))
        elif fmt == "csv":
            cells = board.cells.merge(board.accuracy, on=["dataset", "method"], how="left")
            cells.to_csv(path, index=False)
        elif fmt == "tex":
            path.write_text(to_latex(board))
        elif fmt == "html":
            path.write_text(to_html(board))
        else:
            raise ValueError(f"unknown leaderboard format {fmt!r}; choose from md, csv, tex, html")
        written.append(path)
    return written

"""Reports from a results store: leaderboards, figures and the HTML page (no recomputation).

Reports read only the store (rows, curves, maps and each column's description), so they never
import the models, explainers or metrics. Figures (matplotlib, seaborn) load on first use.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from ..engine.store import load_columns, load_results
from .leaderboard import Leaderboard, build_leaderboard, combine
from .tables import terminal_table, to_markdown, write_leaderboard

__all__ = ["Leaderboard", "build_leaderboard", "combine", "write_leaderboard", "to_markdown", "terminal_table",
           "all_figures",
           "explanation_figure", "write_report", "write_tensorboard", "leaderboard_of", "full_report"]

_LAZY = {"all_figures": ".figures", "explanation_figure": ".image_figures", "write_report": ".html",
         "write_tensorboard": ".tensorboard"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def leaderboard_of(run_dirs: list[str | Path], seed: int = 0) -> Leaderboard:
    """The leaderboard of one run, or of several stacked with a dataset column; runs of the same
    dataset are labelled by their directory instead."""
    loaded = [(Path(run), *load_results(run)) for run in run_dirs]
    names = [str(rows["dataset"].iloc[0]) if len(rows) else run.name for run, rows, _ in loaded]
    if len(set(names)) < len(names):
        names = [str(run) for run, _, _ in loaded]
    boards = [build_leaderboard(rows, curves, load_columns(run), dataset=name, seed=seed)
              for (run, rows, curves), name in zip(loaded, names)]
    return boards[0] if len(boards) == 1 else combine(boards)


def full_report(run_dir: str | Path, formats=("md", "csv", "tex", "html"), tensorboard: bool = True) -> dict:
    """Leaderboard files, every figure, report.html and (`tensorboard`) <run>/tensorboard/ for one run, and
    for a run with causal scores meta.md/csv and funnybirds.csv; returns what was written."""
    from .causal import causal_tables, has_causal, write_meta
    from .figures import all_figures
    from .html import write_report

    run_dir = Path(run_dir)
    board = leaderboard_of([run_dir])
    tables = write_leaderboard(board, run_dir, formats)
    causal = causal_tables(run_dir) if has_causal(load_results(run_dir)[0]) else None
    if causal is not None:
        tables += write_meta(run_dir, causal)
    figures = all_figures(run_dir, board, causal=causal)
    page = write_report(run_dir, board, figures, causal=causal)
    written = {"board": board, "tables": tables, "figures": figures, "report": page, "causal": causal}
    if tensorboard:
        from .tensorboard import write_tensorboard

        written["tensorboard"] = write_tensorboard(board, run_dir / "tensorboard")
    return written

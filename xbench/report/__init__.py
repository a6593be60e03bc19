"""Reports from a results store: leaderboards, figures and the HTML page (no recomputation)."""

from __future__ import annotations

from pathlib import Path

from ..engine.store import load_results
from .figures import all_figures
from .html import write_report
from .leaderboard import Leaderboard, build_leaderboard, combine, to_markdown, write_leaderboard

__all__ = ["Leaderboard", "build_leaderboard", "combine", "write_leaderboard", "to_markdown", "all_figures",
           "write_report", "leaderboard_of", "full_report"]


def leaderboard_of(run_dirs: list[str | Path], seed: int = 0) -> Leaderboard:
    """The leaderboard of one run, or of several stacked with a dataset column."""
    boards = []
    for run in run_dirs:
        rows, curves = load_results(run)
        boards.append(build_leaderboard(rows, curves, seed=seed))
    return boards[0] if len(boards) == 1 else combine(boards)


def full_report(run_dir: str | Path, formats=("md", "csv", "tex", "html")) -> dict:
    """Leaderboard files, every figure and report.html for one run; returns what was written."""
    run_dir = Path(run_dir)
    board = leaderboard_of([run_dir])
    tables = write_leaderboard(board, run_dir, formats)
    figures = all_figures(run_dir, board)
    page = write_report(run_dir, board, figures)
    return {"board": board, "tables": tables, "figures": figures, "report": page}

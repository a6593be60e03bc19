"""Every metric's mean and 95% CI per method: python scripts/figures/dotplot.py results/<run>"""

from _common import load

from xbench.report import leaderboard_of
from xbench.report.figures import dotplot_figure

if __name__ == "__main__":
    args, rows, curves, maps, out = load(__doc__)
    print("\n".join(map(str, dotplot_figure(leaderboard_of([args.run]), out))))

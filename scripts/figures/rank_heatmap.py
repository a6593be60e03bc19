"""Method x metric rank heatmap: python scripts/figures/rank_heatmap.py results/<run>"""

from _common import load

from xbench.report import leaderboard_of
from xbench.report.figures import rank_heatmap

if __name__ == "__main__":
    args, rows, curves, maps, out = load(__doc__)
    print("\n".join(map(str, rank_heatmap(leaderboard_of([args.run]), out))))

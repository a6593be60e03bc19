"""Insertion and deletion curves per method (mean, 95% bootstrap band): python scripts/figures/curves.py results/<run>"""

from _common import load

from xbench.report.figures import curves_figure

if __name__ == "__main__":
    args, rows, curves, maps, out = load(__doc__)
    print("\n".join(map(str, curves_figure(rows, curves, out))))

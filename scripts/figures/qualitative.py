"""Qualitative grid (images x methods, saliency overlaid, boxes drawn): python scripts/figures/qualitative.py results/<run>"""

from _common import load

from xbench.report.figures import qualitative_grid

if __name__ == "__main__":
    args, rows, curves, maps, out = load(__doc__)
    print("\n".join(map(str, qualitative_grid(maps, list(dict.fromkeys(rows["method"])), out))))

"""INTR/ICN per-head cross-attention (true class and top-k): python scripts/figures/intr_heads.py results/<run>"""

import json

from _common import load

from xbench.report.image_figures import intr_heads_figure

if __name__ == "__main__":
    args, rows, curves, maps, out = load(__doc__)
    classes = json.loads((args.run / "summary.json").read_text()).get("classes")
    for model in ("intr", "icn"):
        print("\n".join(map(str, intr_heads_figure(maps, out, model, class_names=classes))))

"""report.html: one self-contained page (figures embedded) with the leaderboard, the figures,
the run summary, the resolved config and the package versions."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from .leaderboard import Leaderboard, to_html

STYLE = """
body { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1200px; color: #222; line-height: 1.4; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table.leaderboard { border-collapse: collapse; font-size: 0.8em; }
table.leaderboard th, table.leaderboard td { padding: 4px 8px; border-bottom: 1px solid #eee; text-align: right; }
table.leaderboard td:first-child, table.leaderboard th:first-child { text-align: left; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.85em; color: #555; }
pre { background: #f6f8fa; padding: 1em; overflow-x: auto; font-size: 0.8em; }
"""

CAPTIONS = {
    "curves": "Insertion and deletion curves: mean over samples with a 95% bootstrap band.",
    "dotplot": "Every metric per method: mean and 95% bootstrap interval (red: best or not significantly worse).",
    "rank_heatmap": "Rank of each method on each metric (1 = best) and the average rank.",
    "qualitative": "Saliency overlaid on images (a fixed seeded choice, then those whose maps disagree most); "
                   "ground-truth boxes in white.",
    "intr_heads": "INTR: cross-attention of each head for the true class and the top predicted classes.",
    "icn_heads": "ICN: cross-attention of each head for the true class and the top predicted classes.",
}


def _embed(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    caption = CAPTIONS.get(path.stem, path.stem)
    return (f'<figure><img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def write_report(run_dir: str | Path, board: Leaderboard, figures: list[Path], out: str | Path | None = None) -> Path:
    run_dir = Path(run_dir)
    out = Path(out) if out else run_dir / "report.html"
    summary = json.loads((run_dir / "summary.json").read_text())
    config = (run_dir / "config.yaml").read_text() if (run_dir / "config.yaml").exists() else ""
    versions = (run_dir / "provenance.json").read_text() if (run_dir / "provenance.json").exists() else "{}"
    shown = {k: v for k, v in summary.items() if k not in ("classes", "skipped_files", "dataset_problems")}
    skipped = summary.get("skipped_files", []) + summary.get("dataset_problems", [])
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>xbench report: {html.escape(run_dir.name)}</title><style>{STYLE}</style></head><body>",
        f"<h1>xbench report: {html.escape(str(summary.get('dataset', run_dir.name)))}</h1>",
        f"<p>{summary.get('samples', '?')} samples of the {html.escape(str(summary.get('split', '?')))} split, "
        f"{len(summary.get('methods', []))} methods, protocol {html.escape(str(summary.get('protocol', '?')))}, "
        f"explaining the {'ground-truth' if summary.get('target') == 'gt' else 'predicted'} class.</p>",
        "<h2>Leaderboard</h2><p>Mean [95% bootstrap CI]; ↑ higher / ↓ lower is better; bold: best, or not "
        "significantly worse (Wilcoxon signed-rank, Holm-corrected, alpha 0.05). Values in [0, 1] are shown "
        "as percentages.</p>",
        to_html(board),
        "<h2>Figures</h2>",
        *(_embed(p) for p in figures if p.suffix == ".png"),
        "<h2>Run</h2>", f"<pre>{html.escape(json.dumps(shown, indent=2))}</pre>",
    ]
    if skipped:
        parts.append(f"<p>{len(skipped)} file(s) skipped or annotation problem(s):</p><pre>"
                     + html.escape("\n".join(f"{s['path']}: {s['reason']}" for s in skipped)) + "</pre>")
    parts += ["<h2>Resolved config</h2>", f"<pre>{html.escape(config)}</pre>",
              "<h2>Versions</h2>", f"<pre>{html.escape(versions)}</pre>", "</body></html>"]
    out.write_text("\n".join(parts))
    return out

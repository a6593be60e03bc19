"""report.html: one self-contained page laid out for reading.

- a headline table (one metric per family, `headline_metrics`), then every column in a scroll
  container; both sort by a click on a column header;
- the figures with captions, embedded as compressed PNG (palette-quantised, at most 1200 px wide,
  so the quickstart's page stays under 2 MB);
- the models as they ran (models.json: architecture, parameters, weights and their sha256, training
  recipe, accuracy here) and the run (provenance.json and summary.json: date, hardware, versions,
  commit, command, data) as tables; the resolved config folded away.
The page never scrolls sideways at 1280 px or wider: only the full table's own container does.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import pandas as pd

from .leaderboard import ARROW, Leaderboard
from .tables import PARTIAL, TABLE_NOTE, cell_text, headline_metrics, partial

WEB_WIDTH = 1200  # px: the width of the page's column (wider images are only scaled down by the browser)

STYLE = """
:root { --ink: #1f2328; --muted: #59636e; --rule: #d1d9e0; --soft: #f6f8fa; --accent: #0969da; }
* { box-sizing: border-box; }
body { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; color: var(--ink);
       line-height: 1.45; margin: 0; }
main { max-width: 1240px; margin: 0 auto; padding: 1.5em 1.5em 4em; }
h1 { font-size: 1.6em; margin: 0.2em 0; } h2 { font-size: 1.25em; margin-top: 2em; padding-bottom: 0.2em;
  border-bottom: 1px solid var(--rule); }
p.meta { color: var(--muted); margin-top: 0; } nav a { margin-right: 1.2em; color: var(--accent); }
p.note, figcaption { font-size: 0.85em; color: var(--muted); }
.scroll { overflow-x: auto; width: fit-content; max-width: 100%; border: 1px solid var(--rule); border-radius: 6px; }
table { border-collapse: collapse; font-size: 0.85em; line-height: 1.45; }
th, td { padding: 5px 10px; border-bottom: 1px solid var(--rule); white-space: nowrap; text-align: right;
         vertical-align: top; }
th { background: var(--soft); font-weight: 600; position: sticky; top: 0; }
th.sortable { cursor: pointer; } th.sortable:hover { color: var(--accent); }
th:first-child, td:first-child { text-align: left; position: sticky; left: 0; background: #fff; }
th:first-child { background: var(--soft); z-index: 1; }
td .ci { color: var(--muted); font-size: 0.85em; } td b .ci { font-weight: 600; }
tr.reference td { color: var(--muted); font-style: italic; }
table.facts td, table.facts th { white-space: normal; text-align: left; position: static; }
table.facts td:first-child { color: var(--muted); width: 12em; }
table.models td, table.models th { white-space: normal; text-align: left; }
table.models td.number, table.models th.number { text-align: right; }
code, .hash { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 0.9em; }
td .detail { color: var(--muted); font-size: 0.85em; display: block; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; height: auto; border: 1px solid var(--rule); }
details { margin: 1em 0; } summary { cursor: pointer; color: var(--accent); }
pre { background: var(--soft); padding: 1em; overflow-x: auto; font-size: 0.8em; }
"""

SORT_SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th.sortable").forEach(function (th, column) {
    th.addEventListener("click", function () {
      var body = table.tBodies[0], descending = th.dataset.order !== "desc";
      var rows = Array.from(body.rows).filter(function (r) { return !r.classList.contains("reference"); });
      var fixed = Array.from(body.rows).filter(function (r) { return r.classList.contains("reference"); });
      rows.sort(function (a, b) {
        var x = a.cells[column].dataset.value, y = b.cells[column].dataset.value;
        if (x === undefined || y === undefined) { x = a.cells[column].textContent; y = b.cells[column].textContent;
          return descending ? y.localeCompare(x) : x.localeCompare(y); }
        x = x === "" ? -Infinity : +x; y = y === "" ? -Infinity : +y;
        return descending ? y - x : x - y;
      });
      rows.concat(fixed).forEach(function (r) { body.appendChild(r); });
      table.querySelectorAll("th").forEach(function (h) { delete h.dataset.order; });
      th.dataset.order = descending ? "desc" : "asc";
    });
  });
});
"""

CAPTIONS = {
    "curves": "Insertion and deletion curves: the mean over samples with a 95% bootstrap band; one colour family "
              "per model, baselines grey and dotted.",
    "dotplot": "Every metric per method: mean and 95% bootstrap interval (red: the best, or not significantly worse).",
    "rank_heatmap": "Rank of each method on each metric (1 = best), and the mean rank per metric family.",
    "qualitative": "Saliency overlaid on images: a fixed seeded choice, then the images whose maps disagree most; "
                   "ground-truth boxes in white.",
    "intr_heads": "INTR: cross-attention of each head for the true class and the top predicted classes.",
    "icn_heads": "ICN: cross-attention of each head for the true class and the top predicted classes.",
    "part_importance": "Per method: each part's share of the model's logit drop when that part alone is removed by "
                       "re-rendering (grey), next to its share of the map's mass on the parts' dilated masks (colour).",
    "meta_agreement": "Spearman's rho of each metric with single deletion (in-distribution part removal), across "
                      "methods and across images, with 95% bootstrap intervals; lower-is-better metrics sign-flipped.",
}
CAUSAL_FIGURES = ("part_importance", "meta_agreement")


def web_png(path: Path) -> bytes:
    """The figure as a palette PNG at most WEB_WIDTH wide: a fraction of the size of the 200-dpi file."""
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB")
        if img.width > WEB_WIDTH:
            img = img.resize((WEB_WIDTH, round(img.height * WEB_WIDTH / img.width)), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        img.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG).save(
            buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _figure(path: Path) -> str:
    data = base64.b64encode(web_png(path)).decode("ascii")
    caption = CAPTIONS.get(path.stem, path.stem)
    return (f'<figure id="figure-{html.escape(path.stem)}"><img alt="{html.escape(caption)}" '
            f'src="data:image/png;base64,{data}"><figcaption>{html.escape(caption)}</figcaption></figure>')


def leaderboard_table(board: Leaderboard, metrics: list[str] | None = None, ranks: bool = True) -> str:
    """The leaderboard as a sortable HTML table: acc@1, acc@5, `metrics` (default: all) as
    'mean [lo, hi]' (bold: best or not significantly worse), and the mean rank per family."""
    full = metrics is None and "scored" in board.accuracy.columns  # the full table says how many each scored
    metrics = metrics or board.metrics()
    several = board.cells["dataset"].nunique() > 1
    cells = board.cells.set_index(["dataset", "method", "metric"])
    accuracy = board.accuracy.set_index(["dataset", "method"])
    families = board.cells.drop_duplicates("metric").set_index("metric")["family"]
    family_names = list(dict.fromkeys(families[metrics])) if ranks else []
    directions = board.cells.drop_duplicates("metric").set_index("metric")["direction"]
    head = (["dataset"] if several else []) + ["method", "acc@1"] + (["scored"] if full else []) \
        + [f"{m} {ARROW[directions[m]]}" for m in metrics] + [f"rank: {f}" for f in family_names]
    lines = ["<thead><tr>" + "".join(f'<th class="sortable">{html.escape(h)}</th>' for h in head) + "</tr></thead>",
             "<tbody>"]
    for (dataset, method), mine in board.cells.groupby(["dataset", "method"], sort=False):
        reference = bool(mine["reference"].all())
        row = [f"<td>{html.escape(str(dataset))}</td>"] if several else []
        mine_accuracy = accuracy.loc[dataset] if dataset in accuracy.index.get_level_values(0) else accuracy.iloc[:0]
        marked = method + (PARTIAL if partial(mine_accuracy, method) else "")
        row.append(f"<td>{html.escape(marked)}</td>")
        acc = accuracy["acc1"].get((dataset, method), float("nan"))
        row.append(f'<td data-value="{"" if pd.isna(acc) else acc}">{"" if pd.isna(acc) else f"{100 * acc:.1f}"}</td>')
        if full:
            scored, images = (accuracy[k].get((dataset, method), float("nan")) for k in ("scored", "images"))
            shown = "" if pd.isna(scored) else f"{int(scored)} of {int(images)}"
            row.append(f'<td data-value="{"" if pd.isna(scored) else scored}">{shown}</td>')
        for metric in metrics:
            key = (dataset, method, metric)
            if key not in cells.index:
                row.append('<td data-value=""></td>')
                continue
            cell = cells.loc[key]
            mean, _, interval = cell_text(cell).partition(" ")
            text = f'{mean} <span class="ci">{interval}</span>'
            signed = cell["mean"] if cell["direction"] == "higher" else -cell["mean"]  # a click sorts best first
            row.append(f'<td data-value="{signed}">{f"<b>{text}</b>" if cell["bold"] else text}</td>')
        for family in family_names:
            ranked = mine[(mine["family"] == family) & ~mine["reference"]]["rank"]
            value = ranked.mean() if len(ranked) else float("nan")
            shown = "" if pd.isna(value) else f"{value:.2f}"
            row.append(f'<td data-value="{"" if pd.isna(value) else -value}">{shown}</td>')
        lines.append(f'<tr{" class=reference" if reference else ""}>' + "".join(row) + "</tr>")
    lines.append("</tbody>")
    return '<table class="sortable leaderboard">' + "".join(lines) + "</table>"


def _facts(pairs: list[tuple[str, str]]) -> str:
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v}</td></tr>" for k, v in pairs if v not in (None, ""))
    return f'<table class="facts"><tbody>{rows}</tbody></table>'


def _architecture(info: dict) -> str:
    arch = dict(info.get("architecture") or {})
    name = arch.pop("model", "?")
    backbone = arch.pop("backbone", None)
    options = ", ".join(f"{k} {v}" for k, v in arch.items() if v not in (None, [], {}))
    main = f"{html.escape(str(name))}" + (f" · {html.escape(str(backbone))}" if backbone else "")
    return main + (f'<span class="detail">{html.escape(options)}</span>' if options else "")


def _weights(info: dict) -> str:
    path = str(info.get("file", ""))
    digest = str(info.get("sha256", ""))
    return (f'<span title="{html.escape(path)}">{html.escape(Path(path).name)}</span>'
            f'<span class="detail">{html.escape(str(info.get("format") or ""))}</span>'
            f'<span class="detail hash" title="{html.escape(digest)}">sha256 {html.escape(digest[:16])}…</span>')


def _training(info: dict) -> str:
    training = info.get("training")
    if not training:
        return '<span class="detail">not trained by xbench</span>'
    recipe = training.get("recipe") or {}
    epochs = f"best after epoch {training.get('epochs_done')} of {recipe.get('epochs', '?')}"
    best = training.get("best_val_acc1")
    head = f"{html.escape(str(training.get('dataset') or ''))}, {epochs}"
    if best is not None:
        head += f", val acc@1 {100 * best:.1f}"
    shown = ("optimizer", "lr", "batch_size", "schedule", "weight_decay", "warmup_epochs", "label_smoothing", "precision")
    detail = ", ".join(f"{k} {recipe[k]}" for k in shown if k in recipe and (recipe[k] not in (None, [], 0.0)
                                                                           or k == "lr"))
    return head + f'<span class="detail">{html.escape(detail)}</span>'


def models_section(models: dict, board: Leaderboard) -> str:
    if not models:
        return "<p class='note'>This run did not record its models (models.json).</p>"
    accuracy = board.accuracy.groupby("model", sort=False)[["acc1", "acc5"]].first()
    rows = []
    for name, info in models.items():
        acc = accuracy.loc[name] if name in accuracy.index else None
        scored = "" if acc is None or pd.isna(acc["acc1"]) else f"{100 * acc['acc1']:.1f} / {100 * acc['acc5']:.1f}"
        classes = f"{info.get('outputs', '?')}" + (f'<span class="detail">names from {html.escape(str(info["class_names_from"]))}</span>'
                                                   if info.get("class_names_from") else "")
        parameters = info.get("parameters")
        rows.append(f"<tr><td>{html.escape(name)}</td><td>{_architecture(info)}</td>"
                    f"<td class='number'>{'' if parameters is None else f'{parameters / 1e6:.2f} M'}</td>"
                    f"<td class='number'>{classes}</td><td>{_weights(info)}</td><td>{_training(info)}</td>"
                    f"<td class='number'>{scored}</td></tr>")
    numbers = ("parameters", "classes", "acc@1 / acc@5 here")
    head = "".join(f"<th{' class=number' if h in numbers else ''}>{h}</th>"
                   for h in ("model", "architecture", "parameters", "classes", "weights", "training",
                             "acc@1 / acc@5 here"))
    return f'<div class="scroll"><table class="models"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def run_section(run_dir: Path, summary: dict, provenance: dict) -> str:
    run = _json(run_dir / "run.json")
    data = (run.get("config") or {}).get("dataset") or {}
    versions = ", ".join(f"{k} {v}" for k, v in (provenance.get("versions") or {}).items())
    seconds = summary.get("seconds_this_run")
    device = str(provenance.get("device", "")) + (f" ({provenance['gpu']})" if provenance.get("gpu") else "")
    hardware = f"{device}; {provenance.get('cpus', '?')} CPU cores; {provenance.get('platform', '')}"
    facts = [
        ("date", html.escape(str(provenance.get("date", "")))),
        ("command", f"<code>{html.escape(str(provenance.get('command', '')))}</code>"),
        ("directory", f"<code>{html.escape(str(provenance.get('cwd', '')))}</code>"),
        ("commit", f"<code>{html.escape(str(provenance.get('git_commit') or 'not a git checkout'))}</code>"),
        ("hardware", html.escape(hardware) if provenance else ""),
        ("Python and packages", html.escape(f"Python {provenance.get('python', '?')}; {versions}") if provenance else ""),
        ("data", html.escape(f"{summary.get('dataset', '?')} ({data.get('format', '?')}) at {data.get('root', '?')}, "
                             f"{summary.get('split', '?')} split, {summary.get('samples', '?')} images")),
        ("data manifest", f'<span class="hash">sha256 {html.escape(str(run.get("manifest", "")))}</span>'
         if run.get("manifest") else ""),
        ("protocol", html.escape(f"{summary.get('protocol', '?')}, explaining the "
                                 f"{'ground-truth' if summary.get('target') == 'gt' else 'predicted'} class")),
        ("metrics", html.escape(", ".join(summary.get("metrics", [])))),
        ("evaluation time", f"{seconds:.0f} s (this run)" if isinstance(seconds, (int, float)) else ""),
    ]
    return _facts(facts)


def _plain_table(table: pd.DataFrame, floats: str = "{:.3f}") -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(floats.format(v) if isinstance(v, float) else str(v))}</td>"
                                    for v in row) + "</tr>" for row in table.itertuples(index=False))
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def causal_section(causal: dict, figures: list[Path]) -> str:
    """FunnyBirds' summary per method, which metrics agree with single deletion, and the causal figures."""
    from .causal import agreement_display

    shown = agreement_display(causal["agreement"]).drop(columns=["methods", "image pairs"])
    return "".join([
        "<h2 id='causal'>Causal ground truth</h2>",
        "<p class='note'>Each image re-rendered with parts removed (in distribution): FunnyBirds' protocols. CSDC, PC, "
        "DC and D at the threshold that maximises (CSDC + PC + DC) / 3 + D; completeness ((CSDC + PC + DC) / 3 + D) / 2, "
        "correctness SD, contrastivity TS, as the FunnyBirds paper reports them.</p>",
        _plain_table(causal["summary"]),
        "<p class='note'>Which metric agrees with what the model uses: Spearman's rho with single deletion, "
        "lower-is-better metrics sign-flipped, 95% bootstrap intervals (meta.md).</p>",
        _plain_table(shown),
        *(_figure(p) for p in figures if p.suffix == ".png" and p.stem in CAUSAL_FIGURES),
    ])


def write_report(run_dir: str | Path, board: Leaderboard, figures: list[Path], out: str | Path | None = None,
                 causal: dict | None = None) -> Path:
    from ..engine.store import load_models

    run_dir = Path(run_dir)
    out = Path(out) if out else run_dir / "report.html"
    summary = json.loads((run_dir / "summary.json").read_text())
    provenance = _json(run_dir / "provenance.json")
    config = (run_dir / "config.yaml").read_text() if (run_dir / "config.yaml").exists() else ""
    skipped = summary.get("skipped_files", []) + summary.get("dataset_problems", [])
    headline = headline_metrics(board)
    families = board.cells.drop_duplicates("metric").set_index("metric")["family"]
    chosen = "; ".join(f"{families[m]}: {m}" for m in headline)
    title = html.escape(str(summary.get("dataset", run_dir.name)))
    meta = " · ".join(x for x in (
        f"{summary.get('samples', '?')} {html.escape(str(summary.get('split', '?')))} images",
        f"{len(summary.get('methods', []))} methods", f"protocol {html.escape(str(summary.get('protocol', '?')))}",
        f"{'ground-truth' if summary.get('target') == 'gt' else 'predicted'} class explained",
        html.escape(str(provenance.get("date", ""))[:16].replace("T", " ")),
        html.escape(str(provenance.get("device", "")))) if x)
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>xbench report: {title}</title><style>{STYLE}</style></head><body><main>",
        f"<h1>xbench report: {title}</h1><p class='meta'>{meta}</p>",
        "<nav><a href='#leaderboard'>Leaderboard</a>" + ("<a href='#causal'>Causal</a>" if causal else "")
        + "<a href='#figures'>Figures</a><a href='#models'>Models</a><a href='#run'>Run</a></nav>",
        "<h2 id='leaderboard'>Leaderboard</h2>",
        f"<p class='note'>One headline metric per family ({html.escape(chosen)}); every metric below. "
        f"{html.escape(TABLE_NOTE)} Values in [0, 1] are percentages. Click a column to sort.</p>",
        f"<div class='scroll'>{leaderboard_table(board, headline, ranks=False)}</div>",
        f"<details><summary>Every metric ({len(board.metrics())} columns, with the mean rank per family)</summary>"
        f"<div class='scroll'>{leaderboard_table(board)}</div></details>",
        causal_section(causal, figures) if causal else "",
        "<h2 id='figures'>Figures</h2>",
        *(_figure(p) for p in figures if p.suffix == ".png" and p.stem not in CAUSAL_FIGURES),
        "<h2 id='models'>Models</h2>", models_section(load_models(run_dir), board),
        "<h2 id='run'>Run</h2>", run_section(run_dir, summary, provenance),
    ]
    if skipped:
        parts.append(f"<p class='note'>{len(skipped)} file(s) skipped or annotation problem(s):</p><pre>"
                     + html.escape("\n".join(f"{s['path']}: {s['reason']}" for s in skipped)) + "</pre>")
    parts += [f"<details><summary>Resolved config (config.yaml)</summary><pre>{html.escape(config)}</pre></details>",
              f"</main><script>{SORT_SCRIPT}</script></body></html>"]
    out.write_text("\n".join(parts))
    return out

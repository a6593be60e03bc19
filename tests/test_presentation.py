"""Presentation: figures legible for 4 to 24 methods (no overlapping text, distinct styles), the
terminal table sized to the terminal, the LaTeX tables, and report.html laid out for reading (no
horizontal overflow in Chromium at 1280 and 1920 px, models and run sections, size)."""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
from html.parser import HTMLParser

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from xbench.engine.explain import Explanation
from xbench.metrics import column_table
from xbench.report import build_leaderboard, terminal_table
from xbench.report.figures import draw_curves, draw_dotplot, draw_qualitative, draw_rank_heatmap
from xbench.report.html import WEB_WIDTH
from xbench.report.image_figures import draw_explanation, draw_heads, short_class_names
from xbench.report.style import method_styles, overlapping_texts
from xbench.report.tables import LATEX_PACKAGES, headline_metrics, to_latex

from .conftest import CHROMIUM

MODELS = ("cnn", "ca_stream", "intr", "vit_small")
EXPLAINERS = ("gradcam", "gradcampp", "scorecam", "layercam", "integrated_gradients", "rise")
SCORES = ("insertion", "deletion", "drop", "increase", "gain", "pointing_game_parts", "pointing_game_box",
          "energy_pointing_game_box", "mass_accuracy_box", "rank_accuracy_box", "sparseness", "complexity",
          "randomisation_spearman")
FIGURE_ORDER = ["curves", "dotplot", "rank_heatmap", "qualitative", "intr_heads"]
LONG_NAMES = ["Boeing 737-800 with split scimitar winglets", "Black_footed_Albatross", "Cessna 172",
              "Rose-breasted Grosbeak (first-winter male)", "A-10"]


def method_names(n: int) -> list[str]:
    """n methods as a user stacks them: explainers on every model, the three baselines last."""
    explained = [f"{e}@{m}" for m in MODELS for e in EXPLAINERS][:n - 3]
    return explained + ["random@cnn", "centre@cnn", "uniform@cnn"]


def synthetic_run(n_methods: int, samples: int = 24, seed: int = 0):
    """(rows, curves, maps) shaped as a results store of `n_methods` methods."""
    rng = np.random.default_rng(seed)
    methods = method_names(n_methods)
    rows = pd.DataFrame([{"method": m, "index": i, "label": i % 5, "acc1": float(rng.random() < 0.8),
                          "acc5": 1.0, **{s: rng.random() for s in SCORES},
                          "pointing_centre_parts": float(i % 2), "pointing_centre_box": float(i % 3 > 0)}
                         for m in methods for i in range(samples)])
    rows["complexity"] *= 10
    positions = np.arange(len(rows))
    steps = np.linspace(0, 1, 17)
    speed = rng.uniform(1, 6, (len(rows), 1))
    curves = {"insertion_curve": 1 - np.exp(-speed * steps), "insertion_curve.row": positions,
              "deletion_curve": np.exp(-speed * steps), "deletion_curve.row": positions,
              "box_hits_v1": rng.random((len(rows), 100)) < 0.5, "box_hits_v1.row": positions}
    maps = {}
    for i in range(8):
        maps[f"image|{i}"] = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
        maps[f"box|{i}"] = np.array([[4.0, 5.0, 20.0, 28.0]])
        for m in methods:
            maps[f"saliency|{m}|{i}"] = rng.random((8, 8)).astype(np.float16)
    maps["heads|intr|3"] = rng.random((4, 8, 8, 8)).astype(np.float16)
    maps["headclasses|intr|3"] = np.array([1, 3, 0, 4])
    maps["topk|intr|3"] = np.array([[3, 0.61], [0, 0.2], [4, 0.1]])
    return rows, curves, maps


@pytest.fixture(scope="module", params=[4, 12, 24], ids=lambda n: f"{n}_methods")
def synthetic(request):
    rows, curves, maps = synthetic_run(request.param)
    return request.param, rows, curves, maps, build_leaderboard(rows, curves, column_table(), resamples=200)


def _no_overlap(fig):
    try:
        assert overlapping_texts(fig) == []
    finally:
        plt.close(fig)


def test_curves_have_no_overlapping_text(synthetic):
    _, rows, curves, _, _ = synthetic
    _no_overlap(draw_curves(rows, curves))


def test_dotplot_has_no_overlapping_text(synthetic):
    _no_overlap(draw_dotplot(synthetic[4]))


def test_rank_heatmap_has_no_overlapping_text(synthetic):
    _no_overlap(draw_rank_heatmap(synthetic[4]))


def test_qualitative_grid_has_no_overlapping_text(synthetic):
    _, rows, _, maps, _ = synthetic
    _no_overlap(draw_qualitative(maps, list(dict.fromkeys(rows["method"]))))


def test_heads_figure_with_long_class_names_has_no_overlapping_text(synthetic):
    _, _, _, maps, _ = synthetic
    fig = draw_heads(maps, "intr", class_names=LONG_NAMES)
    texts = " ".join(t.get_text() for t in fig.findobj(plt.Text))
    assert "Rose-breasted Grosbeak (first-winter male)" in texts.replace("\n", " ")  # the full name, in the legend
    _no_overlap(fig)


def test_overlap_check_finds_overlapping_labels():
    fig, ax = plt.subplots()
    ax.text(0.5, 0.5, "#464 disagree")
    ax.text(0.5, 0.5, "#2 disagree")
    assert overlapping_texts(fig) == [("#464 disagree", "#2 disagree")]
    plt.close(fig)


def test_explanation_figure_wraps_long_names_without_overlap():
    rng = np.random.default_rng(1)
    explanation = Explanation(image=rng.random((32, 32, 3)), saliency=rng.random((32, 32)),
                              top_k=[(name, p) for name, p in zip(LONG_NAMES, (0.5, 0.2, 0.1, 0.1, 0.05))],
                              target=LONG_NAMES[0], method="attention@intr", heads=rng.random((5, 8, 8, 8)))
    fig = draw_explanation(explanation)
    fig.canvas.draw()  # tick labels get their text when drawn
    shown = " ".join(t.get_text() for t in fig.findobj(plt.Text)).replace("\n", " ")
    for name in LONG_NAMES:  # wrapped, never cut
        assert name in shown
    _no_overlap(fig)


def test_method_styles_stay_distinct_for_24_methods():
    methods = method_names(24)
    styles = method_styles(methods)
    looks = {(tuple(np.round(s["color"], 3)), str(s["linestyle"]), s["marker"]) for s in styles.values()}
    assert len(looks) == 24
    colours = {m: tuple(np.round(s["color"], 3)) for m, s in styles.items() if not m.startswith(("random", "centre",
                                                                                                     "uniform"))}
    assert len(set(colours.values())) == len(colours)  # explained methods differ by colour alone
    for baseline in ("random@cnn", "centre@cnn", "uniform@cnn"):  # greys, dotted
        r, g, b, _ = styles[baseline]["color"]
        assert r == g == b and styles[baseline]["linestyle"] == ":"
    # one colour family per model: gradcam@cnn is closer in hue to rise@cnn than to gradcam@intr
    hue = {m: plt.matplotlib.colors.rgb_to_hsv(np.array(c[:3]))[0] for m, c in colours.items()}
    assert abs(hue["gradcam@cnn"] - hue["rise@cnn"]) < abs(hue["gradcam@cnn"] - hue["gradcam@intr"])


def test_short_class_names_keep_cub_numbers_and_list_the_rest():
    labels, legend = short_class_names(["001.Black_footed_Albatross", "Cessna 172", LONG_NAMES[0]])
    assert labels == ["001", "Cessna 172", "Boeing 737-…"]
    assert legend == ["001: Black_footed_Albatross", f"Boeing 737-…: {LONG_NAMES[0]}"]


def test_terminal_table_fits_the_terminal_and_names_the_files(synthetic):
    n, _, _, _, board = synthetic
    for width in (80, 120, 200):
        text = terminal_table(board, width=width, files="results/x/leaderboard.md")
        lines = text.splitlines()
        assert max(len(line) for line in lines) <= width, (width, max(map(len, lines)))
        assert "results/x/leaderboard.md" in text
        assert sum(line.lstrip("| ").startswith(("gradcam@", "random@")) for line in lines) >= 2
    wide = terminal_table(board, width=400)
    for metric in headline_metrics(board):
        assert metric in wide
    assert "insertion" in terminal_table(board, width=80)  # the first headline column survives


def test_headline_is_one_metric_per_family(synthetic):
    board = synthetic[4]
    headline = headline_metrics(board)
    families = board.cells.drop_duplicates("metric").set_index("metric")["family"]
    assert headline == ["insertion", "pointing_game_parts", "sparseness", "randomisation_spearman"]
    assert len(set(families[headline])) == len(headline) == families.nunique()


def test_latex_names_its_packages_and_has_a_headline_and_a_full_table(synthetic):
    board = synthetic[4]
    tex = to_latex(board)
    assert tex.startswith(LATEX_PACKAGES) and "booktabs" in LATEX_PACKAGES and "graphicx" in LATEX_PACKAGES
    assert tex.count("\\begin{table}") == 1 and tex.count("\\begin{table*}") == 1
    assert "\\resizebox{\\textwidth}{!}" in tex
    specs = re.findall(r"\\begin\{tabular\}\{([lrc]+)\}", tex)
    ranks = board.cells.loc[~board.cells["reference"], "family"].nunique()
    # headline: method, acc@1, metrics; full: method, acc@1, acc@5, scored, metrics, ranks
    assert [len(s) for s in specs] == [2 + len(headline_metrics(board)), 4 + len(board.metrics()) + ranks]


# ---------------------------------------------------------------- report.html


@pytest.fixture(scope="module")
def report(reported_run):
    run, written = reported_run
    return run, written["report"]


class _Sections(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.tables, self.images, self.text = [], [], 0, []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.append(attrs["id"])
        if tag == "table":
            self.tables.append(attrs.get("class", ""))
        self.images += tag == "img"

    def handle_data(self, data):
        self.text.append(data)


def test_report_has_headline_models_and_run_sections(report):
    run, page = report
    parser = _Sections()
    parser.feed(page.read_text())
    text = " ".join(parser.text)
    assert {"leaderboard", "figures", "models", "run"} <= set(parser.ids)
    assert parser.tables.count("sortable leaderboard") == 2 and "models" in parser.tables
    models = json.loads((run / "models.json").read_text())
    provenance = json.loads((run / "provenance.json").read_text())
    for name, info in models.items():
        assert name in text and info["sha256"][:16] in text
    assert provenance["date"] in text and provenance["command"] in text
    assert "torch " + provenance["versions"]["torch"] in text
    assert json.loads((run / "run.json").read_text())["manifest"] in text
    assert "figcaption" in page.read_text() and parser.images >= 5
    methods = json.loads((run / "summary.json").read_text())["methods"]
    assert sorted(p.name for p in (run / "tensorboard").iterdir() if p.is_dir()) == sorted(methods)


def test_report_embeds_figures_as_small_palette_pngs(report):
    run, page = report
    sources = re.findall(r'src="data:image/png;base64,([^"]+)"', page.read_text())
    assert len(sources) == len(list((run / "figures").glob("*.png")))
    embedded = full = 0
    for source, path in zip(sources, sorted((run / "figures").glob("*.png"), key=lambda p: FIGURE_ORDER.index(p.stem))):
        data = base64.b64decode(source)
        with Image.open(io.BytesIO(data)) as img, Image.open(path) as original:
            assert img.mode == "P" and img.width == min(WEB_WIDTH, original.width)
            assert abs(img.height / img.width - original.height / original.width) < 0.01  # not distorted
        embedded, full = embedded + len(data), full + path.stat().st_size
    assert embedded < 0.6 * full
    assert page.stat().st_size < 1_500_000  # the tiny run's page (the quickstart's is under 2 MB)


@pytest.mark.slow
@pytest.mark.chromium
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
@pytest.mark.parametrize("width", [1280, 1920])
def test_report_does_not_overflow_horizontally_in_chromium(report, tmp_path, width):
    _, page = report
    probe = tmp_path / "probe.html"
    # The page measures itself once laid out and writes the numbers into the DOM that --dump-dom prints.
    script = ("<script>window.addEventListener('load', function () {"
              "var d = document.documentElement, wrapped = 0;"
              "document.querySelectorAll('table.leaderboard td, table.leaderboard th').forEach(function (c) {"
              "  var line = parseFloat(getComputedStyle(c).lineHeight);"
              "  if (c.getBoundingClientRect().height > 2 * line + 12) { wrapped += 1; } });"
              "var out = document.createElement('pre'); out.id = 'probe';"
              "out.textContent = JSON.stringify({scroll: d.scrollWidth, inner: window.innerWidth, wrapped: wrapped});"
              "document.body.appendChild(out); });</script>")
    probe.write_text(page.read_text().replace("</body>", script + "</body>"))
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                          "--disable-background-networking", "--disable-component-update", "--disable-sync",
                          f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars",
                          f"--window-size={width},1000", "--virtual-time-budget=5000", "--dump-dom",
                          probe.resolve().as_uri()], check=True, capture_output=True, text=True, timeout=120).stdout
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom)
    assert found, dom[-2000:]
    measured = json.loads(found.group(1).replace("&quot;", '"'))
    assert measured["inner"] == width
    assert measured["scroll"] <= measured["inner"], measured
    assert measured["wrapped"] == 0, measured


def test_tensorboard_holds_every_cell_and_the_headline(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from xbench.report import write_tensorboard

    rows, curves, _ = synthetic_run(6)
    board = build_leaderboard(rows, curves, column_table(), resamples=200)
    out = write_tensorboard(board, tmp_path / "tensorboard")
    scored = board.cells[~board.cells["reference"]]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(scored["method"].unique())
    for method, mine in scored.groupby("method"):
        events = EventAccumulator(str(out / method)).Reload()
        for _, cell in mine.iterrows():
            tag = f"{cell['family']}/{cell['metric']}"
            for suffix, key in (("", "mean"), ("/lo", "lo"), ("/hi", "hi")):
                (value,) = events.Scalars(tag + suffix)
                assert value.step == 0 and value.value == pytest.approx(cell["scale"] * cell[key], rel=1e-6)
        acc = board.accuracy.set_index("method").loc[method, "acc1"]
        assert events.Scalars("accuracy/acc1")[0].value == pytest.approx(100 * acc, rel=1e-6)
    text = EventAccumulator(str(out)).Reload().Tensors("leaderboard/text_summary")[0].tensor_proto.string_val[0]
    assert b"gradcam@cnn" in text and b"insertion" in text
    write_tensorboard(board, out)  # a rewrite replaces the events rather than adding to them
    assert len(EventAccumulator(str(out / "gradcam@cnn")).Reload().Scalars("faithfulness/insertion")) == 1

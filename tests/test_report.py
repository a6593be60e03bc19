"""Reports: leaderboard numbers, CIs, bold, figures, the HTML page (and a Chromium render), explain."""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.stats import wilcoxon
from typer.testing import CliRunner

from xbench.cli import app
from xbench.engine.explain import explain_image
from xbench.engine.store import load_results
from xbench.metrics import column_table
from xbench.report import (
    build_leaderboard,
    explanation_figure,
    leaderboard_of,
    write_leaderboard,
)
from xbench.report.leaderboard import CENTRE, holm
from xbench.report.tables import wide_table

from .conftest import CHROMIUM


@pytest.fixture(scope="module")
def written(reported_run):
    return reported_run[1]


@pytest.fixture(scope="module")
def board(run):
    rows, curves = load_results(run)
    return build_leaderboard(rows, curves, column_table())


def _cell(board, method, metric):
    cells = board.cells
    return cells[(cells["method"] == method) & (cells["metric"] == metric)].iloc[0]


def test_table_numbers_equal_a_direct_pandas_computation(run, board):
    rows, curves = load_results(run)
    means = rows.groupby("method")["insertion"].mean()
    class_means = rows.groupby(["method", "label"])["pointing_game_parts"].mean().groupby("method").mean()
    for method in rows["method"].unique():
        assert _cell(board, method, "insertion")["mean"] == pytest.approx(means[method], abs=1e-12)
        assert _cell(board, method, "pointing_game_parts")["mean"] == pytest.approx(class_means[method], abs=1e-12)
        picked = rows.index[rows["method"] == method]
        hits = curves["box_hits_v1"][np.isin(curves["box_hits_v1.row"], picked)]
        assert _cell(board, method, "max_box_acc")["mean"] == pytest.approx(hits.astype(float).mean(0).max(), abs=1e-12)
        acc = board.accuracy.set_index("method").loc[method]
        assert acc["acc1"] == pytest.approx(rows.loc[rows["method"] == method, "acc1"].mean())
    centre = rows.drop_duplicates("index")
    reference = centre.groupby("label")["pointing_centre_box"].mean().mean()
    assert _cell(board, CENTRE, "pointing_game_box")["mean"] == pytest.approx(reference)


def test_confidence_intervals_contain_the_mean(board):
    cells = board.cells
    assert ((cells["lo"] <= cells["mean"] + 1e-12) & (cells["mean"] <= cells["hi"] + 1e-12)).all()
    assert (cells.loc[~cells["reference"], "hi"] > cells.loc[~cells["reference"], "lo"]).any()


def test_bold_marks_the_best_and_those_not_significantly_worse(run, board):
    rows, _ = load_results(run)
    for metric, direction in (("insertion", "higher"), ("deletion", "lower"), ("sparseness", "higher")):
        cells = board.cells[(board.cells["metric"] == metric)].set_index("method")
        best = (cells["mean"].idxmax() if direction == "higher" else cells["mean"].idxmin())
        assert cells.loc[best, "bold"] and cells.loc[best, "best"] and cells["best"].sum() == 1
        pivot = rows.pivot(index="index", columns="method", values=metric)
        worse = "greater" if direction == "higher" else "less"  # H1: the method is worse than the best
        raw = {m: wilcoxon(pivot[best], pivot[m], zero_method="wilcox", alternative=worse, method="exact").pvalue
               for m in pivot if m != best and (pivot[best] != pivot[m]).any()}
        for m, p in holm(raw).items():  # holm: against a hand-checked table below
            assert cells.loc[m, "p_holm"] == pytest.approx(p)
            assert bool(cells.loc[m, "bold"]) == (p >= 0.05)
    md = wide_table(board, "md")
    best_insertion = board.cells[(board.cells["metric"] == "insertion") & board.cells["best"]].iloc[0]["method"]
    assert md.set_index("method").loc[best_insertion, "insertion ↑"].startswith("**")


def test_every_figure_is_written(run, written):
    paths = written["figures"]
    names = {p.name for p in paths}
    for stem in ("curves", "dotplot", "rank_heatmap", "qualitative", "intr_heads"):
        assert {f"{stem}.png", f"{stem}.pdf"} <= names
    for path in paths:
        assert path.stat().st_size > 1000
    with Image.open(run / "figures" / "intr_heads.png") as img:
        assert img.width > 600


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources, self.tables = [], 0

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs)["src"])
        self.tables += tag == "table"


def test_html_report_is_self_contained(run, written):
    page = written["report"].read_text()
    parser = _Images()
    parser.feed(page)
    pngs = [p for p in written["figures"] if p.suffix == ".png"]
    assert len(parser.sources) == len(pngs) >= 5
    assert all(src.startswith("data:image/png;base64,") for src in parser.sources)
    assert parser.tables == 4 and "Resolved config" in page  # headline, every metric, models, run and "grad-cam" in page
    for fmt in ("md", "csv", "tex", "html"):
        assert (run / f"leaderboard.{fmt}").stat().st_size > 100
    tex = (run / "leaderboard.tex").read_text()
    assert "\\toprule" in tex and "\\textbf{" in tex and "$\\uparrow$" in tex
    csv = pd.read_csv(run / "leaderboard.csv")
    assert {"mean", "lo", "hi", "p_holm", "bold", "acc1"} <= set(csv.columns)


def test_several_runs_stack_with_a_dataset_column(run, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(run, other)
    rows = pd.read_csv(other / "results.csv")
    rows["dataset"] = "synth2"
    rows.to_csv(other / "results.csv", index=False)
    board = leaderboard_of([run, other])
    table = wide_table(board, "plain")
    assert list(table["dataset"].unique()) == ["synth", "synth2"]
    assert (board.cells.groupby("dataset")["best"].sum() > 0).all()
    written = write_leaderboard(board, tmp_path, ["md"])
    assert "synth2" in written[0].read_text()


def test_leaderboard_command(run, tmp_path):
    run = shutil.copytree(run, tmp_path / "run")  # the command writes its tables into the run: not the shared one
    result = CliRunner().invoke(app, ["leaderboard", str(run), "--format", "md,csv"])
    assert result.exit_code == 0, result.output
    assert "insertion ↑" in result.output and "attention@intr" in result.output
    narrow = CliRunner().invoke(app, ["leaderboard", str(run), "--format", "md"], env={"COLUMNS": "90"})
    assert max(map(len, narrow.output.splitlines())) <= 90 and "leaderboard.md" in narrow.output
    full = CliRunner().invoke(app, ["leaderboard", str(run), "--format", "md", "--full"], env={"COLUMNS": "90"})
    assert "max_box_acc_v2 ↑" in full.output and "max_box_acc_v2" not in narrow.output
    bad = CliRunner().invoke(app, ["leaderboard", str(run), "--format", "docx"])
    assert bad.exit_code == 2 and "unknown leaderboard format 'docx'" in bad.output
    missing = CliRunner().invoke(app, ["figures", str(run / "nothing")])
    assert missing.exit_code == 2 and "holds no results.csv" in missing.output


def test_explain_one_image(tiny_run_setup, tmp_path):
    base, _ = tiny_run_setup
    image = next((base / "data" / "images").rglob("*.png"))
    out = explain_image("intr", image, base / "runs" / "synth" / "intr" / "best.pt", top_k=2)
    explanation_figure(out, tmp_path / "intr.png")
    assert len(out.top_k) == 2 and out.top_k[0][0].startswith("00")
    assert (tmp_path / "intr.png").stat().st_size > 5000
    result = CliRunner().invoke(app, ["explain", "--method", "gradcam@ca_stream", "--image", str(image), "--checkpoint",
                                      str(base / "runs" / "synth" / "ca_stream" / "best.pt"), "--out",
                                      str(tmp_path / "ca.png"), "--target", "1"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "ca.png").exists() and "explained 002." in result.output
    wrong = CliRunner().invoke(app, ["explain", "--method", "intr", "--image", str(image), "--checkpoint",
                                     str(base / "runs" / "synth" / "cnn" / "best.pt")])
    assert wrong.exit_code == 2 and "holds a 'cnn' model, not the 'intr' model" in wrong.output


@pytest.mark.slow
@pytest.mark.chromium
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(written, tmp_path):
    page = written["report"]
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars", "--window-size=1200,1600",
                    f"--screenshot={shot}", page.resolve().as_uri()], check=True, capture_output=True, timeout=120)
    with Image.open(shot) as img:
        pixels = np.asarray(img.convert("L"), dtype=np.float32)
    assert pixels.shape == (1600, 1200)
    assert pixels.std() > 10  # not a blank page
    assert (pixels < 128).mean() > 0.01  # there is text and imagery, not only white


def test_leaderboard_of_bare_rows_fills_in_the_bookkeeping():
    rng = np.random.default_rng(0)
    rows = pd.DataFrame({"method": ["a@m"] * 20 + ["b@m"] * 20,
                         "insertion": np.r_[rng.uniform(0.6, 0.9, 20), rng.uniform(0.1, 0.4, 20)]})
    board = build_leaderboard(rows, {}, column_table())
    cells = board.cells.set_index("method")
    assert cells.loc["a@m", "mean"] == pytest.approx(rows["insertion"][:20].mean())
    assert bool(cells.loc["a@m", "bold"]) and not bool(cells.loc["b@m", "bold"])  # paired by sample order
    assert wide_table(board, "plain").loc[0, "acc@1"] == ""  # unknown accuracy is left blank
    with pytest.raises(ValueError, match="need a 'method' column"):
        build_leaderboard(rows.drop(columns="method"), {}, column_table())


def test_holm_correction_matches_a_hand_checked_table():
    """Holm (1979): sort the m p-values, multiply the i-th smallest by m - i (i from 0), keep the running
    maximum, cap at 1. Worked by hand: 0.005 x 4 = 0.02; 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04 ->
    0.06 (monotone); 0.5 x ... capped at 1."""
    assert holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.005}) == pytest.approx(
        {"a": 0.03, "b": 0.06, "c": 0.06, "d": 0.02})
    assert holm({"a": 0.5, "b": 0.6}) == pytest.approx({"a": 1.0, "b": 1.0})
    assert holm({}) == {}


@pytest.mark.parametrize("kind", ["mean", "class_mean"])
def test_confidence_intervals_agree_with_scipy_bootstrap(kind):
    """The leaderboard's 95% percentile interval against scipy.stats.bootstrap (percentile method, images
    resampled with their labels), each from 4000 resamples of its own: equal up to Monte Carlo error."""
    from scipy.stats import bootstrap

    from xbench.metrics import column

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 300)
    values = rng.normal(labels * 0.1, 0.3)
    rows = pd.DataFrame({"method": "m", "index": np.arange(300), "label": labels, "score": values})
    columns = {"score": {**column("higher", kind), "family": "test"}}
    cell = build_leaderboard(rows, {}, columns, resamples=4000).cells.set_index("metric").loc["score"]

    def statistic(v, lab):
        return v.mean() if kind == "mean" else np.mean([v[lab == c].mean() for c in np.unique(lab)])

    reference = bootstrap((values, labels), statistic, paired=True, vectorized=False, n_resamples=4000,
                          confidence_level=0.95, method="percentile", rng=np.random.default_rng(1))
    width = reference.confidence_interval.high - reference.confidence_interval.low
    assert cell["lo"] == pytest.approx(reference.confidence_interval.low, abs=0.05 * width)
    assert cell["hi"] == pytest.approx(reference.confidence_interval.high, abs=0.05 * width)


def test_leaderboard_html_is_the_reports_full_table_and_escapes_what_it_shows(tmp_path):
    from xbench.report.html import leaderboard_table
    from xbench.report.tables import to_html

    rows = pd.DataFrame({"method": ["<script>x</script>@cnn"] * 4 + ["random@cnn"] * 4, "index": list(range(4)) * 2,
                         "label": [0, 1, 0, 1] * 2, "sparseness": [0.1, 0.2, 0.3, 0.4, 0.5, 0.5, 0.6, 0.7]})
    board = build_leaderboard(rows, {}, column_table(["sparseness"]), resamples=50)
    page = to_html(board)
    assert "<script>x</script>" not in page and "&lt;script&gt;x&lt;/script&gt;@cnn" in page
    assert page.count('<table class="sortable leaderboard">') == 1 and "sparseness ↑" in page
    table = leaderboard_table(board)
    assert table["head"][:3] == ["method", "acc@1", "scored"] and len(table["rows"]) == 2
    best = [r for r in table["rows"] if r["cells"][0]["text"] == "random@cnn"][0]["cells"][3]
    assert best["bold"] and best["value"] == pytest.approx(board.cells.set_index("method").loc["random@cnn", "mean"])

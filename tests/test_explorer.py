"""The report's image explorer: thumbnails of every image stored by the engine, the files and data next to
report.html, and the interactions in a real browser (Playwright driving the system Chromium)."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from xbench.engine.store import load_results, load_thumbnails, merge_thumbnails
from xbench.engine.thumbnails import MAP_PX, THUMB_PX
from xbench.report.explorer import TRUTH_COLOURS, map_disagreement, map_levels, palette

from .conftest import CHROMIUM


@pytest.fixture(scope="module")
def data(reported_run):
    text = (reported_run[1]["report"].parent / "explorer" / "data.js").read_text()
    return json.loads(text[text.index("=") + 1:].strip().rstrip(";"))


def test_every_image_has_thumbnails_equal_to_its_stored_maps(run):
    rows, _ = load_results(run)
    thumbs = load_thumbnails(run)
    assert sorted(thumbs["index"].tolist()) == sorted(rows["index"].unique().tolist())
    methods = list(dict.fromkeys(rows["method"]))
    assert all(thumbs[f"saliency|{m}"].shape == (len(thumbs["index"]), MAP_PX, MAP_PX) for m in methods)
    row_of = {int(i): r for r, i in enumerate(thumbs["index"])}
    ends = np.cumsum(thumbs["jpeg_length"])
    with np.load(run / "maps.npz") as figures:
        shown = [int(k.split("|")[2]) for k in figures.files if k.startswith("saliency|gradcam@cnn|")]
        assert shown
        for idx in shown:  # the figure samples keep full maps: their thumbnail is the area mean, in 1/255ths
            full = torch.from_numpy(figures[f"saliency|gradcam@cnn|{idx}"].astype(np.float32))
            small = F.interpolate(full[None, None], size=(MAP_PX, MAP_PX), mode="area")[0, 0].numpy()
            stored = thumbs["saliency|gradcam@cnn"][row_of[idx]].astype(np.float32) / 255
            assert np.abs(stored - small).max() <= 1 / 255 + 1e-3
            image = figures[f"image|{idx}"]
            row = row_of[idx]
            jpeg = thumbs["jpeg"][ends[row] - thumbs["jpeg_length"][row]:ends[row]].tobytes()
            with Image.open(io.BytesIO(jpeg)) as decoded:
                assert decoded.size == (THUMB_PX, THUMB_PX)
                thumb = np.asarray(decoded.convert("RGB"), np.float32)
            expected = np.asarray(Image.fromarray(image).resize((THUMB_PX, THUMB_PX), Image.Resampling.BILINEAR),
                                  np.float32)
            assert np.abs(thumb - expected).mean() < 12  # JPEG at quality 85 of the same pixels
    codes = np.unique(thumbs["truth"])
    assert set(codes.tolist()) == {0, 1, 2}  # background, object, discriminative parts of the synthetic birds
    boxes = thumbs["box"][np.isfinite(thumbs["box"]).all(-1)]
    assert len(boxes) and (boxes >= 0).all() and (boxes <= 1).all() and (boxes[:, 2] > boxes[:, 0]).all()


def test_merging_shards_keeps_rows_and_pads_boxes():
    one = {"index": np.array([3]), "box": np.zeros((1, 2, 4), np.float32), "truth": np.zeros((1, 2, 2), np.uint8),
           "jpeg": np.array([1, 2], np.uint8), "jpeg_length": np.array([2]), "saliency|a@m": np.ones((1, 2, 2), np.uint8)}
    two = {**one, "index": np.array([5]), "box": np.ones((1, 1, 4), np.float32), "jpeg": np.array([9], np.uint8),
           "jpeg_length": np.array([1])}
    merged = merge_thumbnails([one, {}, two])
    assert merged["index"].tolist() == [3, 5] and merged["jpeg"].tolist() == [1, 2, 9]
    assert merged["box"].shape == (2, 2, 4) and np.isnan(merged["box"][1, 1]).all() and (merged["box"][1, 0] == 1).all()
    assert merge_thumbnails([]) == {}


def test_map_disagreement_on_constructed_maps():
    a = np.arange(16, dtype=np.uint8).reshape(1, 4, 4)
    maps = np.concatenate([a, a, 15 - a, np.full_like(a, 7)])
    other = np.concatenate([a, 2 * a, a, a])
    got = map_disagreement(maps, other)
    assert got[:3] == pytest.approx([0.0, 0.0, 2.0]) and np.isnan(got[3])  # alike, alike scaled, opposite, constant


def test_explorer_files_and_data_equal_the_store(run, data, reported_run):
    rows, _ = load_results(run)
    folder = reported_run[1]["report"].parent / "explorer"
    thumbs = load_thumbnails(run)
    methods = list(dict.fromkeys(rows["method"]))
    assert [m["label"] for m in data["methods"]] == methods and data["tiles"] == 1 + len(methods)
    assert data["index"] == thumbs["index"].tolist()
    lut = palette()
    for row, idx in enumerate(data["index"]):
        assert (folder / "img" / f"{idx}.jpg").is_file()
        with Image.open(folder / "map" / f"{idx}.png") as strip:
            assert strip.mode == "P" and strip.size == (MAP_PX * (1 + len(methods)), MAP_PX)
            rgba = np.asarray(strip.convert("RGBA"))
        truth = thumbs["truth"][row]
        assert (rgba[:, :MAP_PX, 3][truth == 0] == 0).all()  # clear background, tinted object and parts
        assert (rgba[:, :MAP_PX][truth == 2] == TRUTH_COLOURS[2]).all()
        for k, method in enumerate(methods, 1):  # each tile is its map's value through the palette
            expected = lut[map_levels(thumbs[f"saliency|{method}"][row])]
            assert (rgba[:, k * MAP_PX:(k + 1) * MAP_PX] == expected).all()
    names = [m["name"] for m in data["metrics"]]
    assert "insertion" in names and "deletion" in names
    for method in methods:
        mine = rows[rows["method"] == method].set_index("index").loc[data["index"]]
        for name in names:
            expected = [None if np.isnan(v) else round(float(v), 4) for v in mine[name]]
            assert data["scores"][method][name] == expected
    first = rows.drop_duplicates(["index", "model"]).set_index(["model", "index"])
    for model in data["models"]:
        assert data["correct"][model] == [bool(first.loc[(model, i), "acc1"]) for i in data["index"]]
    a, b = data["pairs"][0]
    expected = map_disagreement(thumbs[f"saliency|{methods[a]}"], thumbs[f"saliency|{methods[b]}"])
    assert data["disagreement"][0] == [None if np.isnan(v) else round(float(v), 3) for v in expected]
    assert data["heads"]["intr"]["heads"] > 1 and data["heads"]["intr"]["images"]  # the figure samples' heads
    for idx in data["heads"]["intr"]["images"]:
        assert (folder / "heads" / f"intr_{idx}.png").is_file()


def test_a_run_without_thumbnails_has_no_explorer(run, tmp_path):
    from xbench.report.explorer import write_explorer

    bare = tmp_path / "old_run"
    shutil.copytree(run, bare, ignore=shutil.ignore_patterns("thumbs.npz", "explorer", "*.thumbs.npz"))
    assert write_explorer(bare, bare, ["insertion"]) is None and not (bare / "explorer").exists()


@pytest.mark.slow
@pytest.mark.chromium
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
def test_filter_sort_and_open_an_image_in_chromium(reported_run, data):
    sync_api = pytest.importorskip("playwright.sync_api")
    page_path = reported_run[1]["report"]
    errors = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(page_path.resolve().as_uri())
        cards = page.locator(".ex-card")
        n = len(data["index"])
        assert cards.count() == min(24, n)
        assert page.locator("#ex-count").text_content().startswith(f"{n} of {n} images")
        # Filter by class: every card shown is of that class, and all of them are.
        chosen = data["classes"][1]
        page.select_option("#ex-class", str(chosen["label"]))
        of_class = [i for i, label in zip(data["index"], data["label"]) if label == chosen["label"]]
        assert sorted(int(c) for c in cards.evaluate_all("cs => cs.map(c => c.dataset.index)")) == sorted(of_class)
        page.select_option("#ex-class", "")
        # Wrong predictions of a model: exactly its misclassified images.
        model = data["models"][0]
        page.select_option("#ex-model", model)
        page.select_option("#ex-correct", "wrong")
        wrong = [i for i, hit in zip(data["index"], data["correct"][model]) if hit is False]
        shown = cards.evaluate_all("cs => cs.map(c => +c.dataset.index)")
        assert sorted(shown) == sorted(wrong)[:24]
        page.select_option("#ex-correct", "")
        # Sort by insertion of method A, highest first: the order of the stored scores.
        a = 0
        page.select_option("#ex-a", str(a))
        page.select_option("#ex-sort", "metric:insertion")
        scores = data["scores"][data["methods"][a]["label"]]["insertion"]
        expected = sorted(range(n), key=lambda r: (scores[r] is None, -(scores[r] or 0), r))[:24]
        assert cards.evaluate_all("cs => cs.map(c => +c.dataset.index)") == [data["index"][r] for r in expected]
        # Open the first image large: every method side by side, then step on and close.
        cards.first.click()
        large = page.locator("#ex-large")
        assert page.locator("#ex-modal").is_visible()
        assert large.locator(".ex-figure").count() >= 1 + len(data["methods"])
        assert large.locator("h3").text_content().startswith(f"#{data['index'][expected[0]]} ")
        page.keyboard.press("ArrowRight")
        assert large.locator("h3").text_content().startswith(f"#{data['index'][expected[1]]} ")
        page.keyboard.press("Escape")
        assert not page.locator("#ex-modal").is_visible()
        browser.close()
    assert errors == []


def test_comparing_two_methods_equals_a_direct_paired_test(run, tmp_path):
    from scipy.stats import wilcoxon
    from typer.testing import CliRunner

    from xbench.cli import app
    from xbench.report.compare import compare
    from xbench.report.leaderboard import holm

    table = compare(run, run, [("random@cnn", "gradcam@cnn")])
    rows, _ = load_results(run)
    a = rows[rows["method"] == "random@cnn"].set_index("index")["insertion"]
    b = rows[rows["method"] == "gradcam@cnn"].set_index("index")["insertion"].loc[a.index]
    got = table[table["metric"] == "insertion"].iloc[0]
    assert got["images"] == len(a) and got["B - A"] == pytest.approx(b.mean() - a.mean())
    assert got["p"] == pytest.approx(wilcoxon(b, a, zero_method="wilcox", method="exact" if len(a) <= 50 else "approx").pvalue)
    adjusted = holm(dict(enumerate(table["p"])))
    assert table["p (Holm)"].tolist() == pytest.approx([adjusted[i] for i in range(len(table))])
    accuracy = table[table["metric"] == "acc1"].iloc[0]  # the same model: the same predictions, no difference
    assert accuracy["B - A"] == 0 and accuracy["p"] == 1.0 and accuracy["verdict"] == "no significant difference"
    for row in table.itertuples(index=False):
        if row[9] < 0.05 and row[7] != 0:
            assert row[10] == ("B better" if (row[7] > 0) == (row[3] == "higher") else "A better")
    result = CliRunner().invoke(app, ["report", str(run), str(run), "--pair", "random@cnn=gradcam@cnn",
                                      "--out", str(tmp_path / "cmp")])
    assert result.exit_code == 0, result.output
    assert "| random@cnn" in result.output and (tmp_path / "cmp" / "comparison.html").is_file()
    assert "B better" in (tmp_path / "cmp" / "comparison.md").read_text() or "no significant" in result.output


def test_comparison_refuses_other_data_and_unknown_methods(run, tmp_path):
    from xbench.report.compare import compare

    other = tmp_path / "relabelled"
    shutil.copytree(run, other, ignore=shutil.ignore_patterns("explorer", "shards", "figures"))
    rows = pd.read_csv(other / "results.csv")
    first = rows["index"].iloc[0]
    rows.loc[rows["index"] == first, "label"] = rows.loc[rows["index"] == first, "label"] + 1
    rows.to_csv(other / "results.csv", index=False)
    with pytest.raises(ValueError, match=f"label image {first} differently"):
        compare(run, other)
    with pytest.raises(ValueError, match=r"no such method: nothing@cnn \(in "):
        compare(run, run, [("nothing@cnn", "gradcam@cnn")])
    rows = pd.read_csv(run / "results.csv").assign(split="val")
    rows.to_csv(other / "results.csv", index=False)
    with pytest.raises(ValueError, match="evaluated different data"):
        compare(run, other)

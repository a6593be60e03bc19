"""The report's image explorer at 120 and at 5,000 images x 12 methods: writing it, its size on disk, and
in headless Chromium (Playwright driving the system browser) the page's load, the JavaScript heap and
the time a sort and a filter take, each size in the same run so that the ratio to 120 images is read
off one machine.

The runs are generated, not evaluated: results.csv rows with random scores for 12 methods on 4 models,
thumbnails of smooth random pictures and maps (the sizes a real run stores), so that only the report's
cost is measured. Load is the time from navigation until the explorer is scrolled to and every card
image in the window is shown; the heap is Chromium's JSHeapUsedSize after that.

    python benchmarks/report_explorer.py --sizes 120,5000
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _common import emit

from xbench.engine.store import _save_npz
from xbench.engine.thumbnails import MAP_PX, THUMB_PX, encode_jpeg
from xbench.metrics import column_table
from xbench.report.html import write_report
from xbench.report.leaderboard import build_leaderboard

METHODS = [f"{e}@{m}" for m in ("cnn", "resnet", "intr", "ca_stream")
           for e in ("gradcam", "scorecam", "integrated_gradients")]
METRICS = ["insertion", "deletion", "pointing_game_parts", "sparseness"]


def smooth(rng, count: int, size: int, channels: int) -> np.ndarray:
    """(count, size, size, channels) smooth random fields in [0, 1]: a few Gaussian blobs each."""
    y, x = np.mgrid[0:size, 0:size] / size
    out = np.zeros((count, size, size, channels))
    for _ in range(3):
        cy, cx, width = rng.random((3, count, 1, 1, 1))
        weight = rng.random((count, 1, 1, channels))
        out += weight * np.exp(-((y[..., None] - cy) ** 2 + (x[..., None] - cx) ** 2) / (0.02 + 0.1 * width))
    return out / out.max((1, 2, 3), keepdims=True)


def generated_run(root: Path, images: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    columns = {k: v for k, v in column_table().items() if k in METRICS}
    labels = rng.integers(0, 200, images)
    rows = []
    for method in METHODS:
        correct = rng.random(images) < 0.8
        scores = {m: rng.random(images) for m in METRICS}
        for i in range(images):
            rows.append({"dataset": "generated", "split": "test", "index": i, "method": method,
                         "model": method.split("@")[1], "explainer": method.split("@")[0], "label": labels[i],
                         "prediction": labels[i] if correct[i] else (labels[i] + 1) % 200, "acc1": float(correct[i]),
                         "acc5": 1.0, "prob": rng.random(), "degenerate": False, "nonfinite": False,
                         "label_name": f"{labels[i]:03d}.class", "prediction_name": "",
                         **{m: scores[m][i] for m in METRICS}})
    table = pd.DataFrame(rows)
    table["prediction_name"] = table["prediction"].map(lambda p: f"{p:03d}.class")
    root.mkdir(parents=True)
    table.to_csv(root / "results.csv", index=False)
    (root / "columns.json").write_text(json.dumps(columns))
    (root / "summary.json").write_text(json.dumps({"dataset": "generated", "samples": images, "split": "test",
                                                   "methods": METHODS, "metrics": METRICS}))
    np.savez(root / "curves.npz")
    pixels = (smooth(rng, images, THUMB_PX, 3) * 255).astype(np.uint8)
    jpegs = [encode_jpeg(p) for p in pixels]
    truth = (smooth(rng, images, MAP_PX, 1)[..., 0] > 0.5).astype(np.uint8)
    thumbs = {"index": np.arange(images), "jpeg": np.frombuffer(b"".join(jpegs), np.uint8),
              "jpeg_length": np.array([len(j) for j in jpegs]), "truth": truth,
              "box": np.tile(np.array([[[0.2, 0.2, 0.8, 0.8]]], np.float32), (images, 1, 1)),
              **{f"saliency|{m}": (smooth(rng, images, MAP_PX, 1)[..., 0] * 255).astype(np.uint8) for m in METHODS}}
    _save_npz(thumbs, compressed=True)(root / "thumbs.npz")
    return root


def folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def browse(page_path: Path, chromium: str) -> dict:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        cdp = page.context.new_cdp_session(page)
        cdp.send("Performance.enable")
        start = time.perf_counter()
        page.goto(page_path.resolve().as_uri(), wait_until="load")
        page.wait_for_function("document.querySelectorAll('.ex-card').length > 0")
        page.locator("#images").scroll_into_view_if_needed()
        page.wait_for_function("Array.from(document.querySelectorAll('#ex-grid img')).filter("
                               "i => i.getBoundingClientRect().top < innerHeight).every(i => i.complete && i.naturalWidth)")
        load = time.perf_counter() - start
        metrics = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
        timing = page.evaluate("""() => {
            const time = (id, value) => { const s = document.getElementById(id), t = performance.now();
                s.value = value; s.dispatchEvent(new Event('change')); return performance.now() - t; };
            return {sort: time('ex-sort', 'disagreement'), filter: time('ex-correct', 'wrong')}; }""")
        browser.close()
    return {"load": load, "heap": metrics["JSHeapUsedSize"] / 2**20, "nodes": metrics["Nodes"], **timing}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="120,5000")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    parser.add_argument("--out")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for images in sizes:
            run = generated_run(Path(tmp) / f"run{images}", images)
            rows = pd.read_csv(run / "results.csv")
            board = build_leaderboard(rows, {}, json.loads((run / "columns.json").read_text()))
            start = time.perf_counter()
            page = write_report(run, board, [])
            written = time.perf_counter() - start
            results[images] = {"write": written, "disk": folder_mb(run / "explorer"),
                               "data": (run / "explorer" / "data.js").stat().st_size / 2**20,
                               "page": page.stat().st_size / 2**20, **browse(page, args.chromium)}
    base = results[sizes[0]]
    lines = ["# The report's image explorer: 120 and 5,000 images x 12 methods", "",
             f"Recorded {datetime.date.today()} on CPU ({platform.machine()}, 2 cores), headless Chromium "
             f"(system, through Playwright); generated runs of {len(METHODS)} methods. Command: "
             f"`python benchmarks/report_explorer.py --sizes {args.sizes}`.", "",
             "| images | writing the explorer (s) | explorer/ on disk (MB) | data.js (MB) | page load (s) | "
             "JS heap (MB) | DOM nodes | sort by map disagreement (ms) | filter wrong predictions (ms) | "
             "load vs the smallest |", "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for images, r in results.items():
        lines.append(f"| {images} | {r['write']:.1f} | {r['disk']:.1f} | {r['data']:.2f} | {r['load']:.2f} | "
                     f"{r['heap']:.1f} | {r['nodes']:.0f} | {r['sort']:.1f} | {r['filter']:.1f} | "
                     f"{r['load'] / base['load']:.2f}x |")
    lines += ["", "The page shows one page of 24 cards whatever the run's size, and the browser fetches only those "
              "cards' thumbnails (`loading=lazy`), so the DOM stays the same size; what grows with the images is "
              "data.js (scores and map disagreements of every image), parsed once at load."]
    emit(lines, args.out)


if __name__ == "__main__":
    main()

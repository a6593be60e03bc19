"""Screenshots of a report's image explorer in headless Chromium (Playwright driving the system browser),
as the README shows them: the grid sorted by how much two methods' maps disagree, and one image opened large.

    python scripts/report_screenshots.py results/quickstart/report.html --a attention@intr --b gradcam@cnn \\
        --out docs/report_explorer
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("--a", required=True, help="method A (a label of the run)")
    parser.add_argument("--b", required=True, help="method B")
    parser.add_argument("--methods", help="comma-separated methods to show in the grid (default: all)")
    parser.add_argument("--out", default="docs/report_explorer", help="prefix: <out>.png and <out>_large.png")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(args.report.resolve().as_uri())
        labels = page.evaluate("window.XBENCH_EXPLORER.methods.map(m => m.label)")
        for name, value in (("a", args.a), ("b", args.b)):
            if value not in labels:
                raise SystemExit(f"--{name} {value} is not a method of this run; its methods: {', '.join(labels)}")
            page.select_option(f"#ex-{name}", str(labels.index(value)))
        if args.methods:
            keep = set(args.methods.split(","))
            page.evaluate("keep => document.querySelectorAll('#ex-methods input').forEach(b => { "
                          "b.checked = keep.includes(b.dataset.method); })", sorted(keep))
            page.dispatch_event("#ex-methods", "change")
        page.select_option("#ex-sort", "disagreement")
        page.locator("#images").scroll_into_view_if_needed()
        page.wait_for_function("Array.from(document.querySelectorAll('#ex-grid img')).filter("
                               "i => i.getBoundingClientRect().top < innerHeight).every(i => i.complete)")
        page.screenshot(path=f"{args.out}.png")
        page.locator(".ex-card").first.click()
        page.wait_for_function("Array.from(document.querySelectorAll('#ex-large img')).every(i => i.complete)")
        page.screenshot(path=f"{args.out}_large.png")
        browser.close()
    print(f"wrote {args.out}.png and {args.out}_large.png")


if __name__ == "__main__":
    main()

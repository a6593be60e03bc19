"""Shared argument handling of the figure scripts: a results directory in, PNG + PDF out."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from xbench.engine.store import load_results


def load(description: str):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("run", type=Path, help="results directory written by `xbench evaluate`")
    parser.add_argument("--out", type=Path, help="folder for the figure (default <run>/figures)")
    args = parser.parse_args()
    rows, curves = load_results(args.run)
    with np.load(args.run / "maps.npz") as data:
        maps = {k: data[k] for k in data.files}
    return args, rows, curves, maps, args.out or args.run / "figures"

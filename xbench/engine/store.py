"""The per-sample result store of an evaluation run, ``results/<run>/``::

    run.json            what the rows depend on (a resumed run must match it)
    columns.json        each metric column's direction, aggregate, scale, family (what reports read)
    models.json         each evaluated model as it ran: file, sha256, format, architecture, classes, training
    config.yaml         the resolved config (less the model and train sections: models.json says what ran)
    provenance.json     date, command, Python, package versions, device, git commit of the session
    shards/00003.csv    one row per (sample, method); written last, so it marks the shard done
    shards/00003.npz    curves (insertion/deletion, box hits), aligned with the CSV's rows; curves of
                        different lengths (images of different sizes) are NaN-padded to the longest,
                        so a curve's points are its finite values, whatever shard it fell into
    shards/00003.maps.npz   saliency maps (float16), images, top-k and INTR per-head maps of
                        the fixed subset of samples that figures show
    shards/00003.thumbs.npz   every image's thumbnails: a small JPEG, its ground truth and each
                        method's map at 32 x 32 (thumbnails.py), for the report's image explorer
    results.csv, curves.npz, maps.npz, thumbs.npz, summary.json   the merge of every shard (rank 0)

Every file is written to a temporary name and renamed, so a killed run leaves no partial
shard; `lock()` keeps a second process out of the same directory. Reading a store needs only
numpy and pandas: reports never import the models, explainers or metrics.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..config import flatten
from ..files import atomic_write, atomic_write_json, atomic_write_text
from ..provenance import provenance

log = logging.getLogger(__name__)


class StoreLocked(RuntimeError):
    """Another process is writing to this results directory."""


class StoreMismatch(ValueError):
    """The directory holds a run with other settings."""


def _save_npz(arrays: dict[str, np.ndarray], compressed: bool = False):
    def write(tmp):
        with open(tmp, "wb") as fh:
            (np.savez_compressed if compressed else np.savez)(fh, **arrays)
    return write


class ResultStore:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.shards = self.root / "shards"

    # -------------------------------------------------------------------- lock

    @contextlib.contextmanager
    def lock(self, wait: bool = False):
        """Exclusive use of the directory; refuses (or waits, with `wait`) if another process has it."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / ".lock"
        fh = open(path, "a+")
        try:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                holder = fh.read().strip() or "another process"
                if not wait:
                    raise StoreLocked(f"{self.root} is in use by {holder}; wait for it to finish, pass --wait, "
                                      "or evaluate into another --out") from None
                log.warning("%s is in use by %s; waiting for it to finish", self.root, holder)
                fcntl.flock(fh, fcntl.LOCK_EX)
            fh.seek(0)
            fh.truncate()
            fh.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
            fh.flush()
            yield self
        finally:
            fh.close()  # closing releases the lock

    # -------------------------------------------------------------------- setup

    def prepare(self, fingerprint: dict[str, Any], config_text: str, columns: dict[str, dict],
                models: dict[str, dict], fresh: bool = False, device=None) -> None:
        """Check or record what the rows depend on and how its columns are read; clear temporaries of a
        killed run."""
        run = self.root / "run.json"
        fingerprint = json.loads(json.dumps(fingerprint))
        if run.exists() and not fresh and self.done_shards():  # only finished work needs protecting
            stored = json.loads(run.read_text())
            if stored != fingerprint:
                old, new = flatten(stored), flatten(fingerprint)
                diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
                raise StoreMismatch(f"{self.root} holds a run with other settings ({', '.join(diff)} differ); "
                                    "evaluate into another --out, or pass --fresh to replace it")
        if fresh:
            for path in list(self.shards.glob("*")) + [self.root / n for n in
                                                        ("results.csv", "curves.npz", "maps.npz", "thumbs.npz",
                                                         "summary.json")]:
                path.unlink(missing_ok=True)
        self.shards.mkdir(parents=True, exist_ok=True)
        for tmp in self.shards.glob(".*.tmp"):
            tmp.unlink()
        atomic_write_json(run, fingerprint)
        atomic_write_json(self.root / "columns.json", columns)
        atomic_write_json(self.root / "models.json", models)
        atomic_write_text(self.root / "config.yaml", config_text)
        atomic_write_json(self.root / "provenance.json", provenance(device))

    # -------------------------------------------------------------------- shards

    def shard_path(self, shard: int, suffix: str) -> Path:
        return self.shards / f"{shard:05d}{suffix}"

    def done_shards(self) -> set[int]:
        return {int(p.name[:5]) for p in self.shards.glob("[0-9]*.csv")}

    def write_shard(self, shard: int, rows: list[dict], curves: dict[str, np.ndarray],
                    maps: dict[str, np.ndarray], skipped: list[dict], thumbs: dict[str, np.ndarray] | None = None) -> None:
        atomic_write(self.shard_path(shard, ".npz"), _save_npz(curves))
        atomic_write(self.shard_path(shard, ".maps.npz"), _save_npz(maps))
        atomic_write(self.shard_path(shard, ".thumbs.npz"), _save_npz(thumbs or {}, compressed=True))
        atomic_write_json(self.shard_path(shard, ".skipped.json"), skipped)
        frame = pd.DataFrame(rows)
        atomic_write(self.shard_path(shard, ".csv"), lambda t: frame.to_csv(t, index=False))

    # -------------------------------------------------------------------- merged view

    def merge(self, summary: dict[str, Any]) -> pd.DataFrame:
        """Concatenate every shard into results.csv, curves.npz, maps.npz and thumbs.npz (the shards
        that have thumbnails: a store written before them has none); write summary.json."""
        shards = sorted(self.done_shards())
        frames, curves, maps, skipped, thumbs = [], {}, {}, [], []
        offset = 0
        for shard in shards:
            frames.append(pd.read_csv(self.shard_path(shard, ".csv")))
            with np.load(self.shard_path(shard, ".npz")) as data:
                for key in data.files:  # 'name.row' holds each curve's CSV row within the shard
                    curves.setdefault(key, []).append(data[key] + offset if key.endswith(".row") else data[key])
            offset += len(frames[-1])
            with np.load(self.shard_path(shard, ".maps.npz")) as data:
                maps.update({key: data[key] for key in data.files})
            if self.shard_path(shard, ".thumbs.npz").is_file():
                with np.load(self.shard_path(shard, ".thumbs.npz")) as data:
                    thumbs.append({key: data[key] for key in data.files})
            skipped += json.loads(self.shard_path(shard, ".skipped.json").read_text())
        rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        merged = {k: concat_ragged(v) for k, v in curves.items()}
        atomic_write(self.root / "results.csv", lambda t: rows.to_csv(t, index=False))
        atomic_write(self.root / "curves.npz", _save_npz(merged))
        atomic_write(self.root / "maps.npz", _save_npz(maps))
        atomic_write(self.root / "thumbs.npz", _save_npz(merge_thumbnails(thumbs), compressed=True))
        summary = {**summary, "rows": len(rows), "shards": len(shards), "skipped_files": skipped}
        atomic_write_json(self.root / "summary.json", summary)
        return rows


def merge_thumbnails(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One shard-like dict of every part's rows, in order (boxes NaN-padded to the most per image)."""
    parts = [p for p in parts if p]
    if not parts:
        return {}
    most = max(p["box"].shape[1] for p in parts)
    boxes = [np.concatenate([p["box"], np.full((len(p["box"]), most - p["box"].shape[1], 4), np.nan, np.float32)], 1)
             for p in parts]
    keys = [k for k in parts[0] if k != "box" and all(k in p for p in parts)]
    return {"box": np.concatenate(boxes), **{k: np.concatenate([p[k] for p in parts]) for k in keys}}


def concat_ragged(arrays: list[np.ndarray]) -> np.ndarray:
    """Concatenate (n_i, L_i, ...) arrays along rows, NaN-padding the second axis to the longest L."""
    if len({a.shape[1:] for a in arrays}) <= 1 or arrays[0].ndim == 1:
        return np.concatenate(arrays)
    length = max(a.shape[1] for a in arrays)
    padded = []
    for a in arrays:
        out = np.full((a.shape[0], length, *a.shape[2:]), np.nan, dtype=np.result_type(a.dtype, np.float32))
        out[:, :a.shape[1]] = a
        padded.append(out)
    return np.concatenate(padded)


def load_columns(root: str | os.PathLike) -> dict[str, dict]:
    """How each metric column of a run is read (recorded when the run started): column -> info."""
    path = Path(root) / "columns.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {root} was written by an xbench that did not record its "
                                "columns; evaluate it again with this version")
    return json.loads(path.read_text())


def load_models(root: str | os.PathLike) -> dict[str, dict]:
    """The evaluated models as they ran (models.json), or {} for a run that did not record them."""
    path = Path(root) / "models.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def load_thumbnails(root: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every image's thumbnails (thumbnails.py's keys), or {} for a run written before they existed."""
    path = Path(root) / "thumbs.npz"
    if not path.is_file():
        return {}
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def load_results(root: str | os.PathLike) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """The merged rows and curves of a finished run (what reports read)."""
    root = Path(root)
    if not (root / "results.csv").is_file():
        raise FileNotFoundError(f"{root} holds no results.csv; run `xbench evaluate --out {root}` first")
    rows = pd.read_csv(root / "results.csv")
    with np.load(root / "curves.npz") as data:
        curves = {k: data[k] for k in data.files}
    return rows, curves

"""`evaluate(cfg)`: every method on every sample, one pass per batch, sharded and resumable.

Samples are split into shards of `evaluate.shard_size`; each batch is scored by `BatchScorer`
(scoring.py) and the figure samples' arrays are kept (artefacts.py); a shard's files are written
atomically when it finishes, so a killed run resumes at the first unfinished shard and a
finished one is never redone. Under torchrun, ranks take disjoint shards and rank 0 merges.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..config import Config
from ..datasets import build_dataset, make_loader
from ..datasets.base import stratified_subset
from ..distributed import Context, barrier, init_distributed, shutdown
from ..methods.classes import class_index_map
from ..metrics import column_table
from .artefacts import FigureArtefacts
from .methods import adopt_normalisation, load_evaluated_model, parse_methods
from .scoring import BatchScorer, mosaic_source, resolve_target, scene_source, selected_metrics
from .store import ResultStore, concat_ragged

log = logging.getLogger(__name__)


# Settings that cannot change a row: where things are written, how fast, in what batches. (shard_size
# stays: it decides which samples a finished shard holds.) Models enter by their weights' hash.
ROW_NEUTRAL = ("output_dir", "train", "model", "dataset.num_workers", "dataset.cache_images", "evaluate.out",
               "evaluate.batch_size", "evaluate.memory_budget_mb", "evaluate.checkpoints")


def _without(config: dict, keys: tuple[str, ...]) -> dict:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in config.items()}
    for key in keys:
        section, _, name = key.partition(".")
        if not name:
            out.pop(section, None)
        elif isinstance(out.get(section), dict):
            out[section].pop(name, None)
    return out


def manifest_digest(dataset, indices: list[int]) -> str:
    """sha256 over the evaluated files (path below the data root, size, label, boxes): a file replaced,
    relabelled or re-annotated changes it."""
    digest = hashlib.sha256()
    for index in indices:
        record = dataset.records[index]
        size = record.path.stat().st_size if record.path.exists() else -1
        boxes = "" if record.boxes is None else np.asarray(record.boxes, np.float64).round(3).tobytes().hex()
        where = "/".join(record.path.parts[-2:])
        digest.update(f"{where}\t{size}\t{record.label}\t{boxes}\n".encode())
    return digest.hexdigest()


def check_limit(limit: int | None) -> None:
    if limit is not None and limit <= 0:
        raise ValueError(f"evaluate.limit (--limit) must be a positive number of samples, got {limit}")


def evaluation_indices(labels: list[int], limit: int | None, seed: int) -> list[int]:
    """All samples, or a seeded subset of `limit` (sorted), stratified by class (see stratified_subset)."""
    check_limit(limit)
    return list(range(len(labels))) if limit is None else stratified_subset(labels, limit, seed)


class Evaluator:
    def __init__(self, cfg: Config, out: str | Path | None = None, progress: bool = True, ctx: Context | None = None):
        self.cfg, self.progress = cfg, progress
        self.ctx = ctx or init_distributed()
        self.out = Path(out or cfg.evaluate.out or Path("results") / cfg.dataset.name)
        self.store = ResultStore(self.out)
        ev = cfg.evaluate
        self.split = ev.split or cfg.dataset.eval_split
        check_limit(ev.limit)
        if not [m for m in ev.methods if m.strip()]:
            raise ValueError("evaluate.methods (--methods) is empty: name at least one, e.g. --methods gradcam,rise")
        self.methods = parse_methods(ev.methods)
        self.metrics = selected_metrics(ev.metrics, ev.parameter_randomisation)
        self.target = resolve_target(ev.protocol, ev.target)

    def fingerprint(self, dataset, indices: list[int]) -> dict:
        """What the rows depend on: the resolved config (less the settings that cannot change a row),
        each model's weights (sha256) and architecture, and a manifest of the evaluated files."""
        return {"config": _without(self.cfg.to_dict(), ROW_NEUTRAL),
                "resolved": {"split": self.split, "methods": [m.label for m in self.methods],
                             "metrics": self.metrics, "target": self.target},
                "models": {name: {"sha256": m.sha256, "architecture": m.info.get("model_options")}
                           for name, m in sorted(self.models.items())},
                "samples": len(indices), "manifest": manifest_digest(dataset, indices)}

    # -------------------------------------------------------------------- run

    def run(self, fresh: bool = False, wait: bool = False) -> Path:
        ctx = self.ctx
        self.models = {name: load_evaluated_model(self.cfg, name, ctx.device)
                       for name in dict.fromkeys(m.model for m in self.methods)}
        self.cfg = adopt_normalisation(self.cfg, list(self.models.values()))
        dataset = build_dataset(self.cfg.dataset, self.split, train=False)
        self.scenes = scene_source(dataset, self.metrics)
        for name, model in self.models.items():
            model.label_map = class_index_map(dataset.classes, model.classes, model.num_outputs,
                                              origin=f"{name} ({model.path})")
        indices = evaluation_indices([r.label for r in dataset.records], self.cfg.evaluate.limit, self.cfg.seed)
        size = self.cfg.evaluate.shard_size
        shards = [indices[i:i + size] for i in range(0, len(indices), size)]
        lock = self.store.lock(wait=wait) if ctx.is_main else contextlib.nullcontext()
        with lock:
            if ctx.is_main:
                self.store.prepare(self.fingerprint(dataset, indices), self.cfg.to_yaml(exclude=("model", "train")),
                                   column_table(self.metrics), {n: m.describe() for n, m in self.models.items()},
                                   fresh=fresh, device=ctx.device)
            barrier(ctx)
            done = self.store.done_shards()
            todo = [s for s in range(len(shards)) if s not in done]
            if ctx.is_main and done:
                log.info("%s: %d of %d shards already done; resuming", self.out, len(done & set(range(len(shards)))),
                         len(shards))
            mine = todo[ctx.rank::ctx.world_size]
            start = time.time()
            if mine:
                self._setup(dataset, indices)
                bar = tqdm(total=sum(len(shards[s]) for s in mine), desc=f"evaluate {self.out.name}", unit="img",
                           disable=not (self.progress and ctx.is_main))
                try:
                    for shard in mine:
                        self._run_shard(dataset, shard, shards[shard], bar)
                except KeyboardInterrupt:
                    kept = len(self.store.done_shards() & set(range(len(shards))))
                    raise KeyboardInterrupt(f"{kept} of {len(shards)} shards are kept in {self.out}; run the same "
                                            "command again to resume from the next one") from None
                finally:
                    bar.close()
            barrier(ctx)
            if ctx.is_main:
                summary = {"dataset": self.cfg.dataset.name, "split": self.split, "samples": len(indices),
                           "methods": [m.label for m in self.methods], "metrics": self.metrics,
                           "protocol": self.cfg.evaluate.protocol, "target": self.target,
                           "seconds_this_run": round(time.time() - start, 1), "classes": dataset.classes,
                           "dataset_problems": [{"path": q.path, "reason": q.reason} for q in dataset.problems]}
                self.store.merge(summary)
        return self.out

    def _setup(self, dataset, indices: list[int]) -> None:
        """The batch scorer and the samples figures will show."""
        cfg, ev, models = self.cfg, self.cfg.evaluate, self.models
        self.scorer = BatchScorer({n: m.module for n, m in models.items()}, self.methods, self.metrics,
                                  target=self.target, protocol=ev.protocol, mean=cfg.dataset.mean, std=cfg.dataset.std,
                                  device=self.ctx.device, memory_budget_mb=ev.memory_budget_mb,
                                  explainer_options=ev.explainers, seed=cfg.seed,
                                  tags={"dataset": cfg.dataset.name, "split": self.split},
                                  label_maps={n: m.label_map for n, m in models.items()},
                                  class_names={n: m.classes.names for n, m in models.items() if m.classes},
                                  data_classes=dataset.classes, scenes=self.scenes,
                                  partners=mosaic_source(dataset, self.metrics, cfg.seed))
        self.artefacts = FigureArtefacts.seeded(indices, ev.saliency_samples, cfg.seed, cfg.dataset.mean,
                                                cfg.dataset.std, ev.top_k)

    def _run_shard(self, dataset, shard: int, indices: list[int], bar) -> None:
        subset = torch.utils.data.Subset(dataset, indices)
        loader = make_loader(subset, self.cfg.evaluate.batch_size, num_workers=self.cfg.dataset.num_workers)
        rows, curves, skipped = [], {}, []
        for batch in loader:
            # Subset re-numbers nothing: a sample's `index` is its index in the split.
            skipped += [{"index": s.index, "path": s.path, "reason": s.reason} for s in batch["skipped"]]
            if len(batch["label"]):
                first = self.scorer.images_scored == 0
                self.scorer.score(batch, rows, curves, self.artefacts)
                bar.set_postfix_str(self.scorer.timing(), refresh=False)
                if first and self.ctx.is_main:  # before a long run goes on: what it will cost, and which method
                    left = bar.total - bar.n - len(batch["label"]) - len(batch["skipped"])
                    message = f"first batch: {self.scorer.estimate(left)}"
                    if bar.disable:
                        log.info(message)
                    else:
                        bar.write(message, file=sys.stderr)  # where the bar is, not stdout
            bar.update(len(batch["label"]) + len(batch["skipped"]))
        self.store.write_shard(shard, rows, stack_curves(curves), self.artefacts.take(), skipped,
                               self.artefacts.thumbnails.take())


def stack_curves(curves: dict[str, list]) -> dict[str, np.ndarray]:
    """name -> (rows, ...) arrays plus name + '.row' (the CSV row of each); curves of different lengths
    (images of different sizes) are NaN-padded (see store.concat_ragged)."""
    out = {}
    for name, parts in curves.items():
        out[name] = concat_ragged([v for _, v in parts])
        out[f"{name}.row"] = np.concatenate([np.arange(first, first + len(v)) for first, v in parts])
    return out


def evaluate(cfg: Config, *, out: str | Path | None = None, fresh: bool = False, wait: bool = False,
             progress: bool = True, device: str | None = None) -> Path:
    """Score every method of `cfg.evaluate` on the evaluation split; returns the results directory.
    `device`: cpu, cuda or cuda:N (default: CUDA when present)."""
    ctx = init_distributed(device)
    try:
        return Evaluator(cfg, out, progress, ctx).run(fresh=fresh, wait=wait)
    finally:
        shutdown(ctx)

"""One trainer for every registered model: single process, or DDP under `torchrun`.

`train(cfg)` writes to ``<output_dir>/<dataset>/<model>/``: ``config.yaml`` (resolved),
``last.pt`` every epoch (atomic), ``best.pt`` on the best validation acc@1, ``log.csv``
(one row per epoch), ``tensorboard/`` and ``summary.json``. ``resume=True`` continues from
``last.pt`` exactly: each epoch's randomness (order, augmentation, dropout) is drawn from
(seed, rank, epoch), and a run stopped mid-epoch (`train.max_steps`, SIGINT/SIGTERM) also
saves every rank's RNG state and its position in the epoch.
"""

from __future__ import annotations

import csv
import inspect
import logging
import math
import shutil
import signal
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from ..checkpoints import INIT_OPTIONS, checkpoint_payload, load_checkpoint, save_checkpoint
from ..coercion import check_builder_options
from ..config import Config, flatten
from ..contracts import arch_options
from ..datasets import TrainingData, make_loader, training_data
from ..distributed import Context, EpochSampler, ShardSampler, all_sum, init_distributed, shutdown
from ..factory import build_model, model_options
from ..files import atomic_write_json
from ..metrics.accuracy import accuracy_topk
from ..provenance import record_provenance
from .state import EpochTotals, TrainState, epoch_seed, rng_state, seed_everything, set_rng_state
from .step import autocast, build_optimizer, lr_factor, train_step

log = logging.getLogger(__name__)


class RunExistsError(FileExistsError):
    """A run directory already holds a checkpoint and neither resume nor fresh was asked for."""


class Trainer:
    def __init__(self, cfg: Config, ctx: Context | None = None, progress: bool = True,
                 data: TrainingData | None = None):
        self.cfg, self.progress, self.data = cfg, progress, data
        self.ctx = ctx or init_distributed()
        self.run_dir = cfg.run_dir()
        self.requested = cfg.to_dict()  # the settings as asked for, before the model's own replace model.*
        self.stop_requested = False
        self.stopped_by: str | None = None
        self.skipped: dict[str, dict] = {}  # path -> what was skipped (each file once, train or val)

    # -------------------------------------------------------------------- setup

    def _setup(self):
        cfg, ctx = self.cfg, self.ctx
        data = self.data or training_data(cfg.dataset, cfg.seed)
        self.train_set, self.val_set, self.val_source = data.train, data.val, data.source
        log.info("validating on %s", self.val_source)
        if len(self.train_set) == 0:
            raise ValueError(f"the {cfg.dataset.train_split} split of {cfg.dataset.name} has no images")
        seed_everything(cfg.seed)  # identical initial weights on every rank
        self.model = build_model(cfg.model.name, num_classes=self.train_set.num_classes, **self.validate())
        self.model.to(ctx.device)
        self.channels_last = cfg.train.channels_last
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.takes_pad_mask = "pad_mask" in inspect.signature(self.model.forward).parameters
        self.sampler = EpochSampler(len(self.train_set), cfg.seed, ctx.rank, ctx.world_size)
        self.loader = make_loader(self.train_set, cfg.train.batch_size, sampler=self.sampler, drop_last=False,
                                  num_workers=cfg.dataset.num_workers, seed=cfg.seed)
        self.steps_per_epoch = math.ceil(len(self.sampler) / cfg.train.batch_size)
        self.val_loader = make_loader(self.val_set, cfg.train.batch_size, num_workers=cfg.dataset.num_workers,
                                      sampler=ShardSampler(len(self.val_set), ctx.rank, ctx.world_size))
        self.optimizer = build_optimizer(self.model, cfg.train)
        factors = [lr_factor(cfg.train, self.steps_per_epoch, g["lr"]) for g in self.optimizer.param_groups]
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factors)
        self.precision = self._precision()
        self.scaler = torch.amp.GradScaler(ctx.device.type, enabled=self.precision == torch.float16)
        self.net = self.model
        if cfg.train.compile:
            self.net = torch.compile(self.net)
        if ctx.distributed:
            ids = [ctx.device.index] if ctx.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.net, device_ids=ids)

    def _precision(self) -> torch.dtype:
        name = self.cfg.train.precision
        if name == "auto":
            return torch.bfloat16 if self.ctx.device.type == "cuda" else torch.float32
        table = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
        if name not in table:
            raise ValueError(f"train.precision must be auto, fp32, bf16 or fp16, got {name!r}")
        return table[name]

    # -------------------------------------------------------------------- run

    def validate(self) -> dict:
        """Refuse settings that cannot run before touching the run directory: the model's options (names
        and types; the run's seed goes to a builder that takes one), optimiser, schedule, precision.
        Returns the model's options as the builder gets them."""
        cfg = self.cfg
        builder = model_options(cfg.model.name)
        options = dict(cfg.model.options)
        if "seed" in inspect.signature(builder).parameters and "seed" not in options:
            options["seed"] = cfg.seed  # weights drawn from the run's seed, the same on every rank
        checked = check_builder_options(builder, options)
        build_optimizer(nn.Linear(1, 1), cfg.train)
        lr_factor(cfg.train, 1, cfg.train.lr)
        self._precision()
        return checked

    def fit(self, resume: bool = False, fresh: bool = False, allow_changes: bool = False) -> dict:
        cfg, ctx = self.cfg, self.ctx
        self.validate()
        last = self.run_dir / "last.pt"
        if resume and fresh:
            raise ValueError("--resume and --fresh contradict each other: pick one")
        if resume and not last.exists():
            raise FileNotFoundError(f"--resume: {self.run_dir} holds no last.pt to continue; drop --resume to start "
                                    "a new run")
        if last.exists() and not (resume or fresh):
            done = load_checkpoint(last).get("epoch", "?")
            raise RunExistsError(f"{self.run_dir} already holds a run (last.pt after epoch {done} of "
                                 f"{cfg.train.epochs}); pass --resume to continue it or --fresh to start over")
        changes = self._changes_since(last) if resume else []
        if changes and not allow_changes:
            raise ValueError(f"{last} was trained with other settings ({'; '.join(changes)}); resume with the same "
                             "settings, or pass --allow-changes to continue with the new ones (recorded)")
        self._setup()
        if ctx.is_main:  # what a checkpoint write killed mid-way left behind
            for stale in self.run_dir.glob(".*.tmp"):
                stale.unlink()
        state = TrainState()
        if resume:
            state = self._restore(last)
            if changes:
                state.changes.append({"epoch": state.epoch, "step": state.step, "changed": changes})
                log.warning("resuming with changed settings: %s", "; ".join(changes))
        elif ctx.is_main:
            self._clear_run_files()
        if ctx.is_main:
            self._record_what_runs()
        writer = self._tensorboard(state.step)
        previous = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._request_stop)
        start = time.time()
        try:
            while state.epoch < cfg.train.epochs:
                epoch_metrics = self._train_epoch(state, writer)
                if epoch_metrics is None:
                    self._save(state, "last.pt")
                    log.info("stopped at epoch %d step %d; continue with --resume", state.epoch, state.step)
                    break
                acc1, acc5 = self.evaluate()
                state.history.append({"epoch": state.epoch + 1, **epoch_metrics, "val_acc1": acc1, "val_acc5": acc5})
                state.epoch += 1
                state.step_in_epoch = 0
                best = acc1 > state.best_acc1
                state.best_acc1 = max(acc1, state.best_acc1)
                self._save(state, "last.pt")
                if best:
                    self._save(state, "best.pt")
                self._log_epoch(state.history, writer)
        finally:
            signal.signal(signal.SIGTERM, previous[0])
            signal.signal(signal.SIGINT, previous[1])
            if writer is not None:
                writer.close()
        return self._summary(state, time.time() - start)

    def _changes_since(self, last: Path) -> list[str]:
        """Settings that decide the run (model, data, training; not where or how fast) that differ from
        those `last` was trained with (as asked for), as 'key: old -> new'."""
        stored = load_checkpoint(last)
        before = flatten(stored.get("requested") or stored.get("config") or {})
        now = flatten(self.requested)
        neutral = ("output_dir", "evaluate.", "dataset.num_workers", "dataset.cache_images", "dataset.root",
                   "train.max_steps", "train.log_tensorboard", "train.compile", "model.seed")
        keys = sorted(k for k in set(before) | set(now) if not k.startswith(neutral) and before.get(k) != now.get(k))
        return [f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in keys]

    def _record_what_runs(self) -> None:
        """config.yaml with the model's options as built (the architecture an init_from file decided, not a
        recipe default it overrode) and provenance.json with every session's environment and command."""
        built = arch_options(self.model)
        kept = {k: v for k, v in self.cfg.model.options.items() if k in INIT_OPTIONS}
        self.cfg = replace(self.cfg, model=replace(self.cfg.model, options={**kept, **built}))
        self.cfg.save(self.run_dir / "config.yaml")
        record_provenance(self.run_dir / "provenance.json", self.ctx.device)

    def _request_stop(self, signum, frame):
        log.warning("signal %d: finishing this step, saving last.pt, then stopping", signum)
        self.stop_requested = True
        self.stopped_by = signal.Signals(signum).name

    def _should_stop(self, state: TrainState) -> bool:
        stop = self.stop_requested or (self.cfg.train.max_steps is not None and state.step >= self.cfg.train.max_steps)
        return bool(all_sum(self.ctx, [float(stop)])[0]) if self.ctx.distributed else stop

    def _train_epoch(self, state: TrainState, writer) -> dict | None:
        """One epoch from `state.step_in_epoch`: the epoch's training metrics, or None if it stopped early
        (the state is then resumable)."""
        cfg, ctx = self.cfg, self.ctx
        epoch, start = state.epoch, state.step_in_epoch
        if start == 0:
            seed_everything(epoch_seed(cfg.seed, ctx.rank, epoch))
        if self._should_stop(state):
            return None
        self.sampler.set_epoch(epoch, start * cfg.train.batch_size)
        self.net.train()
        if start == 0:
            state.totals = EpochTotals()
        totals = state.totals
        bar = tqdm(self.loader, total=self.steps_per_epoch - start, desc=f"epoch {epoch + 1}/{cfg.train.epochs}",
                   unit="batch", disable=not (self.progress and ctx.is_main), leave=False)
        t0 = time.time()
        for batch in bar:
            self._note_skipped(batch)
            if len(batch["label"]) == 0:
                continue
            loss, correct = self._step(batch)
            n = len(batch["label"])
            totals.loss += loss * n
            totals.correct += correct
            totals.seen += n
            state.step += 1
            state.step_in_epoch += 1
            totals.seconds += time.time() - t0
            t0 = time.time()
            rate = totals.seen * ctx.world_size / max(totals.seconds, 1e-9)
            bar.set_postfix(loss=f"{totals.loss / totals.seen:.3f}", acc=f"{totals.correct / totals.seen:.3f}",
                            img_s=f"{rate:.0f}")
            if writer is not None:
                writer.add_scalar("train/loss", loss, state.step)
            # Checked after a step, before the next batch draws any randomness, so a resumed run
            # continues exactly; a stop on the epoch's last batch lets the epoch finish.
            if state.step_in_epoch < self.steps_per_epoch and self._should_stop(state):
                bar.close()
                return None
        bar.close()
        seen = max(totals.seen, 1.0)
        return {"lr": self.optimizer.param_groups[-1]["lr"], "train_loss": totals.loss / seen,
                "train_acc": totals.correct / seen,
                "images_per_s": totals.seen * ctx.world_size / max(totals.seconds, 1e-9)}

    def _note_skipped(self, batch) -> None:
        for s in batch["skipped"]:
            self.skipped.setdefault(s.path, {"index": s.index, "path": s.path, "reason": s.reason})

    def _inputs(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Images (in the model's memory format), labels and, if the model takes one, the padding mask."""
        device = self.ctx.device
        images = batch["image"].to(device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        labels = batch["label"].to(device, non_blocking=True)
        pad_mask = batch["pad_mask"].to(device) if self.takes_pad_mask and "pad_mask" in batch else None
        return images, labels, pad_mask

    def _step(self, batch) -> tuple[float, float]:
        images, labels, pad_mask = self._inputs(batch)
        loss, logits = train_step(self.net, self.model, self.optimizer, self.scaler, images, labels,
                                  precision=self.precision, clip_grad=self.cfg.train.clip_grad,
                                  label_smoothing=self.cfg.train.label_smoothing, pad_mask=pad_mask)
        self.scheduler.step()
        return loss.item(), (logits.argmax(1) == labels).sum().item()

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        """Validation acc@1 and acc@5 over every sample exactly once (per sample, all ranks)."""
        self.net.eval()
        correct1 = correct5 = count = 0.0
        for batch in self.val_loader:
            self._note_skipped(batch)
            if len(batch["label"]) == 0:
                continue
            images, labels, pad_mask = self._inputs(batch)
            kwargs = {"pad_mask": pad_mask} if pad_mask is not None else {}
            with autocast(self.ctx.device, self.precision):
                logits = self.net(images, **kwargs).float()
            hits = accuracy_topk(logits, labels)
            correct1 += hits["acc1"].sum().item()
            correct5 += hits["acc5"].sum().item()
            count += len(labels)
        correct1, correct5, count = all_sum(self.ctx, [correct1, correct5, count])
        return correct1 / max(count, 1), correct5 / max(count, 1)

    # -------------------------------------------------------------------- files

    def _save(self, state: TrainState, name: str) -> None:
        """last.pt: everything a resume needs; best.pt: the weights and their description only."""
        rngs = [rng_state()]
        if self.ctx.distributed:
            rngs = [None] * self.ctx.world_size
            torch.distributed.all_gather_object(rngs, rng_state())
        if not self.ctx.is_main:
            return
        extra = {"epoch": state.epoch, "best_acc1": state.best_acc1, "validation": self.val_source,
                 "requested": self.requested}
        if name == "last.pt":
            extra.update(**state.as_checkpoint(), optimizer=self.optimizer.state_dict(),
                         scheduler=self.scheduler.state_dict(), scaler=self.scaler.state_dict(), rng=rngs)
        payload = checkpoint_payload(self.model, self.cfg.model.name, self.train_set.num_classes,
                                     self.train_set.classes, self.cfg.to_dict(), **extra)
        save_checkpoint(self.run_dir / name, payload)

    def _restore(self, path: Path) -> TrainState:
        ckpt = load_checkpoint(path)
        if ckpt.get("model_name") != self.cfg.model.name:
            raise ValueError(f"{path} holds a {ckpt.get('model_name')!r} run, not {self.cfg.model.name!r}")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        state = TrainState.from_checkpoint(ckpt)
        if state.step_in_epoch:
            rngs = ckpt["rng"]
            if len(rngs) != self.ctx.world_size:
                raise ValueError(f"{path} stopped mid-epoch with {len(rngs)} processes; resume with the same number "
                                 f"(got {self.ctx.world_size}) or from an epoch boundary")
            set_rng_state(rngs[self.ctx.rank])
        log.info("resuming %s at epoch %d, step %d", path, state.epoch, state.step)
        return state

    def _tensorboard(self, step: int):
        if not (self.ctx.is_main and self.cfg.train.log_tensorboard):
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.warning("tensorboard is not installed; no TensorBoard scalars are written")
            return None
        return SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=step or None)

    def _clear_run_files(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for name in ("last.pt", "best.pt", "log.csv", "summary.json"):
            (self.run_dir / name).unlink(missing_ok=True)
        if (self.run_dir / "tensorboard").is_dir():
            shutil.rmtree(self.run_dir / "tensorboard")

    def _log_epoch(self, history: list[dict], writer) -> None:
        """Rewrite log.csv from the checkpointed history (so it always matches last.pt)."""
        if not self.ctx.is_main:
            return
        row = history[-1]
        with open(self.run_dir / "log.csv", "w", newline="") as fh:
            out = csv.DictWriter(fh, fieldnames=list(row))
            out.writeheader()
            out.writerows(history)
        if writer is not None:
            for key, value in row.items():
                if key != "epoch":
                    writer.add_scalar(f"epoch/{key}", value, row["epoch"])
        log.info("epoch %d: loss %.4f, train acc %.3f, val acc@1 %.4f, acc@5 %.4f, %.0f img/s", row["epoch"],
                 row["train_loss"], row["train_acc"], row["val_acc1"], row["val_acc5"], row["images_per_s"])

    def _summary(self, state: TrainState, seconds: float) -> dict:
        skipped = list(self.skipped.values())
        if self.ctx.distributed:
            gathered = [None] * self.ctx.world_size
            torch.distributed.all_gather_object(gathered, skipped)
            skipped = list({s["path"]: s for part in gathered for s in part}.values())
        last = state.history[-1] if state.history else {}
        summary = {"run_dir": str(self.run_dir), "model": self.cfg.model.name, "epochs_done": state.epoch,
                   "epochs": self.cfg.train.epochs, "steps": state.step, "best_acc1": state.best_acc1,
                   "final_acc1": last.get("val_acc1"), "final_acc5": last.get("val_acc5"),
                   "seconds": round(seconds, 1), "validation": self.val_source, "stopped_by": self.stopped_by,
                   "resumed_with_changes": state.changes, "skipped_files": skipped,
                   "dataset_problems": [{"path": q.path, "reason": q.reason}
                                        for q in self.train_set.problems + self.val_set.problems],
                   "finished": state.epoch >= self.cfg.train.epochs}
        if self.ctx.is_main:
            atomic_write_json(self.run_dir / "summary.json", summary)
            if skipped:
                log.warning("%d unreadable file(s) were skipped; see %s", len(skipped), self.run_dir / "summary.json")
        return summary


def train(cfg: Config, *, resume: bool = False, fresh: bool = False, allow_changes: bool = False,
          progress: bool = True, device: str | None = None, data: TrainingData | None = None) -> dict:
    """Train `cfg.model` on `cfg.dataset` with `cfg.train`; returns the run summary. `device`: cpu,
    cuda or cuda:N (default: CUDA when present). `data` replaces the datasets `cfg.dataset` names
    (ROAR trains on images with pixels removed)."""
    ctx = init_distributed(device)
    try:
        return Trainer(cfg, ctx, progress, data).fit(resume=resume, fresh=fresh, allow_changes=allow_changes)
    finally:
        shutdown(ctx)

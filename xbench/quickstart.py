"""`xbench quickstart`: the whole benchmark on the synthetic data, on a CPU, end to end.

Stages: generate the data; train `cnn`; train `ca_stream` on the frozen trained cnn and `intr`
(and `icn` if asked) with their backbone initialised from it; evaluate every method with every
metric; write the leaderboard, figures and report.html to results/<dataset>/. Each stage is
described in xbench/configs/quickstart.yaml (`stages:`; a `{cnn}` in an option stands for the trained
cnn's checkpoint). Finished stages are skipped, and say so; `fresh=True` redoes everything.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from .config import Config, ConfigError, config_dir, config_from_dict, merge_layers, overrides_layer
from .datasets.synth import ensure_generated
from .engine.evaluate import evaluate
from .files import atomic_write_json
from .report import full_report, leaderboard_of, terminal_table
from .train.trainer import train
from .version import __version__

log = logging.getLogger(__name__)
ACCURACY_BAR = 0.90


def default_config() -> Path:
    return config_dir() / "quickstart.yaml"


def load_quickstart(path: str | Path | None = None, overrides: list[str] | tuple = (),
                    with_icn: bool = False) -> tuple[Config, dict[str, Config]]:
    """The base config (data, evaluation) and one config per training stage, in order."""
    path = Path(path or default_config())
    if not path.is_file():
        raise ConfigError(f"quickstart config {path} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    stages = data.pop("stages", None)
    optional = set(data.pop("optional_stages", []))
    if not isinstance(stages, dict) or "cnn" not in stages:
        raise ConfigError(f"{path} needs a 'stages:' mapping that starts with cnn")
    user = overrides_layer(list(overrides))  # the user's settings win over the file and every stage's own
    data = merge_layers(data, user)
    base = config_from_dict(data)
    cnn_checkpoint = str(base.run_dir("cnn") / "best.pt")
    configs = {}
    for name in ["cnn"] + [n for n in stages if n != "cnn"]:  # every later stage starts from the cnn
        stage = stages[name]
        if name in optional and not with_icn:
            continue
        stage = _substitute(stage, "{cnn}", cnn_checkpoint)
        layers = merge_layers(merge_layers({k: v for k, v in data.items() if k != "evaluate"}, stage), user)
        configs[name] = config_from_dict({k: v for k, v in layers.items() if k != "evaluate"})
    if not with_icn:
        base = replace(base, evaluate=replace(base.evaluate, methods=[m for m in base.evaluate.methods
                                                                      if "icn" not in m]))
    return base, configs


def _substitute(value: Any, placeholder: str, text: str) -> Any:
    """`value` with `placeholder` replaced by `text` in every string it holds."""
    if isinstance(value, str):
        return value.replace(placeholder, text)
    if isinstance(value, dict):
        return {k: _substitute(v, placeholder, text) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, placeholder, text) for v in value]
    return value


def _stage_done(cfg: Config, upstream: Path | None) -> dict | None:
    """The finished run's summary, unless missing, unfinished or older than its upstream checkpoint."""
    run = cfg.run_dir()
    summary_path, best = run / "summary.json", run / "best.pt"
    if not (summary_path.is_file() and best.is_file()):
        return None
    summary = json.loads(summary_path.read_text())
    if not summary.get("finished"):
        return None
    if upstream is not None and upstream.is_file() and upstream.stat().st_mtime > best.stat().st_mtime:
        return None
    return summary


def quickstart(config: str | Path | None = None, overrides: list[str] | tuple = (), fresh: bool = False,
               with_icn: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run every stage (see module docstring); returns times, accuracies and the report paths."""
    started = time.time()
    base, stages = load_quickstart(config, overrides, with_icn)
    times: dict[str, float] = {}

    t0 = time.time()
    root = ensure_generated(base.dataset, progress=progress)
    base = replace(base, dataset=replace(base.dataset, root=str(root)))
    stages = {name: replace(cfg, dataset=replace(cfg.dataset, root=str(root))) for name, cfg in stages.items()}
    times["data"] = time.time() - t0
    log.info("data: %s (%.0f s)", root, times["data"])

    retrained = fresh
    val_accuracies = {}
    upstream = None
    for name, cfg in stages.items():
        t0 = time.time()
        done = None if fresh else _stage_done(cfg, upstream)
        if done is not None:
            log.info("%s: already trained in %s (best val acc@1 %.3f); skipping (--fresh retrains)", name,
                     cfg.run_dir(), done["best_acc1"])
        else:
            resume = (cfg.run_dir() / "last.pt").is_file() and not fresh
            done = train(cfg, resume=resume, fresh=not resume, progress=progress)
            retrained = True
        val_accuracies[name] = done["best_acc1"]  # on the hold-out of the training images
        times[f"train {name}"] = time.time() - t0
        if name == "cnn":
            upstream = cfg.run_dir() / "best.pt"

    t0 = time.time()
    out = Path(base.evaluate.out or Path("results") / base.dataset.name)
    results = evaluate(base, out=out, fresh=retrained or fresh, progress=progress)
    times["evaluate"] = time.time() - t0

    t0 = time.time()
    inputs = report_inputs(results)
    if not retrained and _previous_summary(results).get("report_inputs") == inputs \
            and (results / "report.html").is_file():
        log.info("report: %s is up to date with these results; skipping (xbench report %s rewrites it)",
                 results / "report.html", results)
        written = {"board": leaderboard_of([results]), "report": results / "report.html",
                   "tables": sorted(results.glob("leaderboard.*"))}
    else:
        written = full_report(results)
    times["report"] = time.time() - t0
    times["total"] = time.time() - started
    test_accuracies = test_accuracy(written["board"])
    summary = {"seconds": {k: round(v, 1) for k, v in times.items()},
               "val_acc1": {k: round(v, 4) for k, v in val_accuracies.items()},
               "test_acc1": {k: round(v, 4) for k, v in test_accuracies.items()},
               "below_bar": [k for k, v in test_accuracies.items() if v < ACCURACY_BAR],
               "pointing_game_parts": metric_means(written["board"], "pointing_game_parts", 100),
               "single_deletion": metric_means(written["board"], "single_deletion"),
               "report": str(written["report"]), "leaderboard": str(results / "leaderboard.md"),
               "report_inputs": inputs}
    atomic_write_json(results / "quickstart.json", summary)
    summary["terminal_table"] = terminal_table(written["board"], files=", ".join(map(str, written["tables"])))
    return summary


def report_inputs(results: Path) -> str:
    """What the report is a function of: the stored rows (results.csv; the curves and maps are computed with
    them) and the xbench version that draws it, as one digest."""
    digest = hashlib.sha256((results / "results.csv").read_bytes())
    digest.update(__version__.encode())
    return digest.hexdigest()


def _previous_summary(results: Path) -> dict:
    path = results / "quickstart.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def test_accuracy(board) -> dict[str, float]:
    """Each model's acc@1 on the evaluated test images (the leaderboard's accuracy column)."""
    return {str(model): float(acc) for model, acc in board.accuracy.groupby("model", sort=False)["acc1"].first().items()}


def metric_means(board, metric: str, scale: float = 1.0) -> dict[str, float]:
    """A metric's mean per method (x `scale`), for the summary."""
    cells = board.cells[board.cells["metric"] == metric]
    return {m: round(scale * v, 3) for m, v in zip(cells["method"], cells["mean"])}

"""The `xbench` command: parse, load the config, call the library. No logic lives here."""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path
from typing import List

import typer

from .config import load_config

app = typer.Typer(
    help="Benchmark visual explanations: train ante-hoc models (INTR, ICN, CA-Stream) and CNNs, explain them "
    "post hoc (Grad-CAM family, captum, RISE), score every explanation, and write leaderboards and figures.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Generate the synthetic benchmark and check datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML file layered over the defaults (repeatable).")
SetOpt = typer.Option(None, "--set", "-s", help="Override one value, e.g. --set train.epochs=1 (repeatable).")
DatasetOpt = typer.Option(None, "--dataset", "-d", help="Dataset name (shorthand for --set dataset.name=...).")
RootOpt = typer.Option(None, "--data-root", help="Folder holding the dataset (shorthand for dataset.root).")
DeviceOpt = typer.Option(None, "--device", help="cpu, cuda or cuda:N (default: CUDA when present).")


def _version(show: bool) -> None:
    if show:
        from .version import __version__

        typer.echo(f"xbench {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                              help="Print xbench's version and exit.")) -> None:
    """Benchmark visual explanations."""


def _friendly_errors(func):
    """Turn the errors a user can fix into one line on stderr and exit status 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        from .engine.store import StoreLocked
        from .registry import UnknownNameError

        try:
            return func(*args, **kwargs)
        except (UnknownNameError, FileExistsError, FileNotFoundError, ValueError, StoreLocked) as exc:
            # ConfigError, DatasetError, CheckpointError, StoreMismatch, UnreadableImage (ValueError) and
            # RunExistsError (FileExistsError) included.
            typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
            raise typer.Exit(2) from None
        except KeyboardInterrupt as exc:
            typer.secho(f"interrupted{': ' + str(exc) if str(exc) else ''}", err=True, fg=typer.colors.YELLOW)
            raise typer.Exit(130) from None

    return wrapper


def _setup_logging(verbose: bool = False) -> None:
    """xbench's own messages at INFO; other libraries' (matplotlib's font subsetting, ...) at WARNING."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("xbench").setLevel(logging.DEBUG if verbose else logging.INFO)


def resolve_config(config: list[str] | None, sets: list[str] | None, **shorthands: str | None):
    """--config files, then shorthand flags (dataset=..., data_root=...), then --set values."""
    keys = {"dataset": "dataset.name", "data_root": "dataset.root", "method": "model.name"}
    overrides = [f"{keys[k]}={v}" for k, v in shorthands.items() if v is not None]
    return load_config(config or [], overrides + list(sets or []))


@app.command("list")
@_friendly_errors
def list_cmd(kind: str = typer.Argument("all", help="models, explainers, metrics, datasets or all")) -> None:
    """Print the registered models, explainers, metrics and datasets with a one-line description each."""
    from .registry import DATASETS, EXPLAINERS, METRICS, MODELS, ExplainerSpec, MetricSpec

    registries = {"models": MODELS, "explainers": EXPLAINERS, "metrics": METRICS, "datasets": DATASETS}
    if kind != "all" and kind not in registries:
        raise ValueError(f"unknown kind {kind!r}; choose one of: all, {', '.join(registries)}")
    for name, registry in registries.items():
        if kind not in ("all", name):
            continue
        typer.secho(name, bold=True)
        # Metrics by family (what evaluate.metrics=all,<family> selects), the rest by name.
        entries = sorted(registry.entries(), key=lambda e: (str(getattr(e.spec, "family", "")), e.name))
        width = max((len(e.name) for e in entries), default=0)
        for entry in entries:
            spec = entry.spec
            extra = ""
            if isinstance(spec, ExplainerSpec):
                extra = f"  [models: {spec.models}]"
            elif isinstance(spec, MetricSpec):
                extra = f"  [{spec.family}{', opt-in' if spec.opt_in else ''}]"
            typer.echo(f"  {entry.name:<{width}}  {entry.description}{extra}")
        if not entries:
            typer.echo("  (none)")


@data_app.command("synth")
@_friendly_errors
def data_synth(
    out: Path = typer.Option(..., help="Folder to write the benchmark to (CUB layout)."),
    classes: int = typer.Option(12, help="Number of classes."),
    size: int = typer.Option(96, help="Image side in pixels."),
    train_per_class: int = typer.Option(200, help="Training images per class."),
    test_per_class: int = typer.Option(40, help="Test images per class."),
    seed: int = typer.Option(0, help="Seed: image j depends only on (seed, j)."),
    preset: str = typer.Option("default", help="Difficulty preset: default, hard or many."),
    workers: int = typer.Option(0, help="Worker processes (0: one per CPU core)."),
    overwrite: bool = typer.Option(False, help="Replace an existing tree with other settings."),
) -> None:
    """Write the synthetic part-annotated benchmark (readable by the `cub` loader)."""
    import os

    from .datasets.synth import SynthSettings, generate

    settings = SynthSettings(classes, size, train_per_class, test_per_class, seed, preset)
    root = generate(out, settings, workers=workers or os.cpu_count() or 1, overwrite=overwrite)
    typer.echo(f"wrote {settings.num_images} images ({classes} classes, {size}px, preset {preset}) to {root}")


@data_app.command("check")
@_friendly_errors
def data_check(
    dataset: str | None = DatasetOpt,
    data_root: str | None = RootOpt,
    split: List[str] | None = typer.Option(None, help="Split(s) to check (default: train and eval split)."),
    config: List[Path] | None = ConfigOpt,
    set_: List[str] | None = SetOpt,
    verbose: bool = typer.Option(False, "--verbose", "-v", help="List every class's count."),
) -> None:
    """Validate a dataset: counts per split and class, image sizes, and unreadable files."""
    from .datasets import build_dataset, check_dataset

    _setup_logging()
    cfg = resolve_config(config, set_, dataset=dataset, data_root=data_root)
    splits = split or [cfg.dataset.train_split, cfg.dataset.eval_split]
    problems = 0
    for name in splits:
        report = check_dataset(build_dataset(cfg.dataset, name), cfg.dataset.name, name)
        counts = list(report.per_class.values())
        typer.secho(f"{report.name}/{report.split}: {report.num_images} images, {report.num_classes} classes",
                    bold=True)
        if counts:
            typer.echo(f"  images per class: min {min(counts)}, max {max(counts)}")
        if report.sizes:
            s = report.sizes
            typer.echo(f"  image size: height {s['min_height']}-{s['max_height']} (mean {s['mean_height']:.0f}), "
                       f"width {s['min_width']}-{s['max_width']} (mean {s['mean_width']:.0f})")
        if verbose:
            for cls, n in report.per_class.items():
                typer.echo(f"    {n:6d}  {cls}")
        empty = [c for c, n in report.per_class.items() if n == 0]
        if empty:
            typer.echo(f"  classes without images: {', '.join(empty)}")
        for problem in report.problems:
            typer.secho(f"  problem: {problem.path}: {problem.reason}", fg=typer.colors.YELLOW)
        problems += len(report.problems)
    if problems:
        typer.secho(f"{problems} problem(s) found; unreadable files are skipped during training and evaluation",
                    fg=typer.colors.YELLOW)
        raise typer.Exit(1)


@app.command("train")
@_friendly_errors
def train_cmd(
    method: str = typer.Option(..., "--method", "-m", help="Model to train: cnn, ca_stream, intr, icn or a plugin's."),
    dataset: str | None = DatasetOpt,
    data_root: str | None = RootOpt,
    config: List[Path] | None = ConfigOpt,
    set_: List[str] | None = SetOpt,
    resume: bool = typer.Option(False, "--resume", help="Continue the run in <output_dir>/<dataset>/<model>/ from last.pt."),
    fresh: bool = typer.Option(False, "--fresh", help="Start over, replacing an existing run's files."),
    reinit_head: bool = typer.Option(False, "--reinit-head",
                                     help="Starting from a checkpoint for another class count: re-initialise its head."),
    allow_changes: bool = typer.Option(False, "--allow-changes",
                                       help="With --resume: continue with changed settings (recorded in the run)."),
    device: str | None = DeviceOpt,
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Train a model with the recipe models/<method>.yaml (packaged in xbench/configs/) (torchrun-ready, resumable)."""
    from .train.trainer import train

    _setup_logging()
    sets = list(set_ or []) + (["model.reinit_head=true"] if reinit_head else [])
    cfg = resolve_config(config, sets, dataset=dataset, data_root=data_root, method=method)
    summary = train(cfg, resume=resume, fresh=fresh, allow_changes=allow_changes, progress=progress, device=device)
    state = "finished" if summary["finished"] else "stopped"
    typer.echo(f"{summary['model']}: {state} after epoch {summary['epochs_done']}/{summary['epochs']}, "
               f"best val acc@1 {summary['best_acc1']:.4f}, run in {summary['run_dir']}")
    if summary["stopped_by"]:  # Ctrl-C or a kill: a failure for whoever waits on the exit status
        typer.secho(f"interrupted ({summary['stopped_by']}): saved {summary['run_dir']}/last.pt at step "
                    f"{summary['steps']}; continue with the same command and --resume", err=True,
                    fg=typer.colors.YELLOW)
        raise typer.Exit(130)


@app.command("evaluate")
@_friendly_errors
def evaluate_cmd(
    methods: str | None = typer.Option(None, "--methods", help="Comma-separated methods: explainer@model, "
                                       "intr/icn/ca_stream (their attention), or a post-hoc name (on cnn)."),
    dataset: str | None = DatasetOpt,
    data_root: str | None = RootOpt,
    split: str | None = typer.Option(None, help="Split to evaluate (default: dataset.eval_split)."),
    limit: int | None = typer.Option(None, help="Evaluate a fixed, seeded subset of this many samples."),
    protocol: str | None = typer.Option(None, help="Perturbation protocol: ca_stream (8 rows/step, true class) "
                                        "or rise (1 row/step, predicted class)."),
    target: str | None = typer.Option(None, help="Class explained: gt or pred (default: the protocol's)."),
    out: Path | None = typer.Option(None, "--out", help="Results directory (default results/<dataset>)."),
    checkpoint: List[str] | None = typer.Option(None, "--checkpoint",
                                                help="model=path of a checkpoint to use (repeatable)."),
    config: List[Path] | None = ConfigOpt,
    set_: List[str] | None = SetOpt,
    fresh: bool = typer.Option(False, "--fresh", help="Discard the directory's earlier results."),
    wait: bool = typer.Option(False, "--wait", help="Wait for another run holding the directory instead of failing."),
    device: str | None = DeviceOpt,
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Score every method with every metric; resumable shard by shard, torchrun-ready."""
    from .engine.evaluate import evaluate

    _setup_logging()
    sets = list(set_ or [])
    for key, value in (("methods", methods), ("split", split), ("limit", limit), ("protocol", protocol),
                       ("target", target)):
        if value is not None:
            sets.append(f"evaluate.{key}={value}")
    for item in checkpoint or []:
        name, _, path = item.partition("=")
        if not path:
            raise ValueError(f"--checkpoint {item!r} must be model=path")
        sets.append(f"evaluate.checkpoints.{name}={path}")
    cfg = resolve_config(config, sets, dataset=dataset, data_root=data_root)
    root = evaluate(cfg, out=out, fresh=fresh, wait=wait, progress=progress, device=device)
    typer.echo(f"results in {root} (results.csv, curves.npz, maps.npz, summary.json)")


@app.command("roar")
@_friendly_errors
def roar_cmd(
    methods: str = typer.Option(..., "--methods", help="Comma-separated methods whose maps choose the pixels."),
    fractions: str = typer.Option("0,0.1,0.3,0.5,0.7,0.9", "--fractions",
                                  help="Comma-separated fractions of pixels to remove; 0 trains one reference."),
    modes: str = typer.Option("roar", "--modes", help="roar (most salient removed), kar (least), or roar,kar."),
    repeats: int = typer.Option(3, "--repeats", min=1,
                                help="Retrainings per point, seeds seed, seed+1, ...: mean and spread are reported."),
    dataset: str | None = DatasetOpt,
    data_root: str | None = RootOpt,
    out: Path | None = typer.Option(None, "--out", help="Results directory (default results/<dataset>_roar)."),
    checkpoint: List[str] | None = typer.Option(None, "--checkpoint",
                                                help="model=path of the explained model's checkpoint (repeatable)."),
    config: List[Path] | None = ConfigOpt,
    set_: List[str] | None = SetOpt,
    device: str | None = DeviceOpt,
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """ROAR/KAR: retrain the config's model on images with each method's top (or bottom) pixels removed;
    test accuracy per method and fraction, mean and spread over --repeats seeds. Resumable per retraining."""
    from .engine.roar import roar
    from .report.roar import write_roar_report

    _setup_logging()
    sets = list(set_ or []) + [f"evaluate.checkpoints.{n}={p}" for n, _, p in
                               (item.partition("=") for item in checkpoint or [])]
    cfg = resolve_config(config, sets, dataset=dataset, data_root=data_root)
    try:
        values = [float(f) for f in fractions.split(",") if f.strip()]
    except ValueError:
        raise ValueError(f"--fractions takes numbers separated by commas, got {fractions!r}") from None
    table = roar(cfg, [m for m in methods.split(",") if m.strip()], values,
                 tuple(m.strip() for m in modes.split(",") if m.strip()), out=out, progress=progress, device=device,
                 repeats=repeats)
    root = Path(out or Path("results") / f"{cfg.dataset.name}_roar")
    write_roar_report(table, root)
    typer.echo((root / "roar.md").read_text())
    typer.echo(f"ROAR results in {root} (roar.csv, roar_summary.csv, roar.md, roar.png, roar.pdf)")


@app.command("leaderboard")
@_friendly_errors
def leaderboard_cmd(
    runs: List[Path] = typer.Argument(..., help="Results directories (several: one table with a dataset column)."),
    format_: str = typer.Option("md,csv,tex,html", "--format", help="Comma-separated: md, csv, tex, html."),
    out: Path | None = typer.Option(None, help="Where to write leaderboard.* (default: the first run directory)."),
    full: bool = typer.Option(False, "--full", help="Print every column, not the headline fitted to the terminal."),
) -> None:
    """Leaderboard with 95% bootstrap CIs and paired tests; printed, and written as md/csv/tex/html."""
    from .report import leaderboard_of, terminal_table, to_markdown, write_leaderboard

    board = leaderboard_of(runs)
    written = write_leaderboard(board, out or runs[0], [f.strip() for f in format_.split(",") if f.strip()])
    files = ", ".join(str(p) for p in written)
    typer.echo(to_markdown(board) + f"wrote {files}" if full else terminal_table(board, files=files))


@app.command("figures")
@_friendly_errors
def figures_cmd(
    run: Path = typer.Argument(..., help="Results directory of `xbench evaluate`."),
    out: Path | None = typer.Option(None, help="Folder for the figures (default <run>/figures)."),
) -> None:
    """Paper figures (PNG and PDF): curves, metric dot plots, rank heatmap, qualitative grid, INTR heads."""
    from .report import all_figures

    paths = all_figures(run, out_dir=out)
    typer.echo(f"wrote {len(paths)} files to {paths[0].parent if paths else out}")


@app.command("report")
@_friendly_errors
def report_cmd(
    run: Path = typer.Argument(..., help="Results directory of `xbench evaluate`."),
    other: Path | None = typer.Argument(None, help="A second run: compare the two (B against A) on the images both scored."),
    pair: List[str] | None = typer.Option(None, "--pair", help="methodA=methodB to compare (repeatable; default: the "
                                          "methods both runs evaluated). Two models of one run: give the run twice."),
    out: Path | None = typer.Option(None, "--out", help="Where the comparison goes (default <RUN>/compare/<OTHER>)."),
) -> None:
    """Leaderboard files, every figure, report.html (with its image explorer) and TensorBoard summaries for one run;
    with a second run, the comparison of the two: each metric's difference with a paired test (comparison.html)."""
    from .report import full_report, terminal_table

    if other is not None:
        from .report.compare import compare, display, write_comparison

        pairs = []
        for item in pair or []:
            left, sep, right = item.partition("=")
            if not sep or not left or not right:
                raise ValueError(f"--pair takes methodA=methodB, got {item!r}")
            pairs.append((left.strip(), right.strip()))
        table = compare(run, other, pairs or None)
        where = out or Path(run) / "compare" / Path(other).resolve().name
        written = write_comparison(table, where, run, other)
        typer.echo(display(table).to_markdown(index=False))
        typer.echo("comparison: " + ", ".join(str(p) for p in written))
        return
    written = full_report(run)
    typer.echo(terminal_table(written["board"], files=", ".join(str(p) for p in written["tables"])))
    typer.echo(f"report: {written['report']}")
    typer.echo(f"TensorBoard: tensorboard --logdir {written['tensorboard']}")


@app.command("meta")
@_friendly_errors
def meta_cmd(
    run: Path = typer.Argument(..., help="Results directory of `xbench evaluate` with the causal metrics."),
    resamples: int = typer.Option(1000, help="Bootstrap resamples for the 95% intervals."),
) -> None:
    """Which metric to trust: every metric's rank correlation with the causal single-deletion score (across
    methods and across images, bootstrap intervals), and the causal family as FunnyBirds reports it."""
    from .report.causal import causal_figures, causal_tables, meta_markdown, write_meta

    tables = causal_tables(run, resamples)
    written = write_meta(run, tables) + causal_figures(tables, Path(run) / "figures")
    typer.echo(meta_markdown(tables["agreement"], tables["summary"]))
    typer.echo("wrote " + ", ".join(str(p) for p in written))


@app.command("explain")
@_friendly_errors
def explain_cmd(
    method: str = typer.Option(..., "--method", "-m", help="Method, e.g. intr, ca_stream, gradcam, scorecam@ca_stream."),
    image: Path = typer.Option(..., "--image", help="Image file to explain."),
    checkpoint: Path | None = typer.Option(None, help="Model checkpoint (default runs/<dataset>/<model>/best.pt)."),
    dataset: str | None = DatasetOpt,
    top_k: int = typer.Option(5, "--top-k", help="Predicted classes to list (and, for INTR/ICN, to show per head)."),
    target: int | None = typer.Option(None, help="Class index to explain (default: the top prediction)."),
    out: Path = typer.Option(Path("explain.png"), "--out", help="Figure to write (.png or .pdf)."),
    config: List[Path] | None = ConfigOpt,
    set_: List[str] | None = SetOpt,
    device: str | None = DeviceOpt,
) -> None:
    """Predict one image and draw the method's explanation (INTR/ICN: per-head maps of the top-k classes)."""
    from .engine.explain import explain_image
    from .engine.methods import checkpoint_path, parse_methods
    from .report import explanation_figure

    cfg = resolve_config(config, set_, dataset=dataset)
    model = parse_methods([method])[0].model
    path = checkpoint or checkpoint_path(cfg, model)
    result = explain_image(method, image, path, top_k=top_k, target=target,
                           options=cfg.evaluate.explainers.get(method.split("@")[0]), config=cfg, device=device)
    explanation_figure(result, out)
    for name, prob in result.top_k:
        typer.echo(f"{prob:7.3f}  {name}")
    typer.echo(f"explained {result.target}: {out}")


@app.command("quickstart")
@_friendly_errors
def quickstart_cmd(
    config: Path | None = typer.Option(None, "--config", "-c", help="Quickstart YAML (default: the packaged quickstart.yaml)."),
    set_: List[str] | None = SetOpt,
    fresh: bool = typer.Option(False, "--fresh", help="Redo every stage, even finished ones."),
    with_icn: bool = typer.Option(False, "--with-icn", help="Also train and evaluate ICN."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """The whole benchmark on the synthetic data: generate, train cnn / ca_stream / intr, evaluate, report."""
    from .quickstart import ACCURACY_BAR, quickstart

    _setup_logging()
    summary = quickstart(config, set_ or [], fresh=fresh, with_icn=with_icn, progress=progress)
    typer.echo(summary["terminal_table"])
    accs = ", ".join(f"{k} {100 * v:.1f}%" for k, v in summary["test_acc1"].items())
    typer.echo(f"\ntest acc@1 (the evaluated test images): {accs}")
    if summary["below_bar"]:
        typer.secho(f"below the {100 * ACCURACY_BAR:.0f}% bar: {', '.join(summary['below_bar'])} "
                    "(explanations of a model that has not learned the task mean little)", fg=typer.colors.YELLOW)
    parts = summary["pointing_game_parts"]
    typer.echo("pointing game on the discriminative parts: "
               + ", ".join(f"{k} {v:.1f}%" for k, v in parts.items()))
    times = summary["seconds"]
    typer.echo(f"time: {times['total'] / 60:.1f} min (" + ", ".join(f"{k} {v:.0f}s" for k, v in times.items()
                                                                    if k != "total") + ")")
    typer.echo(f"full leaderboard: {summary['leaderboard']}\nreport: {summary['report']}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()

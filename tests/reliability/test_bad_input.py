"""Broken data files, hostile checkpoints and degenerate explanations: runs finish, nothing is hidden."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import xbench
from xbench.checkpoints import checkpoint_payload, load_checkpoint, save_checkpoint
from xbench.cli import app
from xbench.config import load_config
from xbench.datasets.synth import SynthSettings, generate
from xbench.engine.evaluate import evaluate
from xbench.engine.store import load_results
from xbench.methods.explainer import Explainer
from xbench.metrics import column_table
from xbench.registry import EXPLAINERS, register_explainer
from xbench.report import build_leaderboard
from xbench.report.html import leaderboard_table
from xbench.report.tables import TABLE_NOTE, headline_table, to_html, wide_table
from xbench.seeds import content_seed
from xbench.train.trainer import train

from ..conftest import HALF

runner = CliRunner()


def _images(root: Path) -> dict[int, Path]:
    rows = [line.split() for line in (root / "images.txt").read_text().splitlines()]
    return {int(i): root / "images" / rel for i, rel in rows}


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    """A CUB-layout tree with every kind of bad file and two missing annotation lines."""
    root = generate(tmp_path_factory.mktemp("damaged") / "data",
                    SynthSettings(classes=3, size=48, train_per_class=6, test_per_class=3, seed=4), progress=False)
    images = _images(root)
    jpeg = io.BytesIO()
    Image.open(images[1]).convert("RGB").save(jpeg, format="JPEG", quality=90)
    images[1].write_bytes(jpeg.getvalue()[:200])  # truncated JPEG (train)
    images[2].write_bytes(b"")  # zero-byte (train)
    images[3].write_text("this is not an image")  # not an image (train)
    Image.open(images[4]).convert("CMYK").save(images[4], format="JPEG")  # CMYK (train)
    gray16 = (np.asarray(Image.open(images[5]).convert("L"), np.uint16) * 257)
    Image.fromarray(gray16).save(images[5])  # 16-bit PNG (train)
    Image.new("RGB", (1, 1), (200, 30, 30)).save(images[6])  # 1x1 image (train)
    images[19].write_bytes(b"")  # zero-byte (test)
    labels = (root / "image_class_labels.txt").read_text().splitlines()
    (root / "image_class_labels.txt").write_text("\n".join(x for x in labels if not x.startswith("7 ")) + "\n")
    boxes = (root / "bounding_boxes.txt").read_text().splitlines()
    (root / "bounding_boxes.txt").write_text("\n".join(x for x in boxes if not x.startswith("8 ")) + "\n")
    return root


def _overrides(root, out):
    return ["dataset.name=damaged", "dataset.format=cub", f"dataset.root={root}", "dataset.image_size=48",
            f"output_dir={out}", "train.log_tensorboard=false"]


def test_a_damaged_dataset_trains_and_evaluates_and_lists_every_problem(damaged, tmp_path):
    common = _overrides(damaged, tmp_path / "runs")
    summary = train(load_config([], common + ["model.name=cnn", "model.backbone=resnet18",
                                              "model.channels=[16,32,64,128]", "train.epochs=1",
                                              "train.batch_size=4"]), progress=False)
    assert summary["finished"]
    skipped = {Path(s["path"]).name: s["reason"] for s in summary["skipped_files"]}
    names = {i: p.name for i, p in _images(damaged).items()}
    assert "cannot decode" in skipped[names[1]] and "empty file" in skipped[names[2]]
    assert "not an image" in skipped[names[3]]
    assert names[19] not in skipped  # training validates on a hold-out of train: it never reads the test split
    for converted in (4, 5, 6):  # CMYK, 16-bit and 1x1 images are read, not skipped
        assert names[converted] not in skipped
    problems = " ".join(p["reason"] for p in summary["dataset_problems"])
    assert "no line for image 7 in image_class_labels.txt" in problems
    assert "no line for image 8 in bounding_boxes.txt" in problems
    assert json.loads((tmp_path / "runs" / "damaged" / "cnn" / "summary.json").read_text()) == summary

    out = evaluate(load_config([], common + ["evaluate.methods=gradcam,random"]), out=tmp_path / "results",
                   progress=False)
    result = json.loads((out / "summary.json").read_text())
    assert [Path(s["path"]).name for s in result["skipped_files"]] == [names[19]]
    assert any("image_class_labels.txt" in p["reason"] for p in result["dataset_problems"])
    assert len(load_results(out)[0]) == 2 * (9 - 1)
    check = runner.invoke(app, ["data", "check", "--dataset", "damaged", "--set", "dataset.format=cub",
                                "--data-root", str(damaged)])
    assert check.exit_code == 1 and "problem(s) found" in check.output and names[1] in check.output


# ---------------------------------------------------------------------------- hostile checkpoints


def _cli_evaluate(overrides, *extra):
    sets = []
    for item in overrides:
        sets += ["--set", item]
    return runner.invoke(app, ["evaluate", "--no-progress", *sets, *extra])


def test_hostile_and_wrong_checkpoints_are_refused_before_evaluation(tiny_run_setup, tmp_path):
    base, overrides = tiny_run_setup
    overrides = overrides + ["evaluate.methods=gradcam", f"evaluate.out={tmp_path / 'out'}"]
    marker = tmp_path / "owned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"model": {}, "model_name": "cnn", "hook": Payload()}, tmp_path / "evil.pt")
    result = _cli_evaluate(overrides, "--checkpoint", f"cnn={tmp_path / 'evil.pt'}")
    assert result.exit_code == 2 and "was refused" in result.output and not marker.exists()

    good = load_checkpoint(base / "runs" / "synth" / "cnn" / "best.pt")
    good["model"]["fc.weight"][0, 0] = float("inf")
    save_checkpoint(tmp_path / "inf.pt", good)
    result = _cli_evaluate(overrides, "--checkpoint", f"cnn={tmp_path / 'inf.pt'}")
    assert result.exit_code == 2 and "NaN/inf values in fc.weight" in result.output

    model = xbench.build_model("cnn", num_classes=7, **HALF)
    save_checkpoint(tmp_path / "seven.pt", checkpoint_payload(model, "cnn", 7, list("abcdefg"), {}))
    result = _cli_evaluate(overrides, "--checkpoint", f"cnn={tmp_path / 'seven.pt'}")
    assert result.exit_code == 2 and "3 of the data's 3 classes are not among the 7 classes of cnn" in result.output

    result = _cli_evaluate(overrides, "--checkpoint", f"cnn={base / 'runs' / 'synth' / 'intr' / 'best.pt'}")
    assert result.exit_code == 2 and "holds a 'intr' model, not the 'cnn' model asked for" in result.output
    assert not (tmp_path / "out" / "results.csv").exists()


# ---------------------------------------------------------------------------- degenerate maps

KINDS = ("constant", "nan", "inf", "negative", "normal")


class FaultyMaps(Explainer):
    """Per image (by content): a constant, NaN, inf, negative or ordinary map."""

    def explain(self, images, targets):
        maps = []
        for image in images:
            kind = KINDS[content_seed(image, 0) % len(KINDS)]
            m = torch.rand(6, 6, generator=torch.Generator().manual_seed(content_seed(image, 1) % 2**31))
            m = {"constant": torch.full((6, 6), 0.3), "nan": m.masked_fill(m > 0.5, float("nan")),
                 "inf": m.masked_fill(m > 0.9, float("inf")), "negative": -m, "normal": m}[kind]
            maps.append(m)
        return torch.stack(maps)


if "faulty_test_maps" not in EXPLAINERS:
    register_explainer("faulty_test_maps", description="test only: degenerate maps")(FaultyMaps)


def test_degenerate_maps_never_crash_and_nonfinite_rows_are_flagged_not_averaged(tiny_run_setup, tmp_path):
    base, overrides = tiny_run_setup
    out = evaluate(load_config([], overrides + ["evaluate.methods=faulty_test_maps@cnn"]), out=tmp_path / "faulty",
                   progress=False)
    rows, curves = load_results(out)
    from xbench.datasets import build_dataset

    dataset = build_dataset(load_config([], overrides).dataset, "test")
    kinds = {i: KINDS[content_seed(dataset[i]["image"], 0) % len(KINDS)] for i in rows["index"]}
    rows["kind"] = rows["index"].map(kinds)
    assert set(rows["kind"]) >= {"constant", "nan", "negative"}
    bad = rows["kind"].isin(["nan", "inf"])
    assert rows.loc[bad, "nonfinite"].all() and not rows.loc[~bad, "nonfinite"].any()
    assert rows.loc[rows["kind"] == "constant", "degenerate"].all()
    metrics = ["insertion", "deletion", "drop", "gain", "pointing_game_box", "mass_accuracy_parts", "sparseness"]
    assert rows.loc[bad, metrics].isna().all().all()
    assert rows.loc[~bad, metrics].notna().all().all()
    board = build_leaderboard(rows.drop(columns="kind"), curves, column_table())
    cell = board.cells[board.cells["metric"] == "insertion"].iloc[0]
    assert cell["n_nonfinite"] == bad.sum() and cell["n"] == (~bad).sum()
    assert cell["mean"] == pytest.approx(rows.loc[~bad, "insertion"].mean())
    # a method that failed on some images must not look better for it: the tables say how many it scored
    scored = f"{(~bad).sum()} of {len(rows)}"
    full = wide_table(board, "plain")
    assert full.loc[0, "method"] == "faulty_test_maps@cnn †" and full.loc[0, "scored"] == scored
    assert headline_table(board, "plain").loc[0, "method"] == "faulty_test_maps@cnn †"
    assert f">{scored}</td>" in to_html(board)  # leaderboard.html, the report's full table
    assert leaderboard_table(board, ["insertion"], ranks=False)["rows"][0]["cells"][0]["text"] == \
        "faulty_test_maps@cnn †"
    assert "†" in TABLE_NOTE
    clean = build_leaderboard(rows.drop(columns="kind").assign(nonfinite=False), curves, column_table())
    assert wide_table(clean, "plain").loc[0, "method"] == "faulty_test_maps@cnn"  # no mark when all were scored

"""ROAR/KAR: the pixels removed, retraining with the common trainer, resuming, the table and figure."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from xbench.cli import app
from xbench.config import load_config
from xbench.datasets import build_dataset
from xbench.engine.roar import RemovedPixels, roar, roar_markdown

from .conftest import HALF

TRAIN = ["model.name=cnn", "model.backbone=resnet18", "model.channels=[16,32,64,128]", "train.epochs=1",
         "train.batch_size=8", "evaluate.batch_size=8", "dataset.val_fraction=0.25"]


@pytest.fixture(scope="module")
def roar_setup(synth_small, tmp_path_factory):
    """The 4-class synthetic data and a random-weight cnn checkpoint to explain."""
    import xbench
    from xbench.checkpoints import checkpoint_payload, save_checkpoint

    root, settings = synth_small
    base = tmp_path_factory.mktemp("roar")
    overrides = ["dataset.name=synth", "dataset.format=synth", f"dataset.root={root}", "dataset.image_size=64",
                 f"dataset.synth.classes={settings.classes}", f"dataset.synth.size={settings.size}",
                 f"dataset.synth.train_per_class={settings.train_per_class}",
                 f"dataset.synth.test_per_class={settings.test_per_class}", f"dataset.synth.seed={settings.seed}",
                 f"output_dir={base / 'runs'}", *TRAIN]
    classes = build_dataset(load_config([], overrides).dataset, "test").classes
    torch.manual_seed(0)
    model = xbench.build_model("cnn", num_classes=4, **HALF)
    save_checkpoint(base / "runs" / "synth" / "cnn" / "best.pt",
                    checkpoint_payload(model, "cnn", 4, classes, {"model": {"name": "cnn", **HALF}}))
    return base, overrides


def test_removed_pixels_are_the_most_or_least_salient():
    class Base:
        classes, num_classes, problems = ["a"], 1, []

        def __len__(self):
            return 1

        def __getitem__(self, i):
            return {"image": torch.ones(3, 3, 4), "label": 0, "index": i}

    class Numbered(Base):  # sample i is an image of i's
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return {"image": torch.full((3, 3, 4), float(i)), "label": i, "index": i}

    maps = np.arange(12, dtype=np.float16).reshape(1, 3, 4)  # pixel 11 most salient, 0 least
    fill = torch.tensor([-1.0, -2.0, -3.0]).view(3, 1, 1)
    removed = RemovedPixels(Base(), maps, 5, "roar", fill)
    assert removed.removed(0).flatten().nonzero().flatten().tolist() == [7, 8, 9, 10, 11]
    kept = RemovedPixels(Base(), maps, 5, "kar", fill)
    assert kept.removed(0).flatten().nonzero().flatten().tolist() == [0, 1, 2, 3, 4]
    image = removed[0]["image"]
    assert image[:, 2, 3].tolist() == [-1.0, -2.0, -3.0] and image[:, 0, 0].tolist() == [1.0, 1.0, 1.0]
    subset = RemovedPixels(Numbered(), np.zeros((4, 3, 4), np.float16), 0, "roar", fill, indices=[3, 1])
    assert len(subset) == 2 and subset[1]["index"] == 1 and subset[(7, 0)]["index"] == 3  # (stream, position)
    assert subset[(7, 0)]["image"][0, 0, 0] == 3
    with pytest.raises(ValueError, match="unknown ROAR mode 'keep'"):
        RemovedPixels(Base(), maps, 5, "keep", fill)


def test_roar_retrains_per_method_and_fraction_and_resumes(roar_setup, tmp_path):
    base, overrides = roar_setup
    cfg = load_config([], overrides)
    out = tmp_path / "roar"
    table = roar(cfg, ["gradcam", "random"], [0.0, 0.5], modes=("roar", "kar"), out=out, progress=False)
    assert list(zip(table["mode"], table["method"], table["fraction"])) == [
        ("none", "none", 0.0), ("roar", "gradcam@cnn", 0.5), ("roar", "random@cnn", 0.5),
        ("kar", "gradcam@cnn", 0.5), ("kar", "random@cnn", 0.5)]
    assert table["acc1"].between(0, 1).all() and (table["test_images"] == 12).all() and (table["train_images"] == 18).all()
    maps = np.load(out / "maps" / "gradcam_at_cnn_train.npy")
    assert maps.shape == (24, 64, 64) and maps.dtype == np.float16
    assert sorted(p.name for p in (out / "runs").iterdir()) == [
        "kar-gradcam_at_cnn-0.5", "kar-random_at_cnn-0.5", "none-none-0", "roar-gradcam_at_cnn-0.5",
        "roar-random_at_cnn-0.5"]
    best = out / "runs" / "roar-random_at_cnn-0.5" / "synth" / "cnn" / "best.pt"
    stamp = best.stat().st_mtime
    again = roar(cfg, ["gradcam", "random"], [0.0, 0.5], modes=("roar", "kar"), out=out, progress=False)
    assert best.stat().st_mtime == stamp  # nothing retrained
    pd.testing.assert_frame_equal(again, table)
    text = (out / "roar.md").read_text()
    assert "least salient pixels removed (KAR)" in text and "gradcam@cnn" in text


def test_roar_markdown_puts_the_reference_first():
    table = pd.DataFrame({"mode": ["none", "roar", "roar"], "method": ["none", "a@m", "a@m"],
                          "fraction": [0.0, 0.3, 0.6], "acc1": [0.9, 0.5, 0.25]})
    lines = [[cell.strip() for cell in line.strip("|").split("|")] for line in roar_markdown(table).splitlines()
             if line.startswith("|")]
    assert lines[0] == ["method", "0", "0.3", "0.6"] and lines[2] == ["a@m", "90.0", "50.0", "25.0"]


def test_roar_command_and_bad_fractions(roar_setup, tmp_path):
    base, overrides = roar_setup
    sets = [x for o in overrides for x in ("--set", o)]
    bad = CliRunner().invoke(app, ["roar", "--methods", "random", "--fractions", "0.5,1.2", *sets])
    assert bad.exit_code == 2 and "fractions must be in [0, 1), got 1.2" in bad.output
    result = CliRunner().invoke(app, ["roar", "--methods", "random", "--fractions", "0.3", "--out",
                                      str(tmp_path / "cli"), "--no-progress", *sets])
    assert result.exit_code == 0, result.output
    assert "random@cnn" in result.output and (tmp_path / "cli" / "roar.png").is_file()

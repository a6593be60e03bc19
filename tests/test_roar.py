"""ROAR/KAR: the pixels removed, retraining with the common trainer and the config's recipe, repeats over
seeds, resuming, the table and figure."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from xbench.cli import app
from xbench.config import load_config
from xbench.datasets import build_dataset
from xbench.datasets.transforms import build_augmentation
from xbench.engine.roar import RemovedPixels, changed_training_data, roar
from xbench.report.roar import roar_markdown, roar_summary, write_roar_report

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


def test_augmentation_follows_the_removal_and_is_drawn_from_stream_and_image():
    class Striped:
        classes, num_classes, problems = ["a"], 1, []

        def __len__(self):
            return 2

        def __getitem__(self, i):
            return {"image": torch.arange(16.0).view(1, 4, 4).repeat(3, 1, 1) + i, "label": 0, "index": i}

    maps = np.tile(np.arange(16, dtype=np.float16).reshape(1, 4, 4), (2, 1, 1))  # right column most salient
    fill = torch.full((3, 1, 1), -9.0)
    flips = RemovedPixels(Striped(), maps, 4, "roar", fill, augment=build_augmentation("flip", 4))
    plain = RemovedPixels(Striped(), maps, 4, "roar", fill)
    assert torch.equal(flips[0]["image"], plain[0]["image"])  # no stream (evaluation): nothing drawn
    drawn = [flips[(stream, 0)]["image"] for stream in range(8)]
    assert all(torch.equal(d, flips[(s, 0)]["image"]) for s, d in enumerate(drawn))  # same (stream, image), same draw
    mirrored = [d for d in drawn if not torch.equal(d, plain[0]["image"])]
    assert 0 < len(mirrored) < 8  # a fair coin over eight streams
    assert (plain[0]["image"][:, 3] == -9).all()  # the bottom row is the most salient
    for image in mirrored:  # the removed pixels travel with the image
        assert torch.equal(image, plain[0]["image"].flip(-1))
    assert build_augmentation("resize", 4) is None and build_augmentation("centre_crop", 4) is None
    with pytest.raises(ValueError, match="unknown transform 'wobble'"):
        build_augmentation("wobble", 4)


def test_retraining_follows_the_recipe_hold_out_or_val_split(roar_setup):
    base, overrides = roar_setup
    fill = torch.zeros(3, 1, 1)
    for extra, held_out in ((["dataset.train_transform=flip"], True),
                            (["dataset.train_transform=resize", "dataset.val_split=test"], False)):
        cfg = load_config([], overrides + extra)
        bases = {split: build_dataset(cfg.dataset, split, train=False) for split in ("train", "test")}
        maps = {split: np.zeros((len(b), 64, 64), np.float16) for split, b in bases.items()}
        data = changed_training_data(cfg, bases, maps, 10, "roar", fill, seed=3)
        if held_out:  # the hold-out `xbench train` draws from the run's seed, and the train transform's flips
            assert len(data.train) == 18 and len(data.val) == 6 and data.train.augment is not None
            assert not set(data.train.indices) & set(data.val.indices) and data.val.augment is None
            assert data.val.indices != changed_training_data(cfg, bases, maps, 10, "roar", fill, seed=4).val.indices
            assert "train transform flip after removal" in data.source
        else:
            assert len(data.train) == 24 and data.val.base is bases["test"] and data.train.augment is None
            assert data.source == "the test split, changed alike; no augmentation"


def test_roar_retrains_per_method_fraction_and_seed_and_resumes(roar_setup, tmp_path):
    base, overrides = roar_setup
    cfg = load_config([], overrides)
    out = tmp_path / "roar"
    table = roar(cfg, ["gradcam", "random"], [0.0, 0.5], modes=("roar", "kar"), out=out, progress=False, repeats=1)
    assert list(zip(table["mode"], table["method"], table["fraction"], table["seed"])) == [
        ("none", "none", 0.0, 0), ("roar", "gradcam@cnn", 0.5, 0), ("roar", "random@cnn", 0.5, 0),
        ("kar", "gradcam@cnn", 0.5, 0), ("kar", "random@cnn", 0.5, 0)]
    assert table["acc1"].between(0, 1).all() and (table["test_images"] == 12).all() and (table["train_images"] == 18).all()
    maps = np.load(out / "maps" / "gradcam_at_cnn_train.npy")
    assert maps.shape == (24, 64, 64) and maps.dtype == np.float16
    assert sorted(p.name for p in (out / "runs").iterdir()) == [
        "kar-gradcam_at_cnn-0.5", "kar-random_at_cnn-0.5", "none-none-0", "roar-gradcam_at_cnn-0.5",
        "roar-random_at_cnn-0.5"]
    best = out / "runs" / "roar-random_at_cnn-0.5" / "seed0" / "synth" / "cnn" / "best.pt"
    stamp = best.stat().st_mtime
    # A second seed for the reference and ROAR's random map: only those two retrain; the rest resumes.
    again = roar(cfg, ["random"], [0.0, 0.5], modes=("roar",), out=out, progress=False, repeats=2)
    assert best.stat().st_mtime == stamp
    pd.testing.assert_frame_equal(again.iloc[:5], table)
    assert list(zip(again["method"][5:], again["seed"][5:], again["repeat"][5:])) == [("none", 1, 1), ("random@cnn", 1, 1)]
    second = torch.load(out / "runs" / "none-none-0" / "seed1" / "synth" / "cnn" / "best.pt", weights_only=True)
    first = torch.load(out / "runs" / "none-none-0" / "seed0" / "synth" / "cnn" / "best.pt", weights_only=True)
    name = next(k for k in first["model"] if k.endswith("weight"))
    assert not torch.equal(first["model"][name], second["model"][name])  # another seed, other initial weights
    summary = roar_summary(again)
    reference = summary[summary["mode"] == "none"].iloc[0]
    assert reference["repeats"] == 2 and reference["mean"] == pytest.approx(again["acc1"][again["mode"] == "none"].mean())
    assert reference["std"] == pytest.approx(again["acc1"][again["mode"] == "none"].std(ddof=1))
    paths = write_roar_report(again, out)
    assert [p.name for p in paths] == ["roar.md", "roar_summary.csv", "roar.png", "roar.pdf"]
    text = (out / "roar.md").read_text()
    assert "least salient pixels removed (KAR)" in text and "Mean ± standard deviation over 1/2 retrainings" in text


def test_roar_markdown_puts_the_reference_first_and_shows_the_spread():
    table = pd.DataFrame({"mode": ["none", "roar", "roar"], "method": ["none", "a@m", "a@m"],
                          "fraction": [0.0, 0.3, 0.6], "acc1": [0.9, 0.5, 0.25]})
    lines = [[cell.strip() for cell in line.strip("|").split("|")] for line in roar_markdown(table).splitlines()
             if line.startswith("|")]
    assert lines[0] == ["method", "0", "0.3", "0.6"] and lines[2] == ["a@m", "90.0", "50.0", "25.0"]
    assert "One retraining per point: the seed-to-seed spread is unknown" in roar_markdown(table)
    repeated = pd.DataFrame({"mode": ["roar"] * 6, "method": ["a@m", "a@m", "random@m", "random@m", "b@m", "b@m"],
                             "fraction": [0.3] * 6, "acc1": [0.50, 0.54, 0.56, 0.60, 0.20, 0.22]})
    text = roar_markdown(repeated)
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in text.splitlines()
            if line.startswith("|") and "@" in line}
    assert rows == {"a@m": "52.0 ± 2.8", "random@m": "58.0 ± 2.8", "b@m": "21.0 ± 1.4"}
    # a@m's gap to random (6.0) exceeds both spreads (2.8), b@m's too: no point is within the spread
    assert "Within the spread" not in text
    close = repeated.assign(acc1=[0.50, 0.58, 0.52, 0.60, 0.20, 0.22])
    assert "Within the spread of a random map (gap no larger than the larger standard deviation): ROAR a@m at 0.3." \
        in roar_markdown(close)


def test_roar_command_and_bad_fractions(roar_setup, tmp_path):
    base, overrides = roar_setup
    sets = [x for o in overrides for x in ("--set", o)]
    bad = CliRunner().invoke(app, ["roar", "--methods", "random", "--fractions", "0.5,1.2", *sets])
    assert bad.exit_code == 2 and "fractions must be in [0, 1), got 1.2" in bad.output
    result = CliRunner().invoke(app, ["roar", "--methods", "random", "--fractions", "0.3", "--out",
                                      str(tmp_path / "cli"), "--no-progress", *sets])
    assert result.exit_code == 0, result.output
    assert "random@cnn" in result.output and (tmp_path / "cli" / "roar.png").is_file()
    assert "One retraining per point" not in result.output  # three seeds by default, as the recipe runs

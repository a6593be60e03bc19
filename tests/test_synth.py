"""The synthetic benchmark: determinism, the class design, and alignment through the loader."""

from __future__ import annotations

import filecmp
import json

import numpy as np
import pytest
import torch

from xbench.config import DatasetConfig, SynthConfig
from xbench.datasets import build_dataset, collate
from xbench.datasets.cub import read_cub
from xbench.datasets.synth import (
    PART_ID,
    PRESETS,
    SynthSettings,
    class_table,
    discriminative_parts,
    generate,
    render,
)
from xbench.datasets.transforms import build_transform

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _tree_equal(a, b) -> bool:
    cmp = filecmp.dircmp(a, b)
    if cmp.left_only or cmp.right_only or cmp.funny_files:
        return False
    _, mismatch, errors = filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)
    return not mismatch and not errors and all(_tree_equal(a / d, b / d) for d in cmp.common_dirs)


def test_same_seed_gives_byte_identical_trees_serial_or_parallel(tmp_path):
    settings = SynthSettings(classes=3, size=48, train_per_class=2, test_per_class=1, seed=11)
    one = generate(tmp_path / "one", settings, workers=1, progress=False)
    two = generate(tmp_path / "two", settings, workers=2, progress=False)
    assert _tree_equal(one, two)
    assert len(list((one / "images").rglob("*.png"))) == settings.num_images


def test_different_seed_differs(tmp_path):
    a = generate(tmp_path / "a", SynthSettings(classes=3, size=48, train_per_class=1, test_per_class=1, seed=1),
                 progress=False)
    b = generate(tmp_path / "b", SynthSettings(classes=3, size=48, train_per_class=1, test_per_class=1, seed=2),
                 progress=False)
    assert not _tree_equal(a, b)
    assert not np.array_equal(render(SynthSettings(seed=1), 0)["image"], render(SynthSettings(seed=2), 0)["image"])


def test_image_depends_only_on_seed_and_index():
    small = SynthSettings(classes=5, train_per_class=1, test_per_class=1)
    large = SynthSettings(classes=5, train_per_class=50, test_per_class=9)
    np.testing.assert_array_equal(render(small, 7)["image"], render(large, 7)["image"])


@pytest.mark.parametrize("classes", [2, 12, 40, 64])
def test_every_class_differs_from_another_in_exactly_one_part(classes):
    settings = SynthSettings(classes=classes)
    table = class_table(settings)
    assert table.shape == (classes, 3)
    assert len({tuple(row) for row in table}) == classes  # classes are distinct
    hamming = (table[:, None, :] != table[None, :, :]).sum(-1)
    assert ((hamming == 1).sum(1) >= 1).all()
    disc = discriminative_parts(table, settings.difficulty.attribute_parts)
    attribute_ids = {PART_ID[p] for p in settings.difficulty.attribute_parts}
    for c, ids in enumerate(disc):
        assert ids and set(ids) <= attribute_ids
        for pid in ids:  # changing that part alone must give another class of the table
            col = settings.difficulty.attribute_parts.index({v: k for k, v in PART_ID.items()}[pid])
            others = np.delete(table, c, 0)
            same_elsewhere = (np.delete(others, col, 1) == np.delete(table[c], col)).all(1)
            assert (same_elsewhere & (others[:, col] != table[c, col])).any()


def test_preset_many_reaches_cub_scale_and_bad_settings_are_refused():
    assert class_table(SynthSettings(classes=200, preset="many")).shape == (200, 4)
    with pytest.raises(ValueError, match="between 2 and 64"):
        SynthSettings(classes=65).validate()
    with pytest.raises(ValueError, match="known presets: default, hard, many"):
        SynthSettings(preset="nope").validate()
    assert PRESETS["hard"].colour_attributes is False


def test_existing_tree_with_other_settings_is_refused(tmp_path):
    generate(tmp_path / "d", SynthSettings(classes=2, size=40, train_per_class=1, test_per_class=1), progress=False)
    with pytest.raises(FileExistsError, match="--overwrite"):
        generate(tmp_path / "d", SynthSettings(classes=3, size=40, train_per_class=1, test_per_class=1),
                 progress=False)
    generate(tmp_path / "d", SynthSettings(classes=3, size=40, train_per_class=1, test_per_class=1),
             overwrite=True, progress=False)
    assert json.loads((tmp_path / "d" / "synth.json").read_text())["classes"] == 3


def test_cub_loader_reads_the_tree_with_every_annotation(synth_small):
    root, settings = synth_small
    train = read_cub(root, "train")
    test = read_cub(root, "test")
    assert (len(train), len(test)) == (settings.classes * 6, settings.classes * 3)
    assert train.num_classes == settings.classes and not train.problems
    sample = train.raw(0)
    assert set(sample) >= {"image", "box", "mask", "part_mask", "parts"}
    assert train.part_names == {1: "body", 2: "head", 3: "beak", 4: "wing", 5: "tail"}
    assert train.discriminative_parts.keys() == set(range(settings.classes))


def test_masks_and_box_line_up_with_the_rendered_object(synth_small):
    root, settings = synth_small
    table = class_table(settings)
    size = settings.size
    same = read_cub(root, "test", build_transform("resize", size, False, MEAN, STD))
    larger = read_cub(root, "test", build_transform("resize", 2 * size, False, MEAN, STD))
    for i in range(len(same)):
        index = int(same.records[i].path.stem.split("_")[1]) - 1
        truth = render(settings, index, table)
        parts = torch.from_numpy(truth["parts"].astype(np.int64))
        s = same[i]
        assert torch.equal(s["part_mask"], parts)
        assert torch.equal(s["mask"], parts > 0)
        disc = discriminative_parts(table, settings.difficulty.attribute_parts)[truth["label"]]
        assert torch.equal(s["disc_mask"], torch.isin(parts, torch.tensor(disc)))
        assert s["label"] == truth["label"]
        ys, xs = torch.nonzero(parts > 0, as_tuple=True)
        torch.testing.assert_close(s["box"][0], torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float())
        # The raw pixels match the render (PNG is lossless) once normalisation is undone.
        raw = (s["image"] * torch.tensor(STD)[:, None, None] + torch.tensor(MEAN)[:, None, None]) * 255
        assert (raw.round() - torch.from_numpy(truth["image"]).permute(2, 0, 1).float()).abs().max() <= 1
        # At twice the size, masks are the nearest-neighbour upsampling and the box scales by 2.
        big = larger[i]
        up = parts.repeat_interleave(2, 0).repeat_interleave(2, 1)
        assert (big["part_mask"] == up).float().mean() > 0.98
        torch.testing.assert_close(big["box"], s["box"] * 2)
        keypoints = big["parts"]
        visible = keypoints[:, 2] > 0
        xy = keypoints[visible, :2].long().clamp(0, 2 * size - 1)
        # A part's centroid lies on that part or next to it (parts are convex-ish blobs).
        near = torch.nn.functional.max_pool2d(big["mask"][None, None].float(), 5, 1, 2)[0, 0]
        assert near[xy[:, 1], xy[:, 0]].all()


def test_synth_dataset_config_generates_once_and_collates(tmp_path):
    cfg = DatasetConfig(name="synth", format="synth", root=str(tmp_path / "s"), image_size=32,
                        synth=SynthConfig(classes=3, size=40, train_per_class=2, test_per_class=1))
    train = build_dataset(cfg, "train", train=True)
    first = (tmp_path / "s" / "images.txt").stat().st_mtime_ns
    test = build_dataset(cfg, "test")
    assert (tmp_path / "s" / "images.txt").stat().st_mtime_ns == first  # not regenerated
    batch = collate([train[i] for i in range(len(train))])
    assert batch["image"].shape == (6, 3, 32, 32)
    assert batch["box"].shape == (6, 1, 4) and batch["mask"].shape == (6, 32, 32)
    assert batch["disc_mask"].dtype == torch.bool and batch["parts"].shape == (6, 5, 3)
    assert len(test) == 3

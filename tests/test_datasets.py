"""Dataset loaders and their handling of bad input."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from xbench.config import DatasetConfig
from xbench.datasets import DatasetError, Skipped, build_dataset, check_dataset, collate, load_rgb
from xbench.datasets.base import UnreadableImage, read_table
from xbench.datasets.cub import read_cub
from xbench.datasets.folder import read_folder
from xbench.datasets.imagenet import read_imagenet
from xbench.datasets.transforms import build_transform

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _png(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path) if mode else Image.fromarray(array).save(path)
    return path


def _rgb(h=20, w=30, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------- image modes


def test_grayscale_rgba_cmyk_and_16_bit_images_become_rgb(tmp_path):
    gray = _png(tmp_path / "gray.png", np.full((5, 7), 100, np.uint8))
    np.testing.assert_array_equal(load_rgb(gray), np.full((5, 7, 3), 100, np.uint8))

    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, :2, 3] = 255  # left half opaque red, right half transparent -> white
    out = load_rgb(_png(tmp_path / "rgba.png", rgba))
    np.testing.assert_array_equal(out[0, 0], [200, 0, 0])
    np.testing.assert_array_equal(out[0, 3], [255, 255, 255])

    cmyk = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (6, 6), (0, 255, 255, 0)).save(cmyk)  # pure red in CMYK
    red = load_rgb(cmyk)
    assert red.shape == (6, 6, 3) and red[..., 0].min() > 200 and red[..., 1:].max() < 60

    sixteen = tmp_path / "deep.png"
    Image.fromarray(np.full((3, 3), 65535, np.uint16)).save(sixteen)
    with Image.open(sixteen) as im:
        assert im.mode.startswith("I")
    np.testing.assert_array_equal(load_rgb(sixteen), np.full((3, 3, 3), 255, np.uint8))
    half = tmp_path / "half.png"
    Image.fromarray(np.full((2, 2), 32768, np.uint16)).save(half)
    assert load_rgb(half)[0, 0, 0] == 128

    tiny = load_rgb(_png(tmp_path / "one.png", np.array([[[1, 2, 3]]], np.uint8)))
    assert tiny.shape == (1, 1, 3)


def test_truncated_empty_and_non_image_files_raise_unreadable(tmp_path):
    good = tmp_path / "good.jpg"
    Image.fromarray(_rgb(64, 64)).save(good, quality=90)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:300])
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.jpg"
    text.write_text("not an image at all")
    for path, reason in ((truncated, "cannot decode"), (empty, "empty file"), (text, "not an image")):
        with pytest.raises(UnreadableImage, match=reason):
            load_rgb(path)


# ---------------------------------------------------------------------------- folder layout


def _folder(tmp_path, splits=("train", "val"), classes=("cat", "dog"), n=2):
    base = tmp_path / "pets"
    for split in splits:
        for c, name in enumerate(classes):
            for i in range(n):
                _png(base / split / name / f"{i}.png", _rgb(seed=c * 10 + i))
    return base


def test_folder_layout_reads_classes_from_train_and_skips_bad_files(tmp_path):
    base = _folder(tmp_path)
    (base / "val" / "dog" / "broken.jpg").write_bytes(b"")
    (base / "val" / "dog" / "readme.txt").write_text("hello")
    ds = read_folder(base, "val", build_transform("resize", 16, False, MEAN, STD))
    assert ds.classes == ["cat", "dog"]
    assert len(ds) == 5  # 4 images + the broken one; readme.txt is not an image
    assert [p.reason for p in ds.problems] == ["not an image file (extension)"]
    samples = [ds[i] for i in range(len(ds))]
    skipped = [s for s in samples if isinstance(s, Skipped)]
    assert len(skipped) == 1 and skipped[0].path.endswith("broken.jpg") and "empty" in skipped[0].reason
    batch = collate(samples)
    assert batch["image"].shape == (4, 3, 16, 16) and len(batch["skipped"]) == 1
    assert batch["label"].tolist() == [0, 0, 1, 1]
    report = check_dataset(ds, "pets", "val", progress=False)
    assert report.num_images == 4 and report.per_class == {"cat": 2, "dog": 2}
    assert {p.reason.split()[0] for p in report.problems} == {"not", "empty"}


def test_folder_layout_errors_name_paths_and_classes(tmp_path):
    base = _folder(tmp_path)
    with pytest.raises(DatasetError, match=r"pets/test not found \(found: train, val\).*<root>/<name>/"):
        read_folder(base, "test")
    _png(base / "val" / "bird" / "0.png", _rgb())
    with pytest.raises(DatasetError, match="class 'bird' is in .*val but not in .*train"):
        read_folder(base, "val")
    cfg = DatasetConfig(name="pets", format="folder", root=str(tmp_path / "nowhere"))
    with pytest.raises(DatasetError, match="nowhere/pets/train not found"):
        build_dataset(cfg, "train")


def test_collate_pads_varying_sizes_with_a_padding_mask(tmp_path):
    base = _folder(tmp_path, splits=("train",), classes=("a",), n=1)
    _png(base / "train" / "a" / "tall.png", _rgb(40, 10))
    ds = read_folder(base, "train", build_transform("none", 0, False, MEAN, STD))
    batch = collate([ds[0], ds[1]])
    assert batch["image"].shape == (2, 3, 40, 30)
    shapes = sorted([(20, 30), (40, 10)])
    for i in range(2):
        valid = ~batch["pad_mask"][i]
        h, w = valid.any(1).sum().item(), valid.any(0).sum().item()
        assert (h, w) in shapes
        assert batch["image"][i][:, batch["pad_mask"][i]].abs().sum() == 0


def test_detr_transform_keeps_annotations_aligned():
    torch.manual_seed(0)
    train = build_transform("detr", 0, True, MEAN, STD)
    evaluate = build_transform("detr", 0, False, MEAN, STD)
    from xbench.datasets.transforms import as_tv_sample

    image = torch.zeros(3, 300, 400, dtype=torch.uint8)
    mask = torch.zeros(300, 400, dtype=torch.bool)
    mask[100:200, 150:250] = True
    box = torch.tensor([[150.0, 100.0, 250.0, 200.0]])
    out = evaluate(as_tv_sample(image, box=box, mask=mask))
    assert min(out["image"].shape[-2:]) == 800 and max(out["image"].shape[-2:]) <= 1333
    for _ in range(5):
        out = train(as_tv_sample(image, box=box, mask=mask))
        h, w = out["image"].shape[-2:]
        assert 384 <= min(h, w) <= 800 and max(h, w) <= 1333
        ys, xs = torch.nonzero(out["mask"], as_tuple=True)
        if len(ys):
            b = out["box"][0]
            assert abs(xs.min() - b[0]) <= 2 and abs(ys.min() - b[1]) <= 2


# ---------------------------------------------------------------------------- CUB layout


def _cub(tmp_path, n=3):
    root = tmp_path / "CUB_200_2011"
    lines = {k: [] for k in ("images", "labels", "split", "boxes")}
    for i in range(1, n + 1):
        rel = f"001.Tiny_Bird/bird_{i}.jpg"
        Image.fromarray(_rgb(40, 60, seed=i)).save(_png(root / "images" / rel, _rgb(40, 60, seed=i)))
        lines["images"].append(f"{i} {rel}")
        lines["labels"].append(f"{i} 1")
        lines["split"].append(f"{i} {int(i != n)}")
        lines["boxes"].append(f"{i} 10.0 5.0 20.0 30.0")
    (root / "images.txt").write_text("\n".join(lines["images"]) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(lines["labels"]) + "\n")
    (root / "train_test_split.txt").write_text("\n".join(lines["split"]) + "\n")
    (root / "bounding_boxes.txt").write_text("\n".join(lines["boxes"]) + "\n")
    (root / "classes.txt").write_text("1 001.Tiny_Bird\n")
    return root


def test_cub_boxes_follow_the_resize(tmp_path):
    root = _cub(tmp_path)
    ds = read_cub(root, "train", build_transform("resize", 120, False, MEAN, STD))
    sample = ds[0]
    # 60x40 -> 120x120: x scales by 2, y by 3; CUB's (x, y, w, h) becomes xyxy.
    torch.testing.assert_close(sample["box"], torch.tensor([[20.0, 15.0, 60.0, 105.0]]))
    assert len(read_cub(root, "test")) == 1


def test_cub_annotation_errors_name_file_and_line(tmp_path):
    root = _cub(tmp_path)
    (root / "bounding_boxes.txt").write_text("1 10 5 20 30\n2 10 5 20\n")
    with pytest.raises(DatasetError, match=r"bounding_boxes.txt, line 2: expected 5 columns, found 4"):
        read_cub(root, "train")
    with pytest.raises(DatasetError, match="does not exist"):
        read_cub(tmp_path / "missing", "train")
    shutil.rmtree(root / "images")
    (root / "images.txt").unlink()
    with pytest.raises(DatasetError, match="(?s)images.txt not found.*Expected under dataset.root"):
        read_cub(root, "train")


def test_cub_missing_annotation_lines_are_reported_not_fatal(tmp_path):
    root = _cub(tmp_path, n=4)
    (root / "image_class_labels.txt").write_text("1 1\n2 1\n4 1\n")  # image 3 has no label
    (root / "bounding_boxes.txt").write_text("1 10 5 20 30\n4 1 1 2 2\n")  # images 2, 3 have no box
    ds = read_cub(root, "all")
    assert len(ds) == 3
    reasons = sorted(p.reason for p in ds.problems)
    assert any("no line for image 3 in image_class_labels.txt" in r for r in reasons)
    assert any("no line for image 2 in bounding_boxes.txt" in r for r in reasons)
    assert ds.records[1].boxes is None


def test_read_table_rest_keeps_spaces_and_strips_newlines(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("1 Black footed albatross\n\n2 b\n")
    assert read_table(path, 2, rest=True) == [["1", "Black footed albatross"], ["2", "b"]]


# ---------------------------------------------------------------------------- ImageNet


def test_imagenet_val_labels_and_boxes_from_csv_or_xml(tmp_path):
    root = tmp_path / "ilsvrc"
    for wnid in ("n01", "n02"):
        _png(root / "train" / wnid / f"{wnid}_1.JPEG", _rgb())
    _png(root / "val" / "ILSVRC2012_val_00000001.JPEG", _rgb())
    _png(root / "val" / "ILSVRC2012_val_00000002.JPEG", _rgb())
    (root / "LOC_val_solution.csv").write_text(
        "ImageId,PredictionString\nILSVRC2012_val_00000001,n02 1 2 10 12 n02 3 3 5 5 \n")
    (root / "val" / "ILSVRC2012_val_00000002.xml").write_text(
        "<annotation><object><name>n01</name><bndbox><xmin>4</xmin><ymin>5</ymin><xmax>8</xmax>"
        "<ymax>9</ymax></bndbox></object></annotation>")
    ds = read_imagenet(root, "val")
    assert ds.classes == ["n01", "n02"]
    by_name = {r.path.stem: r for r in ds.records}
    assert by_name["ILSVRC2012_val_00000001"].label == 1
    np.testing.assert_array_equal(by_name["ILSVRC2012_val_00000001"].boxes, [[1, 2, 10, 12], [3, 3, 5, 5]])
    assert by_name["ILSVRC2012_val_00000002"].label == 0
    np.testing.assert_array_equal(by_name["ILSVRC2012_val_00000002"].boxes, [[4, 5, 8, 9]])
    train = read_imagenet(root, "train")
    assert [r.label for r in train.records] == [0, 1]
    sample = collate([read_imagenet(root, "val", build_transform("resize", 16, False, MEAN, STD))[0]])
    assert sample["box"].shape == (1, 2, 4)
    # At 8 px the 2x2 box shrinks below a pixel and is dropped (torchvision's SanitizeBoundingBoxes rule).
    sample = collate([read_imagenet(root, "val", build_transform("resize", 8, False, MEAN, STD))[0]])
    assert sample["box"].shape == (1, 1, 4)

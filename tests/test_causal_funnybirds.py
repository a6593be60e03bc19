"""xbench's causal metrics equal the FunnyBirds framework's own protocol functions on xbench's renderer.

The framework (github.com/visinf/funnybirds-framework, `evaluation_protocols.py` and
`explainers/explainer_wrapper.py`) is not a package: point FUNNYBIRDS_FRAMEWORK at a checkout of it
(tested at commit 1350bbe) to run this file; it is skipped otherwise. Its protocols read a `FunnyBirds`
dataset; a small adapter subclass serves xbench's synthetic split instead (`parts`, `colors_to_part`,
`classes`, `get_intervention`, `get_background_intervention`), keeping the framework's own
`get_minimal_sufficient_part_sets`, `get_classes_with_distance_n` and `get_params_for_single`. The same
trained cnn and the same prepared maps go to both; xbench runs through `xbench evaluate`.

The framework's dataset module imports `requests` (for its render server, which the adapter replaces)
and `base64.decodestring` (gone since Python 3.9), and its explainer module imports the ViT explainers
(einops): those imports are stubbed, as nothing here uses them.
"""

from __future__ import annotations

import argparse
import base64
import importlib
import os
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import xbench
from xbench.config import load_config
from xbench.datasets import build_dataset
from xbench.datasets.birds import (
    PART_ID,
    REMOVABLE_PARTS,
    SynthSettings,
    class_table,
    contrast_classes,
    minimal_sufficient_part_sets,
)
from xbench.datasets.synth import generate
from xbench.engine.evaluate import evaluate
from xbench.metrics.causal import THRESHOLDS, PartInterventions, SceneBatch, SceneSource, background_independence
from xbench.metrics.saliency import prepare
from xbench.train.trainer import train

from .conftest import CNN, data_overrides

FRAMEWORK = os.environ.get("FUNNYBIRDS_FRAMEWORK")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not FRAMEWORK or not (Path(FRAMEWORK) / "evaluation_protocols.py").is_file(),
    reason="set FUNNYBIRDS_FRAMEWORK to a checkout of github.com/visinf/funnybirds-framework")]
METHODS = ("gradcam", "random", "centre")


@pytest.fixture(scope="module")
def framework():
    """The framework's protocols and explainer base class, imported from FUNNYBIRDS_FRAMEWORK."""
    base64.decodestring = base64.decodebytes  # the dataset module imports the pre-3.9 name
    sys.modules.setdefault("requests", types.ModuleType("requests"))
    vit = types.ModuleType("models.ViT.ViT_explanation_generator")
    vit.Baselines = vit.LRP = object
    saved = {name: sys.modules.get(name) for name in ("datasets", "models", "models.ViT", vit.__name__)}
    for name in ("datasets", "models"):
        sys.modules.pop(name, None)
    sys.modules["models.ViT.ViT_explanation_generator"] = vit
    sys.path.insert(0, FRAMEWORK)
    try:
        protocols = importlib.import_module("evaluation_protocols")
        wrapper = importlib.import_module("explainers.explainer_wrapper")
        birds = importlib.import_module("datasets.funny_birds")
        yield protocols, wrapper, birds
    finally:
        sys.path.remove(FRAMEWORK)
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def adapter(birds_module, dataset):
    """A FunnyBirds dataset class that serves `dataset` (an xbench synthetic split)."""

    class XbenchBirds(birds_module.FunnyBirds):
        def __init__(self, root_dir, mode, get_part_map=False, transform=None):
            attribute_parts = dataset.scenes.attribute_parts
            values = dataset.scenes.settings.difficulty.values_per_attribute
            self.parts = {p: list(range(values)) for p in REMOVABLE_PARTS}
            self.classes = [{"class_idx": c, "parts": {p: int(row[attribute_parts.index(p)]) if p in attribute_parts
                                                       else 0 for p in REMOVABLE_PARTS}}
                            for c, row in enumerate(dataset.scenes.table)]
            # The framework's get_minimal_sufficient_part_sets never finds a set for the last class of the list
            # (its loop skips the class itself before the "last class" check). A phantom class last, sharing no
            # variant with any class, shows no image and changes no set or distance, and lifts that.
            self.classes.append({"class_idx": len(self.classes), "parts": {p: -1 for p in REMOVABLE_PARTS}})
            self.colors_to_part = {(PART_ID[p], 0, 0): p for p in REMOVABLE_PARTS}

        def __len__(self):
            return len(dataset)

        def __getitem__(self, idx):
            sample = dataset.intervened(idx)
            part_map = torch.zeros(3, *sample["part_mask"].shape)
            for part in REMOVABLE_PARTS:
                part_map[0][sample["part_mask"] == PART_ID[part]] = PART_ID[part]
            for i in range(sample["distractor_count"]):
                where = sample["distractors"] == i + 1
                part_map[:, where] = torch.tensor([204.0, 204.0, 204.0 + i])[:, None]
            label = dataset.records[idx].label
            params = {"class_idx": label, "bg_objects": " ".join(map(str, range(sample["distractor_count"])))}
            return {"image": sample["image"], "params": params, "class_idx": label, "part_map": part_map,
                    "image_idx": idx}

        def get_intervention(self, class_idx, image_idx, parts_removed):
            return {"image": dataset.intervened(image_idx, tuple(parts_removed))["image"][None]}

        def get_background_intervention(self, class_idx, image_idx, bg_object_id):
            return {"image": dataset.intervened(image_idx, (f"distractor_{bg_object_id}",))["image"][None]}

    return XbenchBirds


def explainer(wrapper_module, method, model):
    """The framework's attribution wrapper around xbench's prepared maps of `method` (float64, (1, 1, H, W))."""
    explain = xbench.build_explainer(method, model)

    class PreparedMaps(wrapper_module.AbstractAttributionExplainer):
        def __init__(self):
            self.explainer_name = method

        def explain(self, input, target):
            target = torch.as_tensor(target).reshape(-1)
            return prepare(explain(input, target), tuple(input.shape[-2:])).maps.double()[:, None]

    return PreparedMaps()


@pytest.fixture(scope="module", params=["default", "many"])
def scored(request, tmp_path_factory):
    """A cnn trained on a synthetic split of `preset`, and xbench's causal evaluation of METHODS on it."""
    preset = request.param
    # "many": 16 classes of seed 3 give every class two contrast classes (target sensitivity)
    settings = SynthSettings(classes=12 if preset == "default" else 16, size=48, train_per_class=60,
                             test_per_class=4, seed=1 if preset == "default" else 3, preset=preset)
    base = tmp_path_factory.mktemp(preset)
    root = generate(base / "data", settings, workers=2, progress=False)
    overrides = data_overrides(root, settings) + [f"output_dir={base / 'runs'}"]
    run = train(load_config([], overrides + CNN + ["train.epochs=10", "train.batch_size=32", "train.lr=0.003",
                                                   "train.warmup_epochs=0"]), progress=False)
    cfg = load_config([], overrides + [f"evaluate.checkpoints.cnn={run['run_dir']}/best.pt", "evaluate.metrics=causal",
                                       f"evaluate.methods={','.join(METHODS)}", "evaluate.batch_size=16"])
    results = evaluate(cfg, out=base / "results", progress=False)
    model, _ = xbench.load_model(f"{run['run_dir']}/best.pt")
    dataset = build_dataset(cfg.dataset, "test")
    return preset, model.eval(), dataset, pd.read_csv(results / "results.csv"), np.load(results / "curves.npz")


def _mean_curve(rows, curves, method, name):
    mine = rows.index[rows["method"] == f"{method}@cnn"].to_numpy()
    where = np.isin(curves[f"{name}_curve.row"], mine)
    return np.nanmean(curves[f"{name}_curve"][where], axis=0)


@pytest.mark.parametrize("method", METHODS)
def test_every_protocol_equals_the_frameworks(framework, scored, method, monkeypatch):
    protocols, wrapper, birds = framework
    preset, model, dataset, rows, curves = scored
    monkeypatch.setattr(protocols, "FunnyBirds", adapter(birds, dataset))
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *args, **kwargs: self)  # the framework moves to a GPU
    args = argparse.Namespace(data="(xbench)", gpu=None, nr_itrs=10**6, batch_size=16)
    wrapped = explainer(wrapper, method, model)
    mine = rows[rows["method"] == f"{method}@cnn"]
    with torch.no_grad():
        accuracy = protocols.accuracy_protocol(model, args)
    assert accuracy == pytest.approx(mine["acc1"].mean(), abs=1e-6)

    sd = protocols.single_deletion_protocol(model, wrapped, args)
    assert sd == pytest.approx(mine["single_deletion"].mean(), abs=1e-6)
    for name, protocol in (("preservation_check", protocols.preservation_check_protocol),
                           ("deletion_check", protocols.deletion_check_protocol),
                           ("controlled_synthetic_data_check", protocols.controlled_synthetic_data_check_protocol),
                           ("distractibility", protocols.distractibility_protocol)):
        theirs = protocol(model, wrapped, args)
        np.testing.assert_allclose([theirs[t] for t in THRESHOLDS], _mean_curve(mine, curves, method, name),
                                   atol=1e-6, err_msg=name)
    # FunnyBirds pools background objects over the dataset; xbench scores each image (its counts pool alike)
    bi = protocols.background_independence_protocol(model, args)
    source = SceneSource(dataset.intervened, dataset.scenes.table, dataset.scenes.attribute_parts)
    labels = torch.tensor([r.label for r in dataset.records])
    scenes = SceneBatch(source, range(len(dataset)), labels, torch.device("cpu"))
    with torch.no_grad():
        images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
        counts = background_independence(PartInterventions(scenes, model, model(images), 64), labels)
    assert bi == pytest.approx(1 - counts["relevant"].sum().item() / counts["distractors"].sum().item(), abs=1e-9)
    if preset == "many":  # FunnyBirds' target sensitivity takes classes at distance 3: xbench's rule for 4 parts
        assert all(contrast_classes(dataset.scenes.table, dataset.scenes.attribute_parts, r.label) is not None
                   for r in dataset.records)
        ts = protocols.target_sensitivity_protocol(model, wrapped, args)
        assert ts == pytest.approx(mine["target_sensitivity"].mean(), abs=1e-6)


def test_the_frameworks_minimal_sufficient_sets_miss_the_last_class(framework):
    """Why the adapter lists a phantom class last: without it the framework's CSDC scores every image of the
    last class 0, whatever the map; xbench's sets are those of the definition."""
    _, _, birds = framework
    settings = SynthSettings(classes=12, seed=1)
    table, parts = class_table(settings), settings.difficulty.attribute_parts
    theirs = birds.FunnyBirds.__new__(birds.FunnyBirds)
    theirs.parts = {p: list(range(4)) for p in parts}
    theirs.classes = [{"class_idx": c, "parts": dict(zip(parts, map(int, row)))} for c, row in enumerate(table)]
    named = [[{name.split("_")[0] for name in found} for found in theirs.get_minimal_sufficient_part_sets(c)]
             for c in range(len(table))]
    ours = [minimal_sufficient_part_sets(table, parts, c) for c in range(len(table))]
    assert named[:-1] == ours[:-1]
    assert named[-1] == [] and ours[-1] != []

"""The evaluation engine: sharding, resuming, locking, the store, and what figures need."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

import xbench
from xbench.checkpoints import checkpoint_payload, save_checkpoint
from xbench.config import load_config
from xbench.engine.evaluate import Evaluator, evaluate, evaluation_indices
from xbench.engine.methods import parse_methods
from xbench.engine.store import ResultStore, StoreLocked, StoreMismatch, load_results
from xbench.registry import UnknownNameError

from .conftest import HALF


def _rows(path) -> pd.DataFrame:
    return load_results(path)[0].sort_values(["method", "index"]).reset_index(drop=True)


def test_one_shard_or_four_gives_identical_rows(tiny_run_setup):
    base, overrides = tiny_run_setup
    one = evaluate(load_config([], overrides + ["evaluate.shard_size=12"]), out=base / "one", progress=False)
    four = evaluate(load_config([], overrides + ["evaluate.shard_size=4"]), out=base / "four", progress=False)
    a, b = _rows(one), _rows(four)
    assert len(a) == 12 * 6 and set(a["method"]) == {
        "gradcam@cnn", "attention@intr", "attention@ca_stream", "gradcam@intr", "random@cnn", "centre@cnn"}
    pd.testing.assert_frame_equal(a, b)
    assert len(ResultStore(four).done_shards()) == 3
    curves_a, curves_b = load_results(one)[1], load_results(four)[1]
    assert curves_a["insertion_curve"].shape == (72, 7)  # 48 px, 8 rows of 48 per step: 6 steps + 1
    rows_a = load_results(one)[0]
    for key in ("insertion_curve", "box_hits_v2"):  # curves follow their rows through the merge
        ra = rows_a.iloc[curves_a[f"{key}.row"]][["method", "index"]].to_numpy()
        rb = load_results(four)[0].iloc[curves_b[f"{key}.row"]][["method", "index"]].to_numpy()
        lookup = {tuple(r): i for i, r in enumerate(rb)}
        for i, r in enumerate(ra):
            np.testing.assert_array_equal(curves_a[key][i], curves_b[key][lookup[tuple(r)]])


def test_rows_hold_every_metric_and_auc_matches_curve(tiny_run_setup):
    base, overrides = tiny_run_setup
    rows, curves = load_results(evaluate(load_config([], overrides), out=base / "cols", progress=False))
    for column in ("insertion", "deletion", "drop", "gain", "increase", "pointing_game_box", "pointing_game_mask",
                   "pointing_game_parts", "pointing_centre_parts", "energy_pointing_game_box", "mass_accuracy_mask",
                   "mass_accuracy_parts", "rank_accuracy_parts", "sparseness", "complexity", "acc1", "acc5",
                   "degenerate", "nonfinite", "target", "label", "prediction", "prob"):
        assert column in rows.columns, column
    curve = curves["insertion_curve"]
    auc = (curve.sum(1) - (curve[:, 0] + curve[:, -1]) / 2) / (curve.shape[1] - 1)
    np.testing.assert_allclose(rows["insertion"].to_numpy()[curves["insertion_curve.row"]], auc, atol=1e-6)
    assert rows.loc[rows["method"] == "centre@cnn", "degenerate"].eq(False).all()


def test_a_failed_run_resumes_without_redoing_finished_shards(tiny_run_setup, monkeypatch):
    base, overrides = tiny_run_setup
    cfg = load_config([], overrides + ["evaluate.shard_size=4"])
    reference = _rows(evaluate(cfg, out=base / "ref", progress=False))
    calls = {"n": 0}
    original = Evaluator._run_shard

    def failing(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated kill")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Evaluator, "_run_shard", failing)
    with pytest.raises(KeyboardInterrupt):
        evaluate(cfg, out=base / "resumed", progress=False)
    assert ResultStore(base / "resumed").done_shards() == {0, 1}
    assert not list((base / "resumed" / "shards").glob(".*.tmp"))
    done = {p: p.stat().st_mtime_ns for p in (base / "resumed" / "shards").glob("0000[01].csv")}
    monkeypatch.setattr(Evaluator, "_run_shard", original)
    resumed = _rows(evaluate(cfg, out=base / "resumed", progress=False))
    pd.testing.assert_frame_equal(resumed, reference)
    assert {p: p.stat().st_mtime_ns for p in done} == done  # finished shards were not rewritten


def test_other_settings_and_a_second_process_are_refused(tiny_run_setup):
    base, overrides = tiny_run_setup
    evaluate(load_config([], overrides), out=base / "guarded", progress=False)
    with pytest.raises(StoreMismatch, match="methods differ"):
        evaluate(load_config([], overrides + ["evaluate.methods=gradcam"]), out=base / "guarded", progress=False)
    with ResultStore(base / "guarded").lock():
        with pytest.raises(StoreLocked, match="is in use by pid .*--wait"):
            evaluate(load_config([], overrides), out=base / "guarded", progress=False)
    fresh = evaluate(load_config([], overrides + ["evaluate.methods=gradcam"]), out=base / "guarded", fresh=True,
                     progress=False)
    assert set(load_results(fresh)[0]["method"]) == {"gradcam@cnn"}


def test_store_keeps_what_figures_need(tiny_run_setup):
    base, overrides = tiny_run_setup
    out = evaluate(load_config([], overrides), out=base / "figs", progress=False)
    with np.load(out / "maps.npz") as data:
        keys = set(data.files)
        samples = {int(k.split("|")[1]) for k in keys if k.startswith("image|")}
        assert len(samples) == 5
        for i in samples:
            assert data[f"image|{i}"].shape == (48, 48, 3) and data[f"image|{i}"].dtype == np.uint8
            for method in ("gradcam@cnn", "attention@intr", "random@cnn"):
                saliency = data[f"saliency|{method}|{i}"]
                assert saliency.dtype == np.float16 and saliency.shape == (48, 48)
            assert data[f"topk|cnn|{i}"].shape == (3, 2)  # top-k capped at the class count
            heads = data[f"heads|intr|{i}"]
            assert heads.shape == (4, 4, 3, 3)  # true class + top-3, 4 heads, 3x3 grid at stride 16
            np.testing.assert_allclose(heads.astype(np.float32).sum((-1, -2)), 1.0, atol=1e-2)
            assert data[f"headclasses|intr|{i}"].shape == (4,)
    summary = (out / "summary.json").read_text()
    assert '"rows": 72' in summary and "versions" not in summary
    provenance = json.loads((out / "provenance.json").read_text())
    assert "grad-cam" in provenance["versions"] and provenance["date"] and provenance["device"] == "cpu"
    assert provenance["torch_threads"] == torch.get_num_threads() and provenance["cpu_capability"]  # reduction order


def test_method_names_and_subsets():
    methods = parse_methods(["intr", "gradcam", "gradcam@ca_stream", "icn", "ca_stream", "rise@intr"])
    assert [m.label for m in methods] == ["attention@intr", "gradcam@cnn", "gradcam@ca_stream", "attention@icn",
                                          "attention@ca_stream", "rise@intr"]
    with pytest.raises(UnknownNameError, match="unknown method 'gradcom'"):
        parse_methods(["gradcom"])
    with pytest.raises(UnknownNameError, match="unknown model 'vit'"):
        parse_methods(["gradcam@vit"])
    assert evaluation_indices([0] * 10, None, 0) == list(range(10))
    labels = [i // 50 for i in range(1000)]  # 20 classes of 50, in order
    subset = evaluation_indices(labels, 20, 0)
    assert len(subset) == 20 and subset == sorted(subset) and subset == evaluation_indices(labels, 20, 0)
    assert max(subset) > 500  # spread over the split, not its first classes


def test_missing_checkpoint_and_wrong_classes_are_named(tiny_run_setup, tmp_path):
    base, overrides = tiny_run_setup
    with pytest.raises(FileNotFoundError, match="no checkpoint for icn: .*xbench train --method icn"):
        evaluate(load_config([], overrides + ["evaluate.methods=icn"]), out=tmp_path / "x", progress=False)
    model = xbench.build_model("cnn", num_classes=5, **HALF)
    save_checkpoint(tmp_path / "five.pt", checkpoint_payload(model, "cnn", 5, list("abcde"), {}))
    with pytest.raises(ValueError, match="3 of the data's 3 classes are not among the 5 classes of cnn .*'001"):
        evaluate(load_config([], overrides + ["evaluate.methods=gradcam", f"evaluate.checkpoints.cnn={tmp_path}/five.pt"]),
                 out=tmp_path / "y", progress=False)


def test_parameter_randomisation_is_opt_in_and_cascades(tiny_run_setup):
    base, overrides = tiny_run_setup
    plain = load_results(evaluate(load_config([], overrides + ["evaluate.methods=gradcam,intr"]),
                                  out=base / "plain", progress=False))[0]
    assert "randomisation_spearman" not in plain.columns
    out = evaluate(load_config([], overrides + ["evaluate.methods=gradcam,intr,random",
                                                "evaluate.parameter_randomisation=true"]),
                   out=base / "sanity", progress=False)
    rows, curves = load_results(out)
    rho = rows.set_index("method")["randomisation_spearman"]
    assert rho.notna().all() and (rho.abs() <= 1 + 1e-6).all()
    # A map that ignores the model never changes; INTR's attention does not depend on its presence
    # vector and the decoder's final norm (the first two steps, still 1.0) but on the decoder layer
    # below them, which the cascade reaches.
    assert (rho.loc["random@cnn"] == 1.0).all() and (rho.loc["attention@intr"] < 0.9).all()
    cascade = curves["randomisation_cascade"]
    methods = rows["method"].to_numpy()[curves["randomisation_cascade.row"]]
    intr = cascade[methods == "attention@intr"]
    assert intr.shape[1] == 11 and np.allclose(intr[:, :2], 1.0) and (intr[:, 2] < 0.99).all()


def test_efficient_mprt_shares_the_cascade_with_parameter_randomisation(tiny_run_setup, monkeypatch):
    from xbench.metrics.sanity import RandomisationCascade

    base, overrides = tiny_run_setup
    runs = []
    original = RandomisationCascade.maps

    def counted(self, compute, last_only=False):
        runs.append(last_only)
        return original(self, compute, last_only)

    monkeypatch.setattr(RandomisationCascade, "maps", counted)
    out = evaluate(load_config([], overrides + ["evaluate.methods=intr,random", "evaluate.batch_size=16",
                                                "evaluate.metrics=all,parameter_randomisation,efficient_mprt"]),
                   out=base / "empirt", progress=False)
    rows = load_results(out)[0].set_index("method")
    assert (rows.loc["random@cnn", "efficient_mprt"] == 0).all()  # a map that ignores the model: no rise
    assert rows.loc["attention@intr", "efficient_mprt"].notna().all()
    assert runs == [False, False]  # one full cascade per method and batch, its last step reused
    runs.clear()
    evaluate(load_config([], overrides + ["evaluate.methods=random", "evaluate.batch_size=16",
                                          "evaluate.metrics=efficient_mprt"]), out=base / "empirt_only", progress=False)
    assert runs == [True]  # alone, only the fully randomised model is explained


def test_the_cascade_randomises_top_down_and_restores_the_weights():
    from xbench.metrics.sanity import RandomisationCascade

    cnn = xbench.build_model("cnn", num_classes=3, **HALF)
    with torch.no_grad():  # "trained" weights, unlike any fresh initialisation (BatchNorm's 1 and 0)
        for parameter in cnn.parameters():
            parameter.add_(0.1)
    cascade = RandomisationCascade(cnn, seed=1)
    assert cascade.names[:3] == ["fc", "layer4.1", "layer4.0"] and cascade.names[-1] == "conv1"
    trained = {k: v.clone() for k, v in cascade.model.state_dict().items()}
    seen = []

    def changed():
        now = cascade.model.state_dict()
        seen.append({k.split(".weight")[0].split(".bias")[0] for k, v in now.items()
                     if v.is_floating_point() and not torch.equal(v, trained[k]) and "running" not in k})
        return torch.zeros(1, 2, 2)

    cascade.maps(changed)
    assert seen[0] == {"fc"} and "layer4.1.conv1" in seen[1] and not any("layer4.0" in k for k in seen[1])
    assert all(a < b for a, b in zip(seen, seen[1:]))  # each step adds a block, keeps the ones above
    assert all(torch.equal(v, trained[k]) for k, v in cascade.model.state_dict().items())  # restored
    again = RandomisationCascade(cnn, seed=1)
    first = []
    again.maps(lambda: first.append(again.model.fc.weight.clone()) or torch.zeros(1, 2, 2))
    cascade.maps(lambda: first.append(cascade.model.fc.weight.clone()) or torch.zeros(1, 2, 2))
    assert torch.equal(first[0], first[len(cascade.names)])  # seeded: the same draws every time


def test_focus_tiles_each_image_with_partners_drawn_from_the_dataset(tiny_run_setup):
    from xbench.datasets import build_dataset

    base, overrides = tiny_run_setup
    dataset = build_dataset(load_config([], overrides).dataset, "test")
    labels = [r.label for r in dataset.records]
    for index in range(len(dataset)):
        same, first, second = dataset.mosaic_partners(index)
        assert same != index and labels[same] == labels[index]
        assert len({labels[first], labels[second], labels[index]}) == 3
        assert dataset.mosaic_partners(index) == (same, first, second)  # drawn from the index: no batch involved
    out = evaluate(load_config([], overrides + ["evaluate.methods=gradcam,random,centre", "evaluate.metrics=focus"]),
                   out=base / "focus", progress=False)
    rows = load_results(out)[0]
    assert rows["focus"].between(0, 1).all()
    assert abs(rows.loc[rows["method"] == "random@cnn", "focus"].mean() - 0.5) < 0.1  # noise: half the quadrants
    with pytest.raises(ValueError, match="tiles each image with other images"):
        xbench.evaluate_model(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 3)),
                              torch.rand(2, 3, 32, 32), torch.tensor([0, 1]), methods=["random"], metrics=["focus"],
                              progress=False)


def test_smooth_mprt_runs_on_the_randomised_copy(tiny_run_setup):
    base, overrides = tiny_run_setup
    out = evaluate(load_config([], overrides + ["evaluate.methods=gradcam,random", "evaluate.metrics=smooth_mprt"]),
                   out=base / "smprt", progress=False)
    rows = load_results(out)[0].set_index("method")
    assert np.allclose(rows.loc["random@cnn", "smooth_mprt"], 1.0)  # noise maps ignore the weights
    assert rows.loc["gradcam@cnn", "smooth_mprt"].between(-1, 1).all()


def test_the_progress_bar_names_each_methods_cost_and_the_first_batch_estimates_the_rest(tiny_run_setup, capsys):
    base, overrides = tiny_run_setup
    evaluate(load_config([], overrides + ["evaluate.methods=gradcam@cnn,random@cnn", "evaluate.metrics=sparseness"]),
             out=base / "progress", progress=True)
    err = capsys.readouterr().err
    first = [line for line in err.splitlines() if line.startswith("first batch:")]
    assert len(first) == 1 and "for the 8 images left" in first[0]  # 12 images, batches of 4
    assert "gradcam@cnn" in first[0] or "random@cnn" in first[0]
    assert "gradcam@cnn" in err and "random@cnn" in err and "s/img" in err  # the bar's per-method costs


def test_batch_scorer_timing_and_estimate_read_the_seconds_per_method():
    from xbench.engine.methods import Method
    from xbench.engine.scoring import BatchScorer

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    scorer = BatchScorer({"m": model}, [Method("random", "m"), Method("uniform", "m")], ["sparseness"],
                         target="pred", protocol="ca_stream", mean=(0, 0, 0), std=(1, 1, 1),
                         device=torch.device("cpu"))
    assert scorer.timing() == ""
    scorer.seconds, scorer.images_scored = {"random@m": 2.0, "uniform@m": 30.0}, 10
    assert scorer.timing() == "uniform@m 3 s/img, random@m 0.2 s/img"
    assert scorer.estimate(2000) == "3.2 s per image so far (uniform@m: 3 s), about 1 h 47 min for the 2000 images left"

"""A reduced quickstart, end to end: every output, skipping finished stages, same seed -> same numbers."""

from __future__ import annotations

import logging

import pandas as pd
import pytest
import yaml

from xbench.quickstart import load_quickstart, quickstart
from xbench.report.leaderboard import CENTRE

pytestmark = pytest.mark.slow  # trains three models and evaluates every metric
METHODS = ["attention@intr", "attention@ca_stream", "transformer_relevancy@intr", "gradcam@cnn", "gradcampp@cnn",
           "scorecam@cnn", "gradcam@ca_stream", "gradcam@intr", "integrated_gradients@cnn", "deeplift@cnn",
           "deeplift_shap@cnn", "lrp_epsilon_plus_flat@cnn", "lrp_epsilon_gamma_box@cnn", "guided_backprop@cnn",
           "guided_gradcam@cnn", "rise@cnn", "random@cnn", "centre@cnn", "uniform@cnn"]


def tiny_config(tmp_path):
    """The packaged quickstart.yaml with every size cut down; the same stages and methods."""
    from xbench.quickstart import default_config

    data = yaml.safe_load(default_config().read_text())
    data["dataset"].update(root=str(tmp_path / "data"), image_size=48)
    data["dataset"]["synth"].update(classes=4, size=48, train_per_class=30, test_per_class=4)
    data["output_dir"] = str(tmp_path / "runs")
    for stage in data["stages"].values():
        stage["train"].update(epochs=1, batch_size=16)
    for name in ("intr", "icn"):
        data["stages"][name]["model"].update(hidden_dim=32, nheads=4, enc_layers=1, dec_layers=1, dim_feedforward=32)
    data["stages"]["cnn"]["model"]["channels"] = [16, 32, 64, 128]
    data["evaluate"].update(limit=8, batch_size=8, shard_size=4, saliency_samples=4, out=str(tmp_path / "results"))
    data["evaluate"]["explainers"].update(rise={"masks": 20}, integrated_gradients={"steps": 4})
    path = tmp_path / "quickstart.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_reduced_quickstart_end_to_end(tmp_path, caplog):
    config = tiny_config(tmp_path)
    summary = quickstart(config, progress=False)
    results = tmp_path / "results"
    for name in ("leaderboard.md", "leaderboard.csv", "leaderboard.tex", "leaderboard.html", "report.html",
                 "results.csv", "curves.npz", "maps.npz", "summary.json", "quickstart.json", "config.yaml", "meta.md",
                 "meta.csv", "funnybirds.csv"):
        assert (results / name).stat().st_size > 0, name
    for figure in ("curves", "dotplot", "rank_heatmap", "qualitative", "intr_heads", "part_importance",
                   "meta_agreement"):
        assert (results / "figures" / f"{figure}.png").stat().st_size > 0
        assert (results / "figures" / f"{figure}.pdf").stat().st_size > 0
    for model in ("cnn", "ca_stream", "intr"):
        assert (tmp_path / "runs" / "quickstart" / model / "best.pt").is_file()
    cells = pd.read_csv(results / "leaderboard.csv")
    assert set(cells["method"]) == set(METHODS) | {CENTRE}
    expected_metrics = {f"{name}_{region}" for name in ("attribution_localisation", "top_k_intersection", "auc")
                        for region in ("box", "mask", "parts")}
    expected_metrics |= {"insertion", "deletion", "drop", "increase", "gain", "pointing_game_box",
                        "pointing_game_mask", "pointing_game_parts", "energy_pointing_game_box", "mass_accuracy_mask",
                        "mass_accuracy_parts", "rank_accuracy_mask", "rank_accuracy_parts", "max_box_acc",
                        "max_box_acc_v2", "sparseness", "complexity", "effective_complexity", "single_deletion",
                        "single_deletion_size",
                        "preservation_check",
                        "deletion_check", "controlled_synthetic_data_check", "distractibility", "target_sensitivity",
                        "background_independence", "neighbour_swap"}
    for method in METHODS:  # CSDC and TS score only some images: on 8 images some method may have none
        found = set(cells.loc[cells["method"] == method, "metric"])
        assert expected_metrics - {"controlled_synthetic_data_check", "target_sensitivity"} <= found <= expected_metrics
    assert "single_deletion" in (results / "meta.md").read_text()
    assert set(summary["single_deletion"]) >= {"attention@intr", "gradcam@cnn"}
    assert set(summary["test_acc1"]) == {"cnn", "ca_stream", "intr"}
    assert set(summary["pointing_game_parts"]) >= {"attention@intr", "random@cnn"}
    assert "gradcam@cnn" in summary["terminal_table"]

    checkpoints = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("best.pt")}
    with caplog.at_level(logging.INFO):
        again = quickstart(config, progress=False)
    for model in ("cnn", "ca_stream", "intr"):
        assert f"{model}: already trained in" in caplog.text
    assert "shards already done; resuming" in caplog.text
    assert "is up to date with these results; skipping" in caplog.text  # the same rows: the report stands
    assert {p: p.stat().st_mtime_ns for p in checkpoints} == checkpoints
    assert again["test_acc1"] == summary["test_acc1"]
    assert pd.read_csv(results / "leaderboard.csv").equals(cells)

    fresh = quickstart(config, fresh=True, progress=False)  # everything again, from the same seed
    assert {p: p.stat().st_mtime_ns for p in checkpoints} != checkpoints
    assert fresh["test_acc1"] == summary["test_acc1"]
    pd.testing.assert_frame_equal(pd.read_csv(results / "leaderboard.csv"), cells)


def test_icn_is_optional_and_the_config_is_checked(tmp_path):
    config = tiny_config(tmp_path)
    base, stages = load_quickstart(config)
    assert list(stages) == ["cnn", "ca_stream", "intr"] and "icn" not in base.evaluate.methods
    base, stages = load_quickstart(config, with_icn=True)
    assert list(stages) == ["cnn", "ca_stream", "intr", "icn"] and "icn" in base.evaluate.methods
    assert stages["icn"].model.options["init_backbone_from"].endswith("runs/quickstart/cnn/best.pt")
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: {name: x}\n")
    from xbench.config import ConfigError

    with pytest.raises(ConfigError, match="needs a 'stages:' mapping"):
        load_quickstart(bad)

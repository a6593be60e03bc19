"""The command line: help texts, list, data synth and data check."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from xbench.cli import app

runner = CliRunner()


@pytest.mark.parametrize("args", [[], ["list"], ["data"], ["data", "synth"], ["data", "check"], ["train"],
                                  ["evaluate"]])
def test_every_command_has_useful_help(args):
    result = runner.invoke(app, [*args, "--help"])
    assert result.exit_code == 0
    assert "Usage" in result.output and len(result.output.splitlines()) > 5


def test_data_synth_then_check(tmp_path):
    out = tmp_path / "bench"
    result = runner.invoke(app, ["data", "synth", "--out", str(out), "--classes", "3", "--size", "40",
                                 "--train-per-class", "2", "--test-per-class", "1", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "wrote 9 images" in result.output
    result = runner.invoke(app, ["data", "check", "--dataset", "cub", "--data-root", str(out), "-v"])
    assert result.exit_code == 0, result.output
    assert "cub/train: 6 images, 3 classes" in result.output
    assert "cub/test: 3 images, 3 classes" in result.output
    assert "image size: height 40-40" in result.output


def test_check_reports_unreadable_files(tmp_path):
    out = tmp_path / "bench"
    runner.invoke(app, ["data", "synth", "--out", str(out), "--classes", "2", "--size", "40",
                        "--train-per-class", "2", "--test-per-class", "1", "--workers", "1"])
    victim = next((out / "images").rglob("*.png"))
    victim.write_bytes(b"")
    result = runner.invoke(app, ["data", "check", "--dataset", "cub", "--data-root", str(out)])
    assert result.exit_code == 1  # a check that finds problems fails, for scripts that run it
    assert f"problem: {victim}: empty file" in result.output
    assert "1 problem(s) found" in result.output


def test_user_errors_are_one_line_with_exit_code_2(tmp_path):
    result = runner.invoke(app, ["data", "check", "--dataset", "cub", "--data-root", str(tmp_path / "none")])
    assert result.exit_code == 2 and "error:" in result.output and "does not exist" in result.output
    result = runner.invoke(app, ["data", "check", "--set", "train.epoch=1"])
    assert result.exit_code == 2 and "unknown key train.epoch" in result.output
    result = runner.invoke(app, ["list", "gizmos"])
    assert result.exit_code == 2 and "choose one of" in result.output


def test_list_shows_datasets():
    result = runner.invoke(app, ["list", "datasets"])
    assert result.exit_code == 0
    for name in ("cub", "folder", "imagenet", "synth"):
        assert name in result.output


def test_list_shows_metrics_with_their_family():
    result = runner.invoke(app, ["list", "metrics"])
    for name in ("insertion_deletion", "average_drop_gain", "pointing_game", "max_box_accuracy",
                 "parameter_randomisation"):
        assert name in result.output
    lines = {line.split()[0]: line for line in result.output.splitlines()[1:]}
    assert lines["insertion_deletion"].endswith("[faithfulness]")
    assert lines["single_deletion"].endswith("[causal, opt-in]")
    assert lines["parameter_randomisation"].endswith("[sanity, opt-in]")
    families = [line.rsplit("[", 1)[1].split("]")[0].split(",")[0] for line in lines.values()]
    assert families == sorted(families)  # grouped by family: what evaluate.metrics=all,<family> selects

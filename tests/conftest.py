"""Shared fixtures: tiny synthetic data built once per test session."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("TQDM_DISABLE", "1")  # keep test logs readable
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def synth_small(tmp_path_factory):
    """A 4-class, 64 px synthetic benchmark: 6 train and 3 test images per class."""
    from xbench.datasets.synth import SynthSettings, generate

    settings = SynthSettings(classes=4, size=64, train_per_class=6, test_per_class=3, seed=3)
    root = generate(tmp_path_factory.mktemp("synth") / "data", settings, workers=1, progress=False)
    return root, settings

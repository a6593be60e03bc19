"""One device rule for every command: --device cpu, cuda or cuda:N (torch.cuda monkeypatched: no GPU needed)."""

from __future__ import annotations

import pytest
import torch

from xbench import distributed as D


@pytest.fixture
def four_gpus(monkeypatch):
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: chosen.append(torch.device(device)))
    return chosen


def test_an_asked_gpu_is_the_gpu_used(four_gpus):
    assert D.resolve_device("cuda:2") == torch.device("cuda:2")
    ctx = D.init_distributed("cuda:2")  # what train and evaluate call with --device
    assert ctx.device == torch.device("cuda:2") and four_gpus == [torch.device("cuda:2")]


def test_without_an_index_each_rank_takes_its_own_gpu(four_gpus):
    assert D.resolve_device(None) == torch.device("cuda:0")
    assert D.resolve_device("cuda", local_rank=3, world_size=4) == torch.device("cuda:3")
    assert D.resolve_device("cpu") == torch.device("cpu")
    assert D.resolve_device(torch.device("cuda:1")) == torch.device("cuda:1")


@pytest.mark.parametrize("device, words", [("cuda:4", "torch sees 4 GPU"), ("gpu", "not a device"),
                                           ("mps", "runs on cpu or cuda")])
def test_a_device_that_cannot_be_used_is_refused_by_name(four_gpus, device, words):
    with pytest.raises(ValueError, match=words):
        D.resolve_device(device)


def test_an_index_under_torchrun_is_refused(four_gpus):
    with pytest.raises(ValueError, match="CUDA_VISIBLE_DEVICES"):
        D.resolve_device("cuda:1", local_rank=0, world_size=2)


def test_without_a_gpu_cuda_is_refused_and_the_default_is_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert D.resolve_device(None) == torch.device("cpu")
    with pytest.raises(ValueError, match="sees no CUDA GPU"):
        D.resolve_device("cuda:0")


def test_the_in_memory_api_refuses_a_gpu_it_does_not_have(four_gpus):
    import xbench

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
    with pytest.raises(ValueError, match="torch sees 4 GPU"):
        xbench.evaluate_model(model, torch.rand(2, 3, 8, 8), torch.tensor([0, 1]), methods=["random"], device="cuda:6")

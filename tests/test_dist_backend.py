"""``AVSEG_DDP_BACKEND``: the process-group backend by name, and ranks sharing a GPU with gloo.

Checked on the CPU with CUDA's device queries and ``init_process_group`` replaced (nothing is started); the real
two-process run on one GPU is ``tests/test_cuda.py::test_ddp_two_processes_on_one_gpu_equal_one_process``, and the
CPU torchrun run (gloo, the default there) is ``tests/test_train.py::test_torchrun_two_processes_equal_one``.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as tdist

from avsegcli.errors import AvsegError
from avsegcli.train import dist


def test_backend_by_name(monkeypatch):
    monkeypatch.delenv(dist.BACKEND_ENV, raising=False)
    assert dist.requested_backend() is None
    monkeypatch.setenv(dist.BACKEND_ENV, " Gloo ")
    assert dist.requested_backend() == "gloo"
    monkeypatch.setenv(dist.BACKEND_ENV, "mpi")
    with pytest.raises(AvsegError, match="expected nccl or gloo"):
        dist.requested_backend()


def test_gloo_lets_ranks_share_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(AvsegError, match="AVSEG_DDP_BACKEND=gloo"):
        dist.pick_device("cuda", 1, world=2)  # NCCL's rule: one GPU per rank, and the error names the way out
    assert dist.pick_device("cuda", 1, world=2, share_gpus=True) == torch.device("cuda:0")
    assert dist.pick_device("auto", 3, world=4, share_gpus=True) == torch.device("cuda:0")
    assert dist.pick_device("cuda", 0, world=1, share_gpus=True) == torch.device("cuda:0")
    with pytest.raises(AvsegError, match="every rank would use the same GPU"):
        dist.pick_device("cuda:0", 1, world=2, share_gpus=True)  # an explicit index stays a usage error
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert dist.pick_device("cuda", 1, world=2, share_gpus=True) == torch.device("cuda:1")  # enough GPUs: its own
    assert dist.pick_device("cuda", 3, world=4, share_gpus=True) == torch.device("cuda:1")


@pytest.fixture
def fake_group(monkeypatch):
    """torchrun's environment for rank 1 of 2, one GPU, and a record of what would be started."""
    calls: dict[str, list] = {"init": [], "set_device": []}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls["set_device"].append(torch.device(d)))
    monkeypatch.setattr(tdist, "is_initialized", lambda: False)
    monkeypatch.setattr(tdist, "init_process_group", lambda **kw: calls["init"].append(kw))
    for k, v in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv(dist.BACKEND_ENV, raising=False)
    return calls


def test_setup_shares_the_gpu_with_gloo_and_says_so(fake_group, monkeypatch, capsys):
    monkeypatch.setenv(dist.BACKEND_ENV, "gloo")
    info = dist.setup("cuda")
    assert (info.rank, info.world, info.local_rank, info.device, info.started_here) == (1, 2, 1, torch.device("cuda:0"), True)
    assert fake_group["set_device"] == [torch.device("cuda:0")]
    assert [(kw["backend"], "device_id" in kw) for kw in fake_group["init"]] == [("gloo", False)]
    err = capsys.readouterr().err
    assert "warning: rank 1 (LOCAL_RANK=1) shares cuda:0 with another rank" in err

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert dist.setup("cuda").device == torch.device("cuda:0")
    assert capsys.readouterr().err == ""  # rank 0 has the GPU of its own index: nothing to say


def test_setup_keeps_the_default_backends(fake_group, monkeypatch):
    with pytest.raises(AvsegError, match="1 CUDA device"):
        dist.setup("cuda")  # NCCL by default: rank 1 needs a second GPU
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert dist.setup("cuda").device == torch.device("cuda:1")
    assert [(kw["backend"], kw.get("device_id")) for kw in fake_group["init"]] == [("nccl", torch.device("cuda:1"))]
    fake_group["init"].clear()
    assert dist.setup("cpu").device == torch.device("cpu")
    assert [(kw["backend"], "device_id" in kw) for kw in fake_group["init"]] == [("gloo", False)]
    monkeypatch.setenv(dist.BACKEND_ENV, "nccl")
    fake_group["init"].clear()
    with pytest.raises(AvsegError, match="nccl needs CUDA"):
        dist.setup("cpu")
    assert fake_group["init"] == []

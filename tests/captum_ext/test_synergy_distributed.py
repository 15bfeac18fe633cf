"""compute() under torch.distributed: two CPU processes (gloo) give the single-process result."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from synergy_reference import randomize_norms
from torch import nn

from captum_ext import LayerSynergy

ROWS, SPLIT = 31, 12  # uneven shards


def _setup():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2))
    model = model.double()
    randomize_norms(model)
    x = torch.randn(ROWS, 5, dtype=torch.float64)
    return model.eval(), x


def _results(model, x):
    out = {}
    for name, forward in (("fast", model), ("hook", lambda inp: model(inp))):
        res = LayerSynergy(forward, model[2], output_transform="softmax").compute(x, target=1)
        out[name] = (res.importance, res.synergy, res.rows)
    return out


def _worker(rank: int, port: int, folder: str) -> None:
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        model, x = _setup()
        shard = x[:SPLIT] if rank == 0 else x[SPLIT:]
        torch.save(_results(model, shard), os.path.join(folder, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_all_reduce_to_the_single_process_result(tmp_path):
    # fork: the workers start with torch and captum already imported
    mp.start_processes(
        _worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True, start_method="fork"
    )
    model, x = _setup()
    single = _results(model, x)
    for rank in (0, 1):
        shards = torch.load(tmp_path / f"{rank}.pt")
        for name, (importance, synergy, rows) in single.items():
            got = shards[name]
            assert got[2] == rows == ROWS
            assert torch.allclose(got[0], importance, atol=1e-12)
            assert torch.allclose(got[1], synergy, atol=1e-12)

"""ConceptAtlas under torch.distributed: two CPU processes (gloo) give the one-process atlas
bit for bit (top-k tables and class sums), and rank 0 writes the store; when one rank's loader
raises, both ranks stop at that step (no rank blocks in the next merge)."""

from __future__ import annotations

import os
import socket
import time
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from atlas_common import LAYERS, make_composite, make_data, make_model

from zennit_ext.atlas import ConceptAtlas

MODES = ("actmax", "actmean", "relmax")
BATCH = 6  # 7 global batches: uneven shards (4 + 3)
BROKEN = 20  # in global batch 3: rank 1's second step


def _result(atlas):
    return {
        name: {
            **{mode: atlas.top(name, mode) for mode in MODES},
            "stats": atlas.statistics(name),
            "graph": atlas.class_graph(make_data(), 1, batch_size=BATCH).edges[tuple(LAYERS)],
        }
        for name in LAYERS
    }


def _worker(rank: int, port: int, folder: str) -> None:
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        atlas = ConceptAtlas(
            make_model(), LAYERS, composite=make_composite(), top_k=4, store=f"{folder}/store"
        )
        atlas.fit(make_data(), batch_size=BATCH, checkpoint_every=3)
        torch.save(_result(atlas), os.path.join(folder, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_give_the_one_process_atlas(tmp_path):
    mp.start_processes(
        _worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True, start_method="fork"
    )
    torch.set_num_threads(1)
    atlas = ConceptAtlas(make_model(), LAYERS, composite=make_composite(), top_k=4)
    single = _result(atlas.fit(make_data(), batch_size=BATCH))
    stored = ConceptAtlas.load(tmp_path / "store")
    assert stored.summary()["complete"] and stored.summary()["samples"] == 40
    for rank in (0, 1):
        shards = torch.load(tmp_path / f"{rank}.pt")
        for name in LAYERS:
            for mode in MODES:
                for got, expected in zip(shards[name][mode], single[name][mode], strict=True):
                    assert torch.equal(got, expected), (rank, name, mode)
                for got, expected in zip(stored.top(name, mode), single[name][mode], strict=True):
                    assert torch.equal(got, expected)
            for key, value in single[name]["stats"].items():
                assert torch.equal(shards[name]["stats"][key], value), (rank, name, key)
            # the class graph's sums are all_reduce-d fixed-point sums: order-free
            assert torch.allclose(shards[name]["graph"], single[name]["graph"], rtol=1e-12)


class _Broken(torch.utils.data.Dataset):
    def __init__(self, data):
        self.data = data

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        if index == BROKEN:
            raise OSError(f"sample {index} is unreadable")
        return self.data[index]


def _failing_worker(rank: int, port: int, folder: str) -> None:
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    # without the error flag rank 0 would wait in the merge until this timeout
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=60))
    start = time.perf_counter()
    try:
        atlas = ConceptAtlas(
            make_model(), LAYERS, composite=make_composite(), top_k=4, store=f"{folder}/store"
        )
        atlas.fit(_Broken(make_data()), batch_size=BATCH, checkpoint_every=1)
        outcome = ("finished", "")
    except Exception as error:  # noqa: BLE001 - the test inspects it
        outcome = (type(error).__name__, str(error))
    seconds = time.perf_counter() - start
    with open(os.path.join(folder, f"failed-{rank}.txt"), "w") as file:
        file.write(f"{outcome[0]}\n{seconds}\n{outcome[1]}")
    dist.destroy_process_group()


def test_a_failing_loader_on_one_rank_stops_every_rank_at_that_step(tmp_path):
    mp.start_processes(
        _failing_worker,
        args=(_free_port(), str(tmp_path)),
        nprocs=2,
        join=True,
        start_method="fork",
    )
    found = {}
    for rank in (0, 1):
        kind, seconds, message = (tmp_path / f"failed-{rank}.txt").read_text().split("\n", 2)
        found[rank] = kind, float(seconds), message
    assert found[1][0] == "OSError" and "sample 20 is unreadable" in found[1][2]
    assert found[0][0] == "RuntimeError" and "rank(s) [1] raised at step 1" in found[0][2]
    assert max(seconds for _, seconds, _ in found.values()) < 50  # far below the timeout
    stored = ConceptAtlas.load(tmp_path / "store")  # the write of step 0 (batches 0 and 1)
    assert stored.summary()["batches_done"] == 2 and not stored.summary()["complete"]

"""The unsharded model gathered from a TorchRec DistributedModelParallel gives the sharded model's outputs.

Two gloo processes train a few steps with table-wise sharding, then rank 0 compares the DMP forward with the
forward of a plain ``MultiTaskRanker`` loaded from the gathered state dict, on the same held-out batch.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytestmark = pytest.mark.ray


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(rank: int, world: int, data_dir: str, port: int, sharding: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from models.batch import collate
        from models.ranker import MultiTaskRanker
        from pipelines.common.config import TrainConfig
        from pipelines.features.manifest import read_split
        from pipelines.train.setup import build_setup, sharded_model
        from pipelines.train.sharding import gather_full_state, time_input_dist

        d = Path(data_dir)
        # "mixed": the small vocabulary tables replicated (data_parallel), the id tables table-wise.
        mixed = sharding == "mixed"
        # With the viewer and author id tables (the defaults leave them out): tables of every size.
        replicate = 50 if mixed else 0
        cfg = {"model": {"exclude_sparse": ["sp_post"]}, "distributed": {"replicate_rows": replicate}}
        setup = build_setup(d, TrainConfig.model_validate(cfg))
        dmp, _, optimizer = sharded_model(
            setup, world, torch.device("cpu"), "table_wise" if mixed else sharding
        )
        if mixed:
            types = {s.sharding_type for p in dmp.plan.plan.values() for s in p.values()}
            assert types == {"data_parallel", "table_wise"}, types
        # The bench's instrumented forward (input all-to-all timed apart) must compute the same thing.
        timed: list[float] = []
        assert time_input_dist(dmp, lambda phase, s: timed.append(s)) >= 1
        train = read_split(d, "train").to_pandas()
        for i in range(5):
            chunk = train.iloc[(i * world + rank) * 64 : (i * world + rank + 1) * 64]
            b = collate({c: chunk[c].to_numpy() for c in chunk.columns}, setup.layout, setup.encoder)
            loss, _ = dmp(dataclasses.replace(b, bias=None))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        dmp.eval()
        test = read_split(d, "test").to_pandas().iloc[:128]
        tb = collate({c: test[c].to_numpy() for c in test.columns}, setup.layout, setup.encoder)
        with torch.no_grad():
            _, (_, sharded) = dmp(dataclasses.replace(tb, bias=None))
        full = gather_full_state(dmp, rank)
        if rank == 0:
            assert full is not None
            model = MultiTaskRanker(setup.spec)
            model.load_state_dict(full)
            with torch.no_grad():
                plain = model.eval()(tb.dense, tb.sparse)
            diff = max(float((sharded[t] - plain[t]).abs().max()) for t in plain)
            Path(out).write_text(f"{diff} {len(timed)}")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("sharding", ["table_wise", "column_wise", "mixed"])
def test_gathered_model_equals_sharded_model(built_world: Path, tmp_path: Path, sharding: str) -> None:
    out = tmp_path / "diff.txt"
    mp.spawn(_run, args=(2, str(built_world), _free_port(), sharding, str(out)), nprocs=2, join=True)
    diff, timed = out.read_text().split()
    assert float(diff) < 1e-4
    assert int(timed) >= 6  # 5 training steps and the test batch went through the timed input dist

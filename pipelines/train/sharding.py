"""TorchRec plumbing any sharded model shares: plan and wrap it in ``DistributedModelParallel`` with fused
row-wise Adagrad on its tables and Adam on the rest, and gather its shards back into one state dict.

Nothing here knows the ranker: :func:`pipelines.train.setup.sharded_model` builds the ranker with these.
torch and torchrec are imported inside the functions, on the workers.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import torch
    from torch import nn
    from torchrec import EmbeddingBagConfig


class Sharded(NamedTuple):
    """A model wrapped in ``DistributedModelParallel`` and its optimizers."""

    dmp: Any  # torchrec DistributedModelParallel; ``dmp.fused_optimizer`` steps the tables
    dense_optimizer: Any  # KeyedOptimizerWrapper: Adam on the parameters outside the tables
    optimizer: Any  # CombinedOptimizer: steps both


def shard(
    module: nn.Module,
    tables: list[EmbeddingBagConfig],
    table_params: Iterable[torch.nn.Parameter],
    world: int,
    device: torch.device,
    sharding: str,
    embedding_lr: float,
    dense_lr: float,
    replicate_rows: int = 0,
) -> Sharded:
    """``module`` (its tables created on the meta device) sharded over ``world`` ranks, every table
    ``sharding``-wise but those of at most ``replicate_rows`` rows, which are replicated
    (``data_parallel``); sharded tables get fused row-wise Adagrad (stepped inside backward), the rest
    (replicated tables included) Adam."""
    import torch
    import torch.distributed as dist
    from torchrec.distributed import DistributedModelParallel
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
    from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
    from torchrec.distributed.planner.types import ParameterConstraints
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
    from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
    from torchrec.optim.optimizers import in_backward_optimizer_filter
    from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

    apply_optimizer_in_backward(RowWiseAdagrad, table_params, {"lr": embedding_lr})
    constraints = {
        t.name: ParameterConstraints(
            sharding_types=["data_parallel" if t.num_embeddings <= replicate_rows else sharding]
        )
        for t in tables
    }
    topology = Topology(world_size=world, compute_device=device.type, local_world_size=world)
    planner = EmbeddingShardingPlanner(topology=topology, constraints=constraints)
    plan = planner.collective_plan(module, [EmbeddingBagCollectionSharder()], dist.GroupMember.WORLD)
    dmp = DistributedModelParallel(module=module, device=device, plan=plan)
    dense = KeyedOptimizerWrapper(
        dict(in_backward_optimizer_filter(dmp.named_parameters())),
        lambda params: torch.optim.Adam(params, lr=dense_lr),
    )
    return Sharded(dmp, dense, CombinedOptimizer([dmp.fused_optimizer, dense]))


def time_input_dist(dmp: Any, record: Any) -> int:
    """Make every sharded module of ``dmp`` time its input distribution (the all-to-all of the sparse
    features to the ranks owning their tables) apart from the rest of its forward: ``record("input_dist",
    seconds)`` per call. Returns how many modules were instrumented. The forward is TorchRec's own
    (``ShardedModule.forward``), split where it waits for the distributed input."""
    import time

    from torchrec.distributed.types import ShardedModule

    count = 0
    for module in dmp.modules():
        if not isinstance(module, ShardedModule):
            continue

        def forward(*args: Any, _m: Any = module, **kwargs: Any) -> Any:
            ctx = _m.create_context()
            start = time.perf_counter()
            dist_input = _m.input_dist(ctx, *args, **kwargs).wait().wait()
            record("input_dist", time.perf_counter() - start)
            return _m.compute_and_output_dist(ctx, dist_input)

        module.forward = forward
        count += 1
    return count


def gather_full_state(dmp: Any, rank: int, prefix: str = "model.") -> dict[str, Any] | None:
    """Every rank takes part; rank 0 gets the unsharded state dict of the wrapped module's ``prefix``
    submodule (the servable model inside the train wrapper), the others None."""
    import torch
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    full: dict[str, Any] = {}
    for key, value in dmp.state_dict().items():
        if not key.startswith(prefix):
            continue
        name = key.removeprefix(prefix)
        if isinstance(value, ShardedTensor):
            out = torch.empty(value.size(), dtype=value.dtype) if rank == 0 else None
            value.gather(dst=0, out=out)
            full[name] = out
        else:
            full[name] = value.detach().cpu()
    return full if rank == 0 else None

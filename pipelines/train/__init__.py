"""Distributed training: ``python -m pipelines.train --config configs/train.yaml --data-dir D``.

::

    D/features/train ──► Ray Data ──► streaming split, one shard per worker
                                        │  collate() → dense tensor + KeyedJaggedTensor
    Ray Train TorchTrainer (N workers)  ▼
        TorchRec DistributedModelParallel(RankerTrainWrapper(MultiTaskRanker))
          embedding tables sharded by the planner (table/column-wise on CPU+gloo, row-wise on GPU+nccl)
          fused row-wise Adagrad on the tables, Adam on the dense layers
        every epoch: validation loss, a checkpoint (each rank its own shards) → resume / failure recovery
        at the end: shards gathered on rank 0 → an unsharded servable model in the last checkpoint

Runs unchanged under ``ray job submit --working-dir . -- python -m pipelines.train ...`` or with a local
Ray when no ``RAY_ADDRESS`` is set. torchrec is imported lazily inside the workers.
"""

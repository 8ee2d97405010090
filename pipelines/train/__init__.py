"""Distributed training: ``python -m pipelines.train --config configs/train.yaml --data-dir D``.

::

    D/features/train ──► Ray Data: prepare_block() once per block (dense matrix, table rows), kept in the
                        object store ──► streaming split, one shard per worker
                                        │  finish() → Batch: history/id dropout, KeyedJaggedTensor, labels
    Ray Train TorchTrainer (N workers)  ▼
        TorchRec DistributedModelParallel(RankerTrainWrapper(MultiTaskRanker)), called as dmp(batch)
          embedding tables sharded by the planner (table/column-wise on CPU+gloo, row-wise on GPU+nccl)
          fused row-wise Adagrad on the tables, Adam on the dense layers
        every epoch: validation loss, a checkpoint (each rank its own shards, for resume / failure
          recovery, and from rank 0 the servable model gathered from all shards); early stopping

The modules: ``__main__`` (the command line) and ``stage`` (train, evaluate, log and register) on the
driver; ``trainer`` (the TorchTrainer: datasets, scaling and run config, fit); ``loop`` (``TrainLoop``, the
worker's steps, model-agnostic); ``setup`` (the ranker's side: shapes, layout, vocabularies, the sharded
ranker, its batches and its export); ``sharding`` (TorchRec planning and gathering).

Runs unchanged under ``ray job submit --working-dir . -- python -m pipelines.train ...`` or with a local
Ray when no ``RAY_ADDRESS`` is set. TorchRec's distributed modules are imported inside the workers only.
"""

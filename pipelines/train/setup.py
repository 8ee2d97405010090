"""The ranker's side of training: what a worker needs besides its data (model shapes, input layout and id
vocabularies, read from ``D/features/``, the train split only) and :class:`RankerTraining`, the
:class:`pipelines.train.loop.TrainableModel` that builds the sharded ranker, collates its batches and
exports the servable ranker at each checkpoint."""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from models.batch import DENSE, Batch, FeatureLayout, Forget, SparseEncoder, finish, prepare
from models.ranker import RankerSpec
from models.servable import ServableRanker
from models.tasks import BINARY_TASKS, TASKS
from models.train_wrapper import LossSpec
from pipelines.common.cli import DataError
from pipelines.common.columns import DWELL, SPARSE, SPARSE_IDS, WEIGHT
from pipelines.common.config import TrainConfig
from pipelines.features.manifest import arrow_block, arrow_columns, load_manifest, read_split
from pipelines.train.sharding import Sharded, shard

if TYPE_CHECKING:
    import pyarrow as pa
    import torch

log = logging.getLogger(__name__)


@dataclass
class TrainSetup:
    """Everything a worker needs besides its data shard (small; shipped in the train-loop config)."""

    spec: RankerSpec
    layout: FeatureLayout
    encoder: SparseEncoder
    loss: LossSpec
    dense_mean: list[float]
    dense_std: list[float]
    config: dict[str, Any]  # the TrainConfig, as JSON
    base_rates: dict[str, float] = field(default_factory=dict)  # binary task → weighted train positive rate
    cold_viewer: dict[str, Any] = field(default_factory=dict)  # input column → a new viewer's value

    @property
    def columns(self) -> list[str]:
        """The feature-table columns training reads: the model's inputs, labels and sample weight."""
        lay = self.layout
        return [
            *lay.dense,
            *lay.vectors,
            *lay.sparse,
            *lay.bias,
            *BINARY_TASKS,
            DWELL,
            WEIGHT,
        ]


def build_setup(data_dir: Path, cfg: TrainConfig) -> TrainSetup:
    """Model shapes, input layout and id vocabularies from ``features/`` (train split only)."""
    manifest = load_manifest(data_dir)
    cols = manifest["columns"]
    stats = json.loads((data_dir / "features" / "stats.json").read_text())
    bias = tuple(manifest.get("bias_features", ()))
    sparse = (*cols["sparse_ids"], *cols["sparse_vocab"], *cols["sparse_lists"])
    if unknown := sorted(set(cfg.model.exclude_sparse) - set(sparse) - set(SPARSE)):
        raise DataError(f"model.exclude_sparse: {unknown} are not sparse features of {data_dir / 'features'}")
    layout = FeatureLayout(
        dense=tuple(c for c in cols["dense"] if c not in bias),
        vectors=dict(cols["vectors"]),
        sparse=tuple(c for c in sparse if c not in cfg.model.exclude_sparse),
        bias=bias,
    )
    ids_table = read_split(data_dir, "train", list(SPARSE_IDS))
    ids: dict[str, np.ndarray] = {}
    for name in (f for f in SPARSE_IDS if f in layout.sparse):
        values, counts = np.unique(ids_table[name].to_numpy(), return_counts=True)
        ids[name] = values[counts >= cfg.model.min_id_count[name]].astype(np.int64)
    codes = {k: v for k, v in {**cols["sparse_vocab"], **cols["sparse_lists"]}.items() if k in layout.sparse}
    encoder = SparseEncoder(ids=ids, codes={k: int(v) for k, v in codes.items()})
    spec = cfg.model.to_spec(encoder.table_rows(), n_dense=layout.n_dense, n_bias=len(layout.bias))
    mean = [stats[c]["mean"] for c in layout.dense] + [0.0] * sum(layout.vectors.values())
    std = [stats[c]["std"] for c in layout.dense] + [1.0] * sum(layout.vectors.values())
    train = manifest["splits"].get("train", {})
    rates = {t: train["positives"][t] / train["weight"] for t in BINARY_TASKS if train.get("weight")}
    config = cfg.model_dump(mode="json")
    inputs = {*layout.dense, *layout.vectors}
    cold = {k: v for k, v in manifest.get("cold_viewer", {}).items() if k in inputs}
    loss = dataclasses.replace(cfg.loss.to_spec(), skipped=unlearnable_tasks(manifest))
    if loss.skipped:
        log.warning("tasks the data cannot teach, trained with no weight: %s", ", ".join(loss.skipped))
    return TrainSetup(spec, layout, encoder, loss, mean, std, config, rates, cold)


def unlearnable_tasks(manifest: dict[str, Any]) -> tuple[str, ...]:
    """Tasks with no positive example in the train split, and dwell and skip when the logs carry no dwell
    at all (``dwell_logged``: a ratings log has no views; zeros would teach "everything is skipped")."""
    train = manifest["splits"].get("train", {})
    skipped = [t for t in BINARY_TASKS if t != "skip" and not train.get("positives", {}).get(t)]
    if not manifest.get("dwell_logged", True):
        skipped += ["skip", "dwell"]
    return tuple(t for t in TASKS if t in skipped)


def sharded_model(setup: TrainSetup, world: int, device: torch.device, sharding: str) -> Sharded:
    """The ranker's train wrapper in DistributedModelParallel (tables created on the meta device, each rank
    materializing its own shards), its dense optimizer, and the combined (fused embedding + dense)
    optimizer that steps both; dense inputs standardized with the train split's statistics."""
    import torch

    from models.ranker import MultiTaskRanker
    from models.train_wrapper import RankerTrainWrapper

    cfg = TrainConfig.model_validate(setup.config)
    optim = cfg.optim
    model = MultiTaskRanker(setup.spec, device=torch.device("meta"))
    model.init_heads(setup.base_rates)
    wrapper = RankerTrainWrapper(model, setup.loss)
    sharded = shard(
        wrapper,
        setup.spec.tables(),
        model.sparse_arch.parameters(),
        world,
        device,
        sharding,
        embedding_lr=optim.embedding_lr,
        dense_lr=optim.dense_lr,
        replicate_rows=cfg.distributed.replicate_rows,
    )
    sharded.dmp.module.model.set_standardization(
        torch.tensor(setup.dense_mean, dtype=torch.float32, device=device),
        torch.tensor(setup.dense_std, dtype=torch.float32, device=device),
    )
    return sharded


def servable_ranker(setup: TrainSetup, state_dict: dict[str, Any]) -> ServableRanker:
    """The unsharded ranker loaded with ``state_dict`` (gathered from the shards), ready to save."""
    from models.ranker import MultiTaskRanker

    model = MultiTaskRanker(setup.spec)
    model.load_state_dict(state_dict)
    return ServableRanker(model, setup.layout, setup.encoder)


@dataclass
class RankerTraining:
    """The multitask ranker as :class:`pipelines.train.loop.TrainLoop` trains it (a ``TrainableModel``)."""

    setup: TrainSetup
    id_dropout: dict[str, float] = field(init=False)
    forget: Forget = field(init=False)

    def __post_init__(self) -> None:
        optim = TrainConfig.model_validate(self.setup.config).optim
        self.id_dropout = optim.id_dropout
        self.forget = Forget.of(self.setup.layout, self.setup.cold_viewer, optim.history_dropout)

    def shard(self, world: int, device: torch.device, sharding: str) -> Sharded:
        return sharded_model(self.setup, world, device, sharding)

    def prepare_block(self, table: pa.Table) -> pa.Table:
        """A Ray Data block of feature columns → the model-ready block (:func:`models.batch.prepare`): the
        dense matrix and table rows, built once per block instead of once per step and epoch."""
        return arrow_block(prepare(arrow_columns(table, jagged=True), self.setup.layout, self.setup.encoder))

    def train_batch(self, columns: dict[str, Any], rng: np.random.Generator) -> Batch:
        """With history and id dropout: that share of rows gets a viewer without history (cold start), and
        of ids the out-of-vocabulary row. ``columns``: prepared (:meth:`prepare_block`) or raw."""
        prepared = self._prepared(columns)
        return finish(prepared, self.setup.layout, self.setup.encoder, self.id_dropout, rng, self.forget)

    def eval_batch(self, columns: dict[str, Any]) -> Batch:
        return finish(self._prepared(columns), self.setup.layout, self.setup.encoder)

    def _prepared(self, columns: dict[str, Any]) -> dict[str, Any]:
        """Columns of a prepared block as they are; raw feature columns prepared here."""
        return columns if DENSE in columns else prepare(columns, self.setup.layout, self.setup.encoder)

    def export(self, state_dict: dict[str, Any]) -> ServableRanker:
        return servable_ranker(self.setup, state_dict)

"""What a training worker needs besides its data: model shapes, input layout and id vocabularies, read
from ``D/features/`` (the train split only)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.dataset as pads

from models.batch import FeatureLayout, SparseEncoder
from models.ranker import RankerSpec
from models.servable import ServableRanker
from models.train_wrapper import LossConfig
from pipelines.common.cli import DataError
from pipelines.common.columns import ID_FEATURES
from pipelines.common.config import TrainConfig
from pipelines.features.manifest import load_manifest

log = logging.getLogger(__name__)


@dataclass
class TrainSetup:
    """Everything a worker needs besides its data shard (small; shipped in the train-loop config)."""

    spec: RankerSpec
    layout: FeatureLayout
    encoder: SparseEncoder
    loss: LossConfig
    dense_mean: list[float]
    dense_std: list[float]
    config: dict[str, Any]


def build_setup(data_dir: Path, cfg: TrainConfig) -> TrainSetup:
    """Model shapes, input layout and id vocabularies from ``features/`` (train split only)."""
    manifest = load_manifest(data_dir)
    cols = manifest["columns"]
    stats = json.loads((data_dir / "features" / "stats.json").read_text())
    bias = tuple(manifest.get("bias_features", ()))
    sparse = (*cols["sparse_ids"], *cols["sparse_vocab"], *cols["sparse_lists"])
    if unknown := sorted(set(cfg.model.exclude_sparse) - set(sparse)):
        raise DataError(f"model.exclude_sparse: {unknown} are not sparse features of {data_dir / 'features'}")
    layout = FeatureLayout(
        dense=tuple(c for c in cols["dense"] if c not in bias),
        vectors=dict(cols["vectors"]),
        sparse=tuple(c for c in sparse if c not in cfg.model.exclude_sparse),
        bias=bias,
    )
    files = sorted(str(p) for p in (data_dir / "features" / "train").rglob("*.parquet"))
    if not files:
        raise DataError(f"{data_dir / 'features' / 'train'}: no training examples (run pipelines.features)")
    ids_table = pads.dataset(files, format="parquet").to_table(columns=list(ID_FEATURES))
    ids: dict[str, np.ndarray] = {}
    for name in (f for f in ID_FEATURES if f in layout.sparse):
        values, counts = np.unique(ids_table[name].to_numpy(), return_counts=True)
        ids[name] = values[counts >= cfg.model.min_id_count].astype(np.int64)
    codes = {**cols["sparse_vocab"], **cols["sparse_lists"]}
    encoder = SparseEncoder(ids=ids, codes={k: int(v) for k, v in codes.items()})
    m = cfg.model
    spec = RankerSpec(
        sparse=encoder.table_rows(),
        n_dense=layout.n_dense,
        embedding_dim=m.embedding_dim,
        bottom_mlp=tuple(m.bottom_mlp),
        top_mlp=tuple(m.top_mlp),
        interaction=m.interaction,
        dcn_layers=m.dcn_layers,
        dcn_rank=m.dcn_rank,
        n_bias=len(layout.bias),
    )
    mean = [stats[c]["mean"] for c in layout.dense] + [0.0] * sum(layout.vectors.values())
    std = [stats[c]["std"] for c in layout.dense] + [1.0] * sum(layout.vectors.values())
    loss = LossConfig(
        task_weights=dict(cfg.loss.task_weights),
        pos_weight=dict(cfg.loss.pos_weight),
        learned_weights=cfg.loss.learned_weights,
        huber_delta=cfg.loss.huber_delta,
    )
    return TrainSetup(spec, layout, encoder, loss, mean, std, cfg.model_dump(mode="json"))


def servable_ranker(setup: TrainSetup, state_dict: dict[str, Any]) -> ServableRanker:
    from models.ranker import MultiTaskRanker

    model = MultiTaskRanker(setup.spec)
    model.load_state_dict(state_dict)
    return ServableRanker(model, setup.layout, setup.encoder)

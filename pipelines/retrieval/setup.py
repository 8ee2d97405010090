"""The retriever's side of training: its towers' inputs (read from ``D/features/``, the train split only),
the sampling log-probability of every post among the training positives, and
:class:`RetrieverTraining`, the :class:`pipelines.train.loop.TrainableModel` that builds the sharded
two-tower model, keeps a block's engaged rows and exports the servable retriever at each checkpoint."""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from models.batch import DENSE, ROWS, FeatureLayout, Jagged, SparseEncoder, finish, prepare
from models.retriever import RetrieverBatch, RetrieverSpec, ServableRetriever
from pipelines.common.cli import DataError
from pipelines.common.columns import WEIGHT
from pipelines.common.config import RetrieverConfig
from pipelines.features.manifest import arrow_block, arrow_columns, load_manifest, read_split
from pipelines.train.sharding import Sharded, shard

if TYPE_CHECKING:
    import pyarrow as pa
    import torch

#: What a prepared block carries besides the matrix and table rows.
LOGQ, POST_KEY, LABEL = "_logq", "_post_key", "_engaged"
#: The actions that make an engaged row a non-positive.
NEGATIVE_ACTIONS = ("hide", "report")


@dataclass
class RetrieverSetup:
    """Everything a worker needs besides its data shard (shipped in the train-loop config)."""

    spec: RetrieverSpec
    viewer: FeatureLayout
    post: FeatureLayout
    prior: FeatureLayout | None
    context: FeatureLayout | None  # training only (pointwise loss)
    encoder: SparseEncoder
    mean: list[float]  # the viewer matrix's columns, the post matrix's, the prior's
    std: list[float]
    positives: tuple[str, ...]
    config: dict[str, Any]
    post_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # sorted, positives' posts
    logq: np.ndarray = field(default_factory=lambda: np.zeros(0))  # the correction, per post_ids
    unseen_logq: float = 0.0  # a post with no training positive counts as one

    @property
    def pointwise(self) -> bool:
        return self.spec.loss == "pointwise"

    @property
    def layouts(self) -> tuple[FeatureLayout, ...]:
        """The training matrix's blocks, in order."""
        return tuple(lay for lay in (self.viewer, self.post, self.prior, self.context) if lay is not None)

    @property
    def columns(self) -> list[str]:
        """The feature-table columns training reads."""
        inputs = [c for lay in self.layouts for c in (*lay.dense, *lay.vectors, *lay.sparse)]
        labels = [*self.positives, *(a for a in NEGATIVE_ACTIONS if a not in self.positives)]
        return [*dict.fromkeys(inputs), *labels, "post_id", WEIGHT]

    def positive_mask(self, cols: dict[str, Any]) -> np.ndarray:
        """Rows with any positive action and no hide or report."""
        pos = np.zeros(len(cols["post_id"]), bool)
        for a in self.positives:
            pos |= np.asarray(cols[a]) > 0
        for a in NEGATIVE_ACTIONS:
            if a in cols and a not in self.positives:
                pos &= ~(np.asarray(cols[a]) > 0)
        return pos

    def post_logq(self, post_ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(post_ids, np.int64)
        if len(self.post_ids) == 0:
            return np.full(len(ids), self.unseen_logq, np.float32)
        at = np.minimum(np.searchsorted(self.post_ids, ids), len(self.post_ids) - 1)
        return np.where(self.post_ids[at] == ids, self.logq[at], self.unseen_logq).astype(np.float32)


def _pick(patterns: list[str], names: list[str]) -> list[str]:
    """``names`` matching any of ``patterns``, in ``names``' order."""
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def _tower(patterns: list[str], cols: dict[str, Any], skip: set[str]) -> FeatureLayout:
    dense = [c for c in _pick(patterns, list(cols["dense"])) if c not in skip]
    vectors = {c: int(cols["vectors"][c]) for c in _pick(patterns, list(cols["vectors"]))}
    coded = {**cols["sparse_vocab"], **cols["sparse_lists"]}
    return FeatureLayout(tuple(dense), vectors, tuple(_pick(patterns, list(coded))))


def build_setup(data_dir: Path, cfg: RetrieverConfig) -> RetrieverSetup:
    """Each tower's inputs, their standardization and the posts' sampling corrections."""
    manifest = load_manifest(data_dir)
    cols = manifest["columns"]
    stats = json.loads((data_dir / "features" / "stats.json").read_text())
    bias = set(manifest.get("bias_features", ()))
    m = cfg.model
    viewer, post = _tower(m.viewer_features, cols, bias), _tower(m.post_features, cols, bias)
    prior_layout = _tower(m.prior_features, cols, bias)
    prior = FeatureLayout(prior_layout.dense, prior_layout.vectors, ()) if prior_layout.n_dense else None
    context_layout = _tower(m.context_features, cols, set())  # the logged position belongs here
    pointwise = m.loss == "pointwise"
    context = FeatureLayout(context_layout.dense, context_layout.vectors, ()) if pointwise else None
    context = context if context is not None and context.n_dense else None
    for name, lay in (("viewer", viewer), ("post", post)):
        if not lay.n_dense and not lay.sparse:
            raise DataError(f"model.{name}_features: no column of {data_dir / 'features'} matches")
    seen: dict[str, str] = {}
    blocks: tuple[tuple[str, FeatureLayout | None], ...] = (
        ("viewer", viewer),
        ("post", post),
        ("prior", prior),
        ("context", context),
    )
    for name, block in blocks:
        for c in (*block.dense, *block.vectors, *block.sparse) if block is not None else ():
            if c in seen:
                raise DataError(f"model.{seen[c]}_features and model.{name}_features both take {c}")
            seen[c] = name
    coded = {**cols["sparse_vocab"], **cols["sparse_lists"]}
    encoder = SparseEncoder(codes={k: int(coded[k]) for k in (*viewer.sparse, *post.sparse)})
    spec = RetrieverSpec(
        sparse=encoder.table_rows(),
        viewer_dense=viewer.n_dense,
        post_dense=post.n_dense,
        viewer_sparse=viewer.sparse,
        post_sparse=post.sparse,
        prior_dense=prior.n_dense if prior is not None else 0,
        context_dense=context.n_dense if context is not None else 0,
        loss=m.loss,
        embedding_dim=m.embedding_dim,
        tower_mlp=tuple(m.tower_mlp),
        out_dim=m.out_dim,
        temperature=m.temperature,
        mean_pooled=tuple(cols["sparse_lists"]),
    )
    mean: list[float] = []
    std: list[float] = []
    for _, block in blocks:
        if block is not None:
            mean += [stats[c]["mean"] for c in block.dense] + [0.0] * sum(block.vectors.values())
            std += [stats[c]["std"] for c in block.dense] + [1.0] * sum(block.vectors.values())
    setup = RetrieverSetup(
        spec,
        viewer,
        post,
        prior,
        context,
        encoder,
        mean,
        std,
        tuple(m.positives),
        cfg.model_dump(mode="json"),
    )
    labels = [c for c in (*m.positives, *NEGATIVE_ACTIONS) if c in cols["labels"]]
    train = arrow_columns(read_split(data_dir, "train", ["post_id", WEIGHT, *labels]))
    _sampling_correction(setup, train, m.exposure_correction, data_dir)
    return setup


def _sampling_correction(
    setup: RetrieverSetup, train: dict[str, Any], exposure: bool, data_dir: Path
) -> None:
    """Per post, log q: its share of the training positives (how often it is an in-batch negative), and with
    ``exposure`` minus its share of the (weighted) impressions (how often the logging policy showed it):
    the softmax then learns engagement given exposure, not the policy's exposure."""
    post_ids = np.asarray(train["post_id"], np.int64)
    weight = np.asarray(train[WEIGHT], np.float64)
    positive = setup.positive_mask(train)
    if not positive.any():
        raise DataError(f"{data_dir / 'features'}: no training row has {' or '.join(setup.positives)}")
    ids, inverse = np.unique(post_ids[positive], return_inverse=True)
    pos = np.bincount(inverse, weights=weight[positive])
    logq = np.log(pos / pos.sum())
    if exposure:
        at = np.searchsorted(ids, post_ids)
        hit = at < len(ids)
        hit[hit] &= ids[at[hit]] == post_ids[hit]
        shown = np.bincount(at[hit], weights=weight[hit], minlength=len(ids))
        logq -= np.log(shown / weight.sum())
    setup.post_ids, setup.logq = ids, logq
    setup.unseen_logq = float(np.median(logq))


def sharded_model(setup: RetrieverSetup, world: int, device: torch.device, sharding: str) -> Sharded:
    """The retriever's train wrapper in DistributedModelParallel (both towers' tables sharded), with its
    optimizers; dense inputs standardized with the train split's statistics."""
    import torch

    from models.retriever import RetrieverTrainWrapper, TwoTowerRetriever
    from pipelines.common.config import RetrieverConfig

    cfg = RetrieverConfig.model_validate(setup.config)
    model = TwoTowerRetriever(setup.spec, device=torch.device("meta"))
    tables = [
        p for t in (model.viewer_tower, model.post_tower) if t.ebc is not None for p in t.ebc.parameters()
    ]
    sharded = shard(
        RetrieverTrainWrapper(model),
        setup.spec.tables(),
        tables,
        world,
        device,
        sharding,
        embedding_lr=cfg.optim.embedding_lr,
        dense_lr=cfg.optim.dense_lr,
        replicate_rows=cfg.distributed.replicate_rows,
    )
    sharded.dmp.module.model.set_standardization(
        torch.tensor(setup.mean, dtype=torch.float32, device=device),
        torch.tensor(setup.std, dtype=torch.float32, device=device),
    )
    return sharded


def servable_retriever(setup: RetrieverSetup, state_dict: dict[str, Any]) -> ServableRetriever:
    from models.retriever import TwoTowerRetriever

    model = TwoTowerRetriever(setup.spec)
    model.load_state_dict(state_dict)
    return ServableRetriever(model, setup.viewer, setup.post, setup.encoder, setup.prior)


@dataclass
class RetrieverTraining:
    """The two-tower retriever as :class:`pipelines.train.loop.TrainLoop` trains it."""

    setup: RetrieverSetup

    @property
    def layout(self) -> FeatureLayout:
        """Both towers' sparse features in the KJT's order (the matrix is built per tower)."""
        return FeatureLayout((), {}, (*self.setup.viewer.sparse, *self.setup.post.sparse))

    def shard(self, world: int, device: torch.device, sharding: str) -> Sharded:
        return sharded_model(self.setup, world, device, sharding)

    def prepare_columns(self, cols: dict[str, Any]) -> dict[str, Any]:
        """Feature columns → model-ready rows (the engaged ones for the softmax loss, all for the pointwise
        one): the blocks' matrices side by side, each sparse feature's table rows, the post's log q and key,
        the engaged label, the sample weight."""
        engaged = self.setup.positive_mask(cols)
        if not self.setup.pointwise:
            keep = np.flatnonzero(engaged)
            cols = {
                k: (v.take(keep) if isinstance(v, Jagged) else np.asarray(v)[keep]) for k, v in cols.items()
            }
            engaged = engaged[keep]
        s = self.setup
        parts = [prepare(cols, lay, s.encoder) for lay in s.layouts]
        out: dict[str, Any] = {DENSE: np.concatenate([part[DENSE] for part in parts], axis=1)}
        out.update({k: x for part in parts for k, x in part.items() if k.startswith(ROWS)})
        out[LOGQ] = s.post_logq(cols["post_id"])
        out[POST_KEY] = np.asarray(cols["post_id"], np.int64)
        out[LABEL] = engaged.astype(np.float32)
        out[WEIGHT] = np.asarray(cols.get(WEIGHT, np.ones(len(engaged))), np.float32)
        return out

    def prepare_block(self, table: pa.Table) -> pa.Table:
        """A Ray Data block of feature columns → its rows (engaged ones for the softmax loss), model-ready."""
        return arrow_block(self.prepare_columns(arrow_columns(table, jagged=True)))

    def train_batch(self, columns: dict[str, Any], rng: np.random.Generator) -> RetrieverBatch:
        return self.eval_batch(columns)

    def eval_batch(self, columns: dict[str, Any]) -> RetrieverBatch:
        import torch

        prepared = columns if DENSE in columns else self.prepare_columns(columns)
        b = finish(prepared, self.layout, self.setup.encoder)
        return RetrieverBatch(
            dense=b.dense,
            sparse=b.sparse,
            logq=torch.from_numpy(np.array(prepared[LOGQ], np.float32)),
            post_key=torch.from_numpy(np.array(prepared[POST_KEY], np.int64)),
            weights=b.weights,
            label=torch.from_numpy(np.array(prepared[LABEL], np.float32)),
        )

    def export(self, state_dict: dict[str, Any]) -> ServableRetriever:
        return servable_retriever(self.setup, state_dict)

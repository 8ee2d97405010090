"""The scorers the ranker is compared against on the same rows: reverse-chronological, popularity, a
logistic regression and LightGBM on the same features (the peers a ranker must beat to earn its
complexity), and the oracle (the synthetic world's hidden truth)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from models.tasks import BINARY_TASKS
from pipelines.common.columns import DWELL, WEIGHT
from pipelines.common.config import EvaluateConfig
from pipelines.common.io import read_table
from pipelines.features.manifest import arrow_columns, load_manifest, read_split

log = logging.getLogger(__name__)


SERVING_POSITION = {"ctx_position": 0.0}


def at_serving_position(cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    n = len(next(iter(cols.values())))
    return {**cols, **{k: np.full(n, v, np.float32) for k, v in SERVING_POSITION.items() if k in cols}}


# --------------------------------------------------------------------------------------------- scorers
def score_ranker(
    ranker: Any, cols: dict[str, np.ndarray], at_logged_position: bool = False, batch_size: int = 8192
) -> dict[str, np.ndarray]:
    """Per-task outputs of a :class:`models.servable.ServableRanker` in batches: as served (every item at
    the top slot), or ``at_logged_position`` (the position-bias tower applied to the logged position)."""
    n = len(cols[ranker.input_columns[0]])
    names = [*ranker.input_columns, *(ranker.layout.bias if at_logged_position else ())]
    parts: list[dict[str, np.ndarray]] = []
    for lo in range(0, n, batch_size):
        parts.append(ranker.predict({c: cols[c][lo : lo + batch_size] for c in names}, at_logged_position))
    return {t: np.concatenate([p[t] for p in parts]) for t in parts[0]} if parts else {}


def reverse_chron(cols: dict[str, np.ndarray]) -> np.ndarray:
    """Newest first: the negated post age at serving time."""
    return -cols["p_age_h"].astype(np.float64)


def popularity(cols: dict[str, np.ndarray], windows: dict[str, int]) -> np.ndarray:
    """The post's click+like+comment+share count over all time (counters are log1p); features built before
    the all-time counters existed: the longest window."""
    w = "all" if "p_click_all" in cols else max(windows, key=lambda k: windows[k])
    total = np.zeros(len(cols[f"p_click_{w}"]), np.float64)
    for a in ("click", "like", "comment", "share"):
        total += np.expm1(cols[f"p_{a}_{w}"].astype(np.float64))
    return total


@dataclass(frozen=True)
class FeatureTable:
    """What the tabular peers see of a row: the ranker's dense inputs, its vectors flattened, and the
    vocabulary codes (as categories). Ids are left out: as categories they let the peers memorize (measured:
    lower test AUC); the ranker alone learns embeddings for them."""

    dense: tuple[str, ...]
    vectors: dict[str, int]
    codes: tuple[str, ...]

    @classmethod
    def of(cls, data_dir: Path) -> FeatureTable:
        c = load_manifest(data_dir)["columns"]
        return cls(dense=tuple(c["dense"]), vectors=dict(c["vectors"]), codes=tuple(c["sparse_vocab"]))

    @property
    def columns(self) -> list[str]:
        return [*self.dense, *self.vectors, *self.codes]

    @property
    def n_numeric(self) -> int:
        return len(self.dense) + sum(self.vectors.values())

    def matrix(self, cols: dict[str, np.ndarray]) -> np.ndarray:
        """(N, n_numeric + n_codes) float32, every row at the top slot (as served); codes last."""
        cols = at_serving_position(cols)
        parts: list[np.ndarray] = [np.stack([cols[c].astype(np.float32) for c in self.dense], axis=1)]
        parts += [np.asarray(cols[v], np.float32).reshape(len(parts[0]), d) for v, d in self.vectors.items()]
        parts += [cols[c].astype(np.float32)[:, None] for c in self.codes]
        return np.concatenate(parts, axis=1)


@dataclass
class LogisticBaseline:
    """One logistic regression per binary task (and ridge on log1p dwell seconds) on the
    :class:`FeatureTable`, numbers standardized, codes one-hot."""

    table: FeatureTable
    models: dict[str, Any] = field(default_factory=dict)

    def fit(self, cols: dict[str, np.ndarray], weight: np.ndarray, seed: int) -> LogisticBaseline:
        from sklearn.compose import ColumnTransformer
        from sklearn.linear_model import LogisticRegression, Ridge
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import OneHotEncoder, StandardScaler

        x = self.table.matrix(cols)
        n_num = self.table.n_numeric

        def prep() -> ColumnTransformer:
            return ColumnTransformer(
                [
                    ("num", StandardScaler(), list(range(n_num))),
                    ("cat", OneHotEncoder(handle_unknown="ignore"), list(range(n_num, x.shape[1]))),
                ]
            )

        for task in BINARY_TASKS:
            y = cols[task].astype(np.int64)
            model = make_pipeline(prep(), LogisticRegression(max_iter=300, random_state=seed))
            if y.min() == y.max():  # a task with no positives in the sample: predict its base rate
                model = None
            else:
                model.fit(x, y, logisticregression__sample_weight=weight)
            self.models[task] = (model, float(np.average(y, weights=weight)))
        reg = make_pipeline(prep(), Ridge(alpha=1.0))
        reg.fit(x, dwell_target(cols), ridge__sample_weight=weight)
        self.models["dwell"] = (reg, 0.0)
        return self

    def predict(self, cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return _predict(self.models, self.table.matrix(cols))


@dataclass
class GBDTBaseline:
    """LightGBM per binary task (and a regressor on log1p dwell seconds) on the :class:`FeatureTable`,
    codes as categorical features, boosting rounds chosen by early stopping on the validation split."""

    table: FeatureTable
    rounds: int = 1000
    models: dict[str, Any] = field(default_factory=dict)

    def params(self, seed: int) -> dict[str, Any]:
        return dict(
            n_estimators=self.rounds,
            learning_rate=0.05,
            num_leaves=31,
            min_child_samples=100,
            subsample=0.8,
            subsample_freq=1,
            colsample_bytree=0.8,
            random_state=seed,
            n_jobs=2,
            verbose=-1,
        )

    def fit(
        self, cols: dict[str, np.ndarray], weight: np.ndarray, valid: dict[str, np.ndarray], seed: int
    ) -> GBDTBaseline:
        import lightgbm as lgb

        x, xv = self.table.matrix(cols), self.table.matrix(valid)
        cats = list(range(self.table.n_numeric, x.shape[1]))
        stop: list[Callable[..., Any]] = [lgb.early_stopping(50, verbose=False)]
        for task in BINARY_TASKS:
            y = cols[task].astype(np.int64)
            if y.min() == y.max() or valid[task].min() == valid[task].max():
                self.models[task] = (None, float(np.average(y, weights=weight)))
                continue
            clf = lgb.LGBMClassifier(**self.params(seed))
            clf.fit(
                x,
                y,
                sample_weight=weight,
                eval_X=(xv,),
                eval_y=(valid[task],),
                categorical_feature=cats,
                callbacks=stop,
            )
            self.models[task] = (clf, 0.0)
        reg = lgb.LGBMRegressor(**self.params(seed))
        reg.fit(
            x,
            dwell_target(cols),
            sample_weight=weight,
            eval_X=(xv,),
            eval_y=(dwell_target(valid),),
            categorical_feature=cats,
            callbacks=stop,
        )
        self.models["dwell"] = (reg, 0.0)
        return self

    def predict(self, cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return _predict(self.models, self.table.matrix(cols))


def dwell_target(cols: dict[str, np.ndarray]) -> np.ndarray:
    """What the peers regress: log1p of dwell seconds (as the ranker's dwell head)."""
    return np.log1p(cols[DWELL].astype(np.float64) / 1000.0)


def _predict(models: dict[str, Any], x: np.ndarray) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for task, (model, base) in models.items():
        if task == "dwell":
            out[task] = np.expm1(np.maximum(model.predict(x), 0.0)) * 1000.0
        else:
            out[task] = model.predict_proba(x)[:, 1] if model is not None else np.full(len(x), base)
    return out


def _sample(data_dir: Path, split: str, columns: list[str], rows: int, seed: int) -> dict[str, np.ndarray]:
    """At most ``rows`` rows of a split, drawn uniformly (the same rows for every peer)."""
    table = read_split(data_dir, split, columns)
    if table.num_rows > rows:
        rng = np.random.default_rng(seed)
        table = table.take(pa.array(np.sort(rng.choice(table.num_rows, rows, replace=False))))
    return arrow_columns(table)


def fit_peers(data_dir: Path, cfg: EvaluateConfig) -> dict[str, LogisticBaseline | GBDTBaseline]:
    """The logistic regression and LightGBM, fitted on the same train rows (``cfg.baseline_rows`` at most);
    LightGBM stops on the validation split."""
    table = FeatureTable.of(data_dir)
    labels = [*BINARY_TASKS, DWELL]
    train = _sample(data_dir, "train", [*table.columns, *labels, WEIGHT], cfg.baseline_rows, cfg.seed)
    weight = train[WEIGHT].astype(np.float64)
    log.info("fitting the logistic-regression peer on %d rows", len(weight))
    logistic = LogisticBaseline(table).fit(train, weight, cfg.seed)
    valid = _sample(data_dir, "valid", [*table.columns, *labels], cfg.baseline_rows // 2, cfg.seed)
    log.info("fitting the LightGBM peer on %d rows (early stopping on %d)", len(weight), len(valid[DWELL]))
    gbdt = GBDTBaseline(table).fit(train, weight, valid, cfg.seed)
    return {"lightgbm": gbdt, "logistic": logistic}


def oracle(data_dir: Path, impression_ids: np.ndarray) -> dict[str, np.ndarray] | None:
    """Ground-truth probabilities aligned with ``impression_ids``; None without truth/ (real data)."""
    truth = read_table(data_dir / "truth")
    if truth.num_rows == 0:
        return None
    idx = pc.index_in(pa.array(impression_ids), truth["impression_id"]).to_numpy(zero_copy_only=False)
    if np.isnan(idx.astype(np.float64)).any():
        log.warning("truth/ lacks some test impressions: no oracle")
        return None
    rows = truth.take(pa.array(idx.astype(np.int64)))

    def col(name: str) -> np.ndarray:
        return np.asarray(rows[name].to_numpy(zero_copy_only=False), np.float64)

    out = {t: col(f"p_{t}") for t in ("click", "like", "comment", "share", "skip")}
    out["hide"] = 1.0 - (1.0 - col("p_hide")) * (1.0 - col("p_report"))  # the label is hide or report
    out["dwell"] = col("expected_dwell_ms")
    return out

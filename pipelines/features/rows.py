"""Training rows: labels attached to impressions, point-in-time features per row, splits and sampling."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.common import schema
from pipelines.common.cli import DataError
from pipelines.common.columns import BINARY_LABELS, DENSE_PREFIXES, WEIGHT
from pipelines.common.config import FeaturesConfig
from pipelines.common.io import read_table
from pipelines.features import pit
from pipelines.features.formulas import AGE_BUCKETS, WEEK
from pipelines.ingest.rules import hash_strings

log = logging.getLogger(__name__)


@dataclass
class Catalog:
    """Static per-user and per-post attributes aligned with :class:`pit.History` codes."""

    user_age: np.ndarray
    user_gender: np.ndarray
    user_school: np.ndarray  # vocabulary code, 0 unknown
    user_work: np.ndarray  # vocabulary code, 0 unknown
    post_modality: np.ndarray
    post_topic_codes: pa.ListArray
    post_text_emb: np.ndarray
    post_media: np.ndarray
    post_duration: np.ndarray
    post_text_len: np.ndarray


def make_catalog(
    users: pa.Table, posts: pa.Table, vocab: dict[str, dict[str, int]], text_emb: np.ndarray
) -> Catalog:
    """Static attributes in code order (users and posts sorted by id); ``text_emb`` is in post-id order."""
    users_sorted = users.take(pc.sort_indices(users["user_id"]))
    posts_sorted = posts.take(pc.sort_indices(posts["post_id"]))
    media_lengths = [len(v) for v in posts_sorted["media_vector"].to_pylist() if v]
    media_dim = int(pd.Series(media_lengths).mode().iloc[0]) if media_lengths else 1
    return Catalog(
        user_age=pc.fill_null(users_sorted["age"], 0).to_numpy().astype(np.int64),
        user_gender=_codes(users_sorted["gender"].to_pylist(), vocab["gender"]),
        user_school=_codes(users_sorted["school"].to_pylist(), vocab["school"]),
        user_work=_codes(users_sorted["work"].to_pylist(), vocab["work"]),
        post_modality=_codes(posts_sorted["modality"].to_pylist(), vocab["modality"]),
        post_topic_codes=pa.array(
            [[vocab["topic"].get(t, 0) for t in (ts or ())] for ts in posts_sorted["topics"].to_pylist()],
            pa.list_(pa.int64()),
        ),
        post_text_emb=text_emb,
        post_media=_fixed(posts_sorted["media_vector"].to_pylist(), media_dim),
        post_duration=pc.fill_null(posts_sorted["media_duration_s"], 0).to_numpy().astype(np.float32),
        post_text_len=np.array([len(x) if x else 0 for x in posts_sorted["text"].to_pylist()], np.float32),
    )


def make_vocab(users: pa.Table, posts: pa.Table) -> dict[str, dict[str, int]]:
    """Vocabularies of the low-cardinality categoricals (code 0 = missing / out of vocabulary)."""
    return {
        "city": _vocab(users["city"].to_pylist()),
        "gender": _vocab(list(schema.GENDERS)),
        "school": _vocab(users["school"].to_pylist()),  # a ratings log's zip code or age group fits here
        "work": _vocab(users["work"].to_pylist()),  # employer, or occupation
        "modality": _vocab(list(schema.MODALITIES)),
        "topic": _vocab([t for ts in posts["topics"].to_pylist() for t in (ts or ())]),
    }


def _vocab(values: list[Any]) -> dict[str, int]:
    """Sorted distinct non-empty strings → codes 1..n (0 is out-of-vocabulary / missing)."""
    distinct = sorted({v for v in values if isinstance(v, str) and v})
    return {v: i + 1 for i, v in enumerate(distinct)}


def _codes(values: list[Any], vocab: dict[str, int]) -> np.ndarray:
    return np.array([vocab.get(v, 0) if isinstance(v, str) else 0 for v in values], dtype=np.int64)


def _fixed(vectors: list[Any], dim: int) -> np.ndarray:
    """Ragged vectors (or nulls) → (N, dim) float32, zero-padded or truncated."""
    out = np.zeros((len(vectors), dim), dtype=np.float32)
    for i, v in enumerate(vectors):
        if v is not None and len(v):
            k = min(dim, len(v))
            out[i, :k] = np.asarray(v[:k], dtype=np.float32)
    return out


def load_clean(clean: Path) -> dict[str, pa.Table]:
    """What the features read from ``clean/``: the snapshot tables, posts, impressions (viewer, post,
    served_at), ``actions`` (engagements other than views) and ``views`` (with their dwell)."""
    return {
        "users": read_clean(clean, "users"),
        "friendships": read_clean(clean, "friendships"),
        "blocks": read_clean(clean, "blocks"),
        "posts": read_clean(clean, "posts"),
        "impressions": read_clean(clean, "impressions", ["viewer_id", "post_id", "served_at"]),
        "actions": read_clean(
            clean, "engagements", ["viewer_id", "post_id", "type", "at"], pc.field("type") != "view"
        ),
        "views": read_clean(
            clean, "engagements", ["viewer_id", "post_id", "at", "dwell_ms"], pc.field("type") == "view"
        ),
    }


def read_clean(clean: Path, name: str, columns: list[str] | None = None, where: Any = None) -> pa.Table:
    """One clean table (the contract's schema), projected and filtered."""
    return read_table(
        clean / name,
        schema.TABLES[name].schema,
        columns,
        where,
        missing="no clean data (run pipelines.ingest first)",
    )


# ----------------------------------------------------------------------------------------------- labels
def attach_labels(imps: pa.Table, eng: pa.Table, cfg: FeaturesConfig) -> pd.DataFrame:
    """Per impression: binary labels, dwell_ms and skip, from the engagements attributed to it.

    An engagement names its impression when the client logged it (and counts only if that impression is
    of the same viewer and post); otherwise it is credited to the latest earlier impression of the same
    (viewer, post) within ``attribution_window_s``.
    """
    df = pd.DataFrame(
        {
            "impression_id": imps["impression_id"].to_numpy(zero_copy_only=False),
            "viewer_id": imps["viewer_id"].to_numpy(),
            "post_id": imps["post_id"].to_numpy(),
            "t_ms": pc.cast(imps["served_at"], pa.int64()).to_numpy(),
        }
    )
    e = pd.DataFrame(
        {
            "impression_id": eng["impression_id"].to_numpy(zero_copy_only=False),
            "viewer_id": eng["viewer_id"].to_numpy(),
            "post_id": eng["post_id"].to_numpy(),
            "type": eng["type"].to_numpy(zero_copy_only=False),
            "t_ms": pc.cast(eng["at"], pa.int64()).to_numpy(),
            "dwell_ms": pc.fill_null(eng["dwell_ms"], 0).to_numpy(),
        }
    )
    known = e["impression_id"].notna()
    unknown = e[~known].sort_values("t_ms")
    if len(unknown):
        matched = pd.merge_asof(
            unknown,
            df[["impression_id", "viewer_id", "post_id", "t_ms"]].sort_values("t_ms"),
            on="t_ms",
            by=["viewer_id", "post_id"],
            direction="backward",
            tolerance=cfg.attribution_window_s * 1000,
            suffixes=("_evt", ""),
        )
        matched = matched.drop(columns=["impression_id_evt"])
        e = pd.concat([e[known], matched[e.columns]], ignore_index=True)
    # Labels join on (impression, viewer, post): an event citing another viewer's impression, or one of
    # another post, writes no label (ingest quarantines those as impression_mismatch already).
    e = e.merge(df[["impression_id", "viewer_id", "post_id"]], on=["impression_id", "viewer_id", "post_id"])
    for label in ("click", "like", "comment", "share", "report"):
        hit = set(e.loc[e["type"] == label, "impression_id"])
        df[label] = df["impression_id"].isin(hit).astype(np.int8)
    hidden = set(e.loc[e["type"].isin(["hide", "report"]), "impression_id"])
    df["hide"] = df["impression_id"].isin(hidden).astype(np.int8)
    dwell = e[e["type"] == "view"].groupby("impression_id")["dwell_ms"].sum()
    df["dwell_ms"] = df["impression_id"].map(dwell).fillna(0).astype(np.float32)
    df["skip"] = (df["dwell_ms"] < cfg.skip_dwell_ms).astype(np.int8)
    return df


# ----------------------------------------------------------------------------------------------- one day
def _sample(df: pd.DataFrame, cfg: FeaturesConfig) -> pd.DataFrame:
    """Train split only: keep every positive, ``negative_keep_rate`` of all-negative rows (weight 1/rate),
    and repeat rows with a comment or share ``rare_upsample`` times (weight 1/copies each), so weighted
    sums stay unbiased estimates over the logged traffic."""
    u = hash_strings((df["impression_id"] + f"#{cfg.seed}").to_numpy()) / np.float64(2**64)
    positive: np.ndarray = np.asarray(df[["click", "like", "comment", "share", "hide"]].to_numpy().any(1))
    keep = positive | (u < cfg.negative_keep_rate)
    df = df[keep].copy()
    df["sample_weight"] = np.where(positive[keep], 1.0, 1.0 / cfg.negative_keep_rate).astype(np.float32)
    rare = (df["comment"] == 1) | (df["share"] == 1)
    if cfg.rare_upsample > 1 and rare.any():
        df.loc[rare, "sample_weight"] = df.loc[rare, "sample_weight"] / cfg.rare_upsample
        df = pd.concat([df, *[df[rare]] * (cfg.rare_upsample - 1)], ignore_index=True)
    return df


def build_rows(
    h: pit.History, cat: Catalog, imps: pa.Table, eng: pa.Table, cfg: FeaturesConfig
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Labels and point-in-time features for ``imps``; returns scalar columns and vector columns."""
    df = attach_labels(imps, eng, cfg)
    v = h.users(df["viewer_id"].to_numpy())
    p = h.posts(df["post_id"].to_numpy())
    a = np.where(p >= 0, h.post_author[np.maximum(p, 0)], -1)
    t = df["t_ms"].to_numpy() // 1000 - h.t0
    df["request_id"] = imps["request_id"].to_numpy(zero_copy_only=False)
    df["author_id"] = np.where(a >= 0, h.users.ids[np.maximum(a, 0)], -1)
    df["served_at"] = pd.to_datetime(df["t_ms"], unit="ms", utc=True)
    df["position"] = imps["position"].to_numpy()
    vv, pp, aa = np.maximum(v, 0), np.maximum(p, 0), np.maximum(a, 0)
    # Sparse features.
    df["sp_viewer"] = df["viewer_id"]
    df["sp_author"] = df["author_id"]
    df["sp_post"] = df["post_id"]
    df["sp_city"] = np.where(v >= 0, h.user_city[vv], 0)
    df["sp_author_city"] = np.where(a >= 0, h.user_city[aa], 0)
    df["sp_gender"] = np.where(v >= 0, cat.user_gender[vv], 0)
    df["sp_school"] = np.where(v >= 0, cat.user_school[vv], 0)
    df["sp_work"] = np.where(v >= 0, cat.user_work[vv], 0)
    age = cat.user_age[vv]
    df["sp_age_bucket"] = np.where(
        (v >= 0) & (age > 0), np.searchsorted(AGE_BUCKETS, age, side="right") + 1, 0
    )
    df["sp_modality"] = np.where(p >= 0, cat.post_modality[pp], 0)
    # Dense features, by group.
    dense: dict[str, np.ndarray] = {"ctx_position": np.log1p(df["position"].to_numpy()).astype(np.float32)}
    user = pit.user_features(h, v, t, WEEK)
    profiles = {k: user.pop(k) for k in pit.TOPIC_PROFILES}  # (N, T) each
    topic_share = profiles["u_topic_share"]
    modality_share = user.pop("u_modality_share")
    dense.update(user)
    dense["u_age"] = np.where(age > 0, age, 0).astype(np.float32) / 100.0
    dense.update(pit.post_features(h, p, t, cfg.windows))
    dense.update(pit.friend_counters(h, v, p, t, cfg.windows))
    dense.update(pit.author_features(h, a, t, WEEK))
    dense.update(pit.pair_features(h, v, a, t))
    post_topics = h.post_topics[pp] * (p >= 0)[:, None]
    for profile, cross in pit.TOPIC_PROFILES.items():
        dense[cross] = pit.topic_cross(profiles[profile], post_topics)
    post_mod = np.where(p >= 0, h.post_modality[pp], -1)
    dense["x_modality_match"] = np.where(
        post_mod >= 0, modality_share[np.arange(len(pp)), np.maximum(post_mod, 0)], 0.0
    )
    dense["p_text_len"] = np.log1p(cat.post_text_len[pp]).astype(np.float32)
    dense["p_media_duration"] = np.log1p(cat.post_duration[pp]).astype(np.float32)
    dense["p_n_topics"] = post_topics.sum(1).astype(np.float32)
    for k, col in dense.items():
        df[k] = np.asarray(col, dtype=np.float32)
    vectors = {
        "u_topic_share": topic_share.astype(np.float32),
        "u_modality_share": modality_share.astype(np.float32),
        "p_text_emb": cat.post_text_emb[pp] * (p >= 0)[:, None],
        "p_media": cat.post_media[pp] * (p >= 0)[:, None],
    }
    df["sp_topics"] = pa.chunked_array([cat.post_topic_codes.take(pa.array(pp))]).to_pylist()
    return df, vectors


def _to_arrow(df: pd.DataFrame, vectors: dict[str, np.ndarray], columns: list[str]) -> pa.Table:
    table = pa.Table.from_pandas(df[columns], preserve_index=False)
    for name, mat in vectors.items():
        flat = pa.array(mat.astype(np.float32).reshape(-1))
        table = table.append_column(name, pa.FixedSizeListArray.from_arrays(flat, mat.shape[1]))
    return table


def featurize_day(
    day: str,
    splits: Splits,
    clean: str,
    out: str,
    h: pit.History,
    cat: Catalog,
    cfg: FeaturesConfig,
    scalar_columns: list[str],
) -> list[dict[str, Any]]:
    """Build and write one served_at day's examples, per split its rows fall in (a time cut can divide a
    day); returns each split's row/label counts and train-split moments."""
    clean_dir = Path(clean)
    imps = read_table(clean_dir / "impressions" / f"date={day}", schema.IMPRESSIONS)
    start = dt.date.fromisoformat(day)
    horizon = int(np.ceil(cfg.attribution_window_s / 86400))
    eng_parts = [
        read_table(clean_dir / "engagements" / f"date={start + dt.timedelta(days=k)}", schema.ENGAGEMENTS)
        for k in range(horizon + 1)
    ]
    eng = pa.concat_tables(eng_parts)
    rows, vectors = build_rows(h, cat, imps, eng, cfg)
    rows["_row"] = np.arange(len(rows))
    split_of = splits.of(day, rows["t_ms"].to_numpy())
    done = []
    for split in ("train", "valid", "test"):
        df = rows[split_of == split]
        if not len(df):
            continue
        done.append(_write_split(df, vectors, split, day, out, cfg, scalar_columns))
    return done


def _write_split(
    df: pd.DataFrame,
    vectors: dict[str, np.ndarray],
    split: str,
    day: str,
    out: str,
    cfg: FeaturesConfig,
    scalar_columns: list[str],
) -> dict[str, Any]:
    """One day's rows of one split to ``out/<split>/date=<day>/part-0.parquet`` (train rows sampled)."""
    impressions = len(df)
    df = _sample(df, cfg) if split == "train" else df.assign(sample_weight=np.float32(1.0))
    vectors = {k: m[df["_row"].to_numpy()] for k, m in vectors.items()}
    df["split"] = split
    table = _to_arrow(df, vectors, scalar_columns)
    dest = Path(out) / split / f"date={day}"
    dest.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, dest / "part-0.parquet")
    dense = [c for c in scalar_columns if c.startswith(DENSE_PREFIXES)]
    moments = None
    if split == "train":
        w = df["sample_weight"].to_numpy(np.float64)
        x = df[dense].to_numpy(np.float64)
        moments = {
            "w": float(w.sum()),
            "s": (w[:, None] * x).sum(0).tolist(),
            "ss": (w[:, None] * x * x).sum(0).tolist(),
        }
    return {
        "day": day,
        "split": split,
        "rows": len(df),
        "impressions": impressions,
        "positives": {k: int(df[k].sum()) for k in BINARY_LABELS},
        "weighted_positives": {k: float((df[k] * df[WEIGHT]).sum()) for k in BINARY_LABELS},
        "weight": float(df["sample_weight"].sum()),
        "moments": moments,
    }


# -------------------------------------------------------------------------------------------------- stage
@dataclass(frozen=True)
class Splits:
    """Which split each impression falls in: by whole UTC days of ``served_at`` (``days``: day → split),
    or by time: ``served_at`` ≥ ``test_from_ms`` → test, ≥ ``valid_from_ms`` → valid, earlier → train."""

    days: dict[str, str] | None = None
    valid_from_ms: int = 0
    test_from_ms: int = 0

    def of(self, day: str, t_ms: np.ndarray) -> np.ndarray:
        if self.days is not None:
            return np.full(len(t_ms), self.days[day], dtype=object)
        t = np.asarray(t_ms, np.int64)
        return np.where(t >= self.test_from_ms, "test", np.where(t >= self.valid_from_ms, "valid", "train"))

    def describe(self) -> dict[str, Any]:
        if self.days is not None:
            return {"by": "days"}
        iso = lambda ms: dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat()  # noqa: E731
        return {"by": "time", "valid_from": iso(self.valid_from_ms), "test_from": iso(self.test_from_ms)}


def assign_splits(days: list[str], cfg: FeaturesConfig, served_ms: np.ndarray | None = None) -> Splits:
    """``split_by: days``: the last ``test_days`` days → test, the ``valid_days`` before → valid, the rest
    → train. ``split_by: time``: the cuts ``valid_from`` / ``test_from``, or the ``served_ms`` quantiles
    that leave ``test_fraction`` of impressions for test and ``valid_fraction`` before them for valid."""
    if cfg.split_by == "time":
        t = np.sort(np.asarray(served_ms if served_ms is not None else [], np.int64))
        if len(t) == 0:
            raise DataError("no impressions to split")
        if cfg.test_from is not None:
            test_from = int(cfg.test_from.timestamp() * 1000)
            valid_from = int(cfg.valid_from.timestamp() * 1000) if cfg.valid_from is not None else test_from
        else:
            test_from = int(t[int((1 - cfg.test_fraction) * (len(t) - 1))])
            valid_from = int(t[int((1 - cfg.test_fraction - cfg.valid_fraction) * (len(t) - 1))])
        if valid_from > test_from or not (t < valid_from).any() or not (t >= test_from).any():
            when = lambda ms: dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat()  # noqa: E731
            raise DataError(
                f"split_by time: valid from {when(valid_from)}, test from {when(test_from)} leaves an empty "
                f"train or test split (impressions from {when(int(t[0]))} to {when(int(t[-1]))})"
            )
        return Splits(valid_from_ms=valid_from, test_from_ms=test_from)
    days = sorted(days)
    if len(days) <= cfg.test_days + cfg.valid_days:
        raise DataError(
            f"only {len(days)} days of impressions: need more than test_days + valid_days "
            f"({cfg.test_days} + {cfg.valid_days}) to leave a train split (or features.split_by: time)"
        )
    out = {}
    for i, d in enumerate(reversed(days)):
        out[d] = "test" if i < cfg.test_days else "valid" if i < cfg.test_days + cfg.valid_days else "train"
    return Splits(days=out)

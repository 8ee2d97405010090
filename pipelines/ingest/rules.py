"""Row-level validation of raw log batches against the contract (pure pandas/pyarrow, no Ray).

:func:`validate_batch` turns one batch read from Parquet, CSV or JSONL into canonical typed columns plus:

* ``_reason``  — ``None`` for a valid row, else every failed rule joined by ``"; "``, e.g. ``bad_enum:gender``
* ``_raw``     — the row as it was read (JSON), kept for rejected rows only
* ``_source``  — the file the row came from
* ``_bucket``  — ``hash(key) % n_buckets``: rows sharing a key meet in one bucket for de-duplication
* ``_content`` — a hash of the canonical row, to tell exact duplicates from conflicting ones

:func:`dedup_group` then resolves duplicate keys inside one bucket deterministically.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from pipelines.common import schema
from pipelines.common.schema import Table

N_BUCKETS = 16


def hash_strings(values: Any) -> np.ndarray:
    """Stable 64-bit hashes of string ids (for compact membership sets of impression ids)."""
    arr = np.asarray(values, dtype=object)
    return np.asarray(pd.util.hash_array(arr, categorize=False), dtype=np.uint64)


def impression_keys(impression_ids: Any, viewer_ids: Any, post_ids: Any) -> np.ndarray:
    """Stable 64-bit hashes of (impression, viewer, post): what an engagement citing an impression must
    match (one user cannot label another user's impression, nor an impression of another post)."""
    ids = np.asarray(impression_ids, dtype=object)
    viewers = np.asarray(viewer_ids, dtype=np.int64)
    posts = np.asarray(post_ids, dtype=np.int64)
    return hash_strings([f"{i}\x00{v}\x00{p}" for i, v, p in zip(ids, viewers, posts, strict=True)])


def _sorted_member(sorted_ids: np.ndarray, values: np.ndarray) -> np.ndarray:
    if len(sorted_ids) == 0:
        return np.zeros(len(values), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_ids, values), len(sorted_ids) - 1)
    return np.asarray(sorted_ids[pos] == values)


@dataclass(frozen=True)
class References:
    """Ids of already-ingested tables that later tables may point at (sorted arrays)."""

    user_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    post_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    post_created_ms: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    impression_hashes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    #: :func:`impression_keys` of the same impressions (sorted).
    impression_owners: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))

    def post_created(self, post_ids: np.ndarray) -> np.ndarray:
        """created_at (ms) of known posts; meaningless where the post is unknown."""
        if len(self.post_ids) == 0:
            return np.zeros(len(post_ids), np.int64)
        pos = np.minimum(np.searchsorted(self.post_ids, post_ids), len(self.post_ids) - 1)
        return np.asarray(self.post_created_ms[pos])


@dataclass(frozen=True)
class Rules:
    """Bounds every timestamp must fall in (ms since the epoch)."""

    min_ts_ms: int
    max_ts_ms: int


# ------------------------------------------------------------------------------------------ raw → frame
def _json_default(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return str(v)


def _finite(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else str(v)  # NaN → null; ±inf → "inf" / "-inf"
    if isinstance(v, dict):
        return {str(k): _finite(x) for k, x in v.items()}
    if isinstance(v, list | tuple | np.ndarray):
        return [_finite(x) for x in v]
    if v is pd.NaT or v is pd.NA:
        return None
    return v


def strict_json(obj: Any) -> str:
    """``obj`` as standard JSON: non-finite numbers become null (NaN) or strings (±inf), so a quarantined
    row's ``raw`` parses anywhere (Python's ``json`` would write ``NaN``)."""
    return json.dumps(_finite(obj), default=_json_default, allow_nan=False)


def _raw_line(line: Any) -> str:
    """A quarantined JSONL line as standard JSON: the object re-encoded, else the text as a JSON string."""
    try:
        obj = json.loads(line)
    except (json.JSONDecodeError, TypeError):
        return json.dumps(str(line))
    return strict_json(obj)


def _frame(batch: pa.Table, fmt: str, table: Table) -> tuple[pd.DataFrame, pd.Series, pd.Series, np.ndarray]:
    """Canonical-column frame of raw values, the raw text of each row, its source file, and parse failures."""
    sources = pd.Series(
        batch.column("path").to_pylist() if "path" in batch.column_names else [""] * batch.num_rows
    )
    names = table.schema.names
    if fmt == "jsonl":
        lines = batch.column("text").to_pylist()
        records: list[dict[str, Any]] = []
        bad = np.zeros(len(lines), dtype=bool)
        for i, line in enumerate(lines):
            try:
                obj = json.loads(line)
            except (json.JSONDecodeError, TypeError):
                obj = None
            if not isinstance(obj, dict):
                bad[i] = True
                obj = {}
            records.append(obj)
        df = pd.DataFrame.from_records(records, columns=names) if records else pd.DataFrame(columns=names)
        raw = pd.Series(lines, dtype=object)
        return df.reset_index(drop=True), raw, sources, bad
    present = [c for c in names if c in batch.column_names]
    df = batch.select(present).to_pandas(timestamp_as_object=False)
    for c in names:
        if c not in df.columns:
            df[c] = None
    df = df[list(names)]
    # Raw text is built lazily, only for rejected rows (see validate_batch).
    return (
        df.reset_index(drop=True),
        pd.Series([None] * len(df), dtype=object),
        sources,
        np.zeros(len(df), bool),
    )


# ------------------------------------------------------------------------------------------- conversion
def _present(s: pd.Series) -> np.ndarray:
    """Vectorized "has a value": not null/NaN/NaT and not an empty string."""
    present = ~s.isna().to_numpy(dtype=bool)
    if pd.api.types.is_string_dtype(s) and s.dtype != object:
        return present & (s != "").to_numpy(dtype=bool, na_value=False)
    if s.dtype == object:
        empty = np.fromiter((isinstance(v, str) and v == "" for v in s.tolist()), dtype=bool, count=len(s))
        return present & ~empty
    return present


def _to_int(s: pd.Series, dtype: pa.DataType) -> tuple[pd.Series, np.ndarray]:
    num = (
        s if pd.api.types.is_integer_dtype(s) else pd.to_numeric(s.where(_present(s), None), errors="coerce")
    )
    info = np.iinfo(dtype.to_pandas_dtype())
    ok = num.notna() & (num == np.floor(num.fillna(0))) & (num >= info.min) & (num <= info.max)
    return num.where(ok).astype("Int64"), ok.to_numpy()


def _to_float(s: pd.Series) -> tuple[pd.Series, np.ndarray]:
    num = s if pd.api.types.is_float_dtype(s) else pd.to_numeric(s.where(_present(s), None), errors="coerce")
    ok = num.notna() & (np.abs(num.fillna(0)) <= schema.FLOAT32_MAX)  # finite, and finite as float32
    return num.where(ok).astype("Float64"), ok.to_numpy()


def _to_ts_ms(s: pd.Series) -> tuple[pd.Series, np.ndarray]:
    if pd.api.types.is_datetime64_any_dtype(s):
        ts = s.dt.tz_localize("UTC") if s.dt.tz is None else s.dt.tz_convert("UTC")
    else:
        vals = s.where(_present(s), None)
        numeric = vals.map(lambda v: isinstance(v, int | float) and not isinstance(v, bool))
        ts = pd.to_datetime(vals.where(~numeric, None), utc=True, errors="coerce", format="ISO8601")
    ms = ts.astype("int64", copy=False) if not ts.isna().any() else None
    if ms is None:
        out = pd.Series(pd.NA, index=s.index, dtype="Int64")
        good = ts.notna()
        out[good] = ts[good].astype("datetime64[ms, UTC]").astype("int64")
        return out, good.to_numpy()
    return pd.Series(ts.astype("datetime64[ms, UTC]").astype("int64"), index=s.index).astype(
        "Int64"
    ), np.ones(len(s), bool)


def _to_str(s: pd.Series) -> tuple[pd.Series, np.ndarray]:
    ok = np.ones(len(s), dtype=bool)
    present = _present(s)
    if pd.api.types.is_string_dtype(s) and s.dtype != object:
        return s.astype(object).where(present, None), ok
    out = [
        v if isinstance(v, str) else _json_default(v) if p else None
        for v, p in zip(s.tolist(), present, strict=True)
    ]
    return pd.Series(out, index=s.index, dtype=object), ok


def _parse_list(v: Any) -> list[Any] | None:
    if isinstance(v, np.ndarray):
        return list(v.tolist())
    if isinstance(v, list | tuple):
        return list(v)
    if isinstance(v, str):
        t = v.strip()
        if t.startswith("["):
            parsed = json.loads(t)
            if not isinstance(parsed, list):
                raise ValueError(v)
            return parsed
        return [x for x in t.split("|") if x]
    raise ValueError(v)


def _to_list(s: pd.Series, item: pa.DataType) -> tuple[pd.Series, np.ndarray]:
    out: list[list[Any] | None] = []
    ok = np.ones(len(s), dtype=bool)
    numeric = pa.types.is_floating(item)
    for i, (v, p) in enumerate(zip(s.tolist(), _present(s), strict=True)):
        if not p:
            out.append(None)
            continue
        try:
            items = _parse_list(v)
            assert items is not None
            if numeric:
                vals = [float(x) for x in items]
                if not all(abs(x) <= schema.FLOAT32_MAX for x in vals):  # NaN fails this too
                    raise ValueError(v)
                out.append(vals)
            else:
                out.append([str(x) for x in items])
        except (ValueError, TypeError, OverflowError, AssertionError, json.JSONDecodeError):
            ok[i] = False
            out.append(None)
    return pd.Series(out, index=s.index, dtype=object), ok


def _convert(df: pd.DataFrame, table: Table) -> tuple[dict[str, pd.Series], list[tuple[np.ndarray, str]]]:
    cols: dict[str, pd.Series] = {}
    failures: list[tuple[np.ndarray, str]] = []
    for f in table.schema:
        s = df[f.name]
        present = _present(s)
        if pa.types.is_integer(f.type):
            conv, ok = _to_int(s, f.type)
        elif pa.types.is_floating(f.type):
            conv, ok = _to_float(s)
        elif pa.types.is_timestamp(f.type):
            conv, ok = _to_ts_ms(s)
        elif pa.types.is_list(f.type):
            conv, ok = _to_list(s, f.type.value_type)
        else:
            conv, ok = _to_str(s)
        failures.append((present & ~ok, f"bad_type:{f.name}"))
        if not f.nullable:
            failures.append((~present, f"missing:{f.name}"))
        cols[f.name] = conv
    return cols, failures


# ---------------------------------------------------------------------------------------------- rules
Failure = tuple[np.ndarray, str]  # (bool mask over the batch's rows, reason)


@dataclass
class _Columns:
    """A batch's converted columns with the checks every table's rules are written in."""

    c: dict[str, pd.Series]
    refs: References
    rules: Rules

    def arr(self, col: str, fill: int = 0) -> np.ndarray:
        return np.asarray(self.c[col].fillna(fill).to_numpy(dtype=np.int64))

    def notnull(self, col: str) -> np.ndarray:
        return np.asarray(self.c[col].notna().to_numpy(dtype=bool))

    def enum(self, col: str, allowed: tuple[str, ...]) -> Failure:
        return (self.notnull(col) & ~self.c[col].isin(allowed).to_numpy(), f"bad_enum:{col}")

    def ts_range(self, col: str) -> list[Failure]:
        v, nn = self.arr(col), self.notnull(col)
        return [
            (nn & (v < self.rules.min_ts_ms), f"too_old:{col}"),
            (nn & (v > self.rules.max_ts_ms), f"in_future:{col}"),
        ]

    def is_known(self, col: str, ids: np.ndarray) -> np.ndarray:
        return self.notnull(col) & _sorted_member(ids, self.arr(col))

    def known(self, col: str, ids: np.ndarray, what: str) -> Failure:
        return (self.notnull(col) & ~self.is_known(col, ids), f"unknown_{what}:{col}")

    def before_post(self, col: str) -> Failure:
        """Rows whose known post was created after ``col``."""
        post = self.arr("post_id")
        known_post = _sorted_member(self.refs.post_ids, post)
        return (
            known_post & self.notnull(col) & (self.arr(col) < self.refs.post_created(post)),
            "before_post_created",
        )


def _user_rules(k: _Columns) -> list[Failure]:
    age = k.arr("age")
    return [
        (k.notnull("age") & ((age < schema.MIN_AGE) | (age > schema.MAX_AGE)), "out_of_range:age"),
        k.enum("gender", schema.GENDERS),
        *k.ts_range("joined_at"),
    ]


def _pair_rules(a: str, b: str) -> Callable[[_Columns], list[Failure]]:
    """Friendships and blocks: two different known users."""

    def rules(k: _Columns) -> list[Failure]:
        return [
            (k.notnull(a) & k.notnull(b) & (k.arr(a) == k.arr(b)), "self_reference"),
            k.known(a, k.refs.user_ids, "user"),
            k.known(b, k.refs.user_ids, "user"),
            *k.ts_range("created_at"),
        ]

    return rules


def _post_rules(k: _Columns) -> list[Failure]:
    c = k.c
    created, deleted = k.arr("created_at"), k.arr("deleted_at")
    topics_len = c["topics"].map(lambda v: len(v) if isinstance(v, list) else 0).to_numpy()
    text_len = c["text"].map(lambda v: len(v) if isinstance(v, str) else 0).to_numpy()
    video = (c["modality"] == "video").to_numpy()
    dur = c["media_duration_s"].fillna(0).to_numpy(dtype=float)
    return [
        k.known("author_id", k.refs.user_ids, "user"),
        k.enum("modality", schema.MODALITIES),
        k.enum("visibility", schema.VISIBILITIES),
        *k.ts_range("created_at"),
        *k.ts_range("deleted_at"),
        (k.notnull("deleted_at") & (deleted < created), "deleted_before_created"),
        (topics_len > schema.MAX_TOPICS_PER_POST, "out_of_range:topics"),
        (text_len > schema.MAX_TEXT_CHARS, "out_of_range:text"),
        (k.notnull("media_duration_s") & (dur < 0), "out_of_range:media_duration_s"),
        (video & ~k.notnull("media_duration_s"), "missing:media_duration_s"),
    ]


def _impression_rules(k: _Columns) -> list[Failure]:
    return [
        k.known("viewer_id", k.refs.user_ids, "user"),
        k.known("post_id", k.refs.post_ids, "post"),
        *k.ts_range("served_at"),
        (k.notnull("position") & (k.arr("position") < 0), "out_of_range:position"),
        k.before_post("served_at"),
    ]


def _engagement_rules(k: _Columns) -> list[Failure]:
    c = k.c
    is_view = (c["type"] == "view").to_numpy()
    dwell = k.arr("dwell_ms", -1)
    imp = c["impression_id"]
    has_imp = imp.notna().to_numpy()
    imp_known = np.ones(len(imp), dtype=bool)
    imp_owned = np.ones(len(imp), dtype=bool)
    if has_imp.any():
        imp_known[has_imp] = _sorted_member(k.refs.impression_hashes, hash_strings(imp[has_imp].to_numpy()))
        owners = impression_keys(
            imp[has_imp].to_numpy(), k.arr("viewer_id")[has_imp], k.arr("post_id")[has_imp]
        )
        imp_owned[has_imp] = _sorted_member(k.refs.impression_owners, owners)
    return [
        k.known("viewer_id", k.refs.user_ids, "user"),
        k.known("post_id", k.refs.post_ids, "post"),
        k.enum("type", schema.ENGAGEMENT_TYPES),
        *k.ts_range("at"),
        k.before_post("at"),
        (is_view & ~k.notnull("dwell_ms"), "missing:dwell_ms"),
        (k.notnull("dwell_ms") & ((dwell < 0) | (dwell > schema.MAX_DWELL_MS)), "out_of_range:dwell_ms"),
        (has_imp & ~imp_known, "unknown_impression:impression_id"),
        # a known impression of another viewer or another post: its labels are not this event's to write
        # (rows whose viewer or post is unknown already say so)
        (
            has_imp
            & imp_known
            & ~imp_owned
            & k.is_known("viewer_id", k.refs.user_ids)
            & k.is_known("post_id", k.refs.post_ids),
            "impression_mismatch",
        ),
    ]


#: Each table's rules beyond types and required columns: (mask, reason) per rule.
TABLE_RULES: dict[str, Callable[[_Columns], list[Failure]]] = {
    "users": _user_rules,
    "friendships": _pair_rules("user_a", "user_b"),
    "blocks": _pair_rules("blocker_id", "blocked_id"),
    "posts": _post_rules,
    "impressions": _impression_rules,
    "engagements": _engagement_rules,
}


def _rules(name: str, c: dict[str, pd.Series], refs: References, rules: Rules) -> list[Failure]:
    return TABLE_RULES[name](_Columns(c, refs, rules))


# -------------------------------------------------------------------------------------------- entry points
def _arrow_column(s: pd.Series, f: pa.Field) -> pa.Array:
    if pa.types.is_timestamp(f.type):
        return (
            pa.array(s.to_numpy(dtype="float64", na_value=np.nan), pa.float64(), from_pandas=True)
            .cast(pa.int64())
            .cast(f.type)
        )
    if pa.types.is_integer(f.type) or pa.types.is_floating(f.type):
        return pa.array(s.to_numpy(dtype="float64", na_value=np.nan), from_pandas=True).cast(
            f.type, safe=False
        )
    return pa.array(
        [None if v is None or (isinstance(v, float) and math.isnan(v)) else v for v in s.tolist()], f.type
    )


def _content_hash(cols: dict[str, pd.Series], table: Table) -> np.ndarray:
    """64-bit hash of each row's canonical values (lists hashed through their text form)."""
    parts = {}
    for f in table.schema:
        c = cols[f.name]
        parts[f.name] = c.map(lambda v: None if v is None else str(v)) if pa.types.is_list(f.type) else c
    frame = pd.DataFrame(parts).astype(object).where(pd.DataFrame(parts).notna(), None)
    return np.asarray(pd.util.hash_pandas_object(frame, index=False).to_numpy())


def validate_batch(batch: pa.Table, table: Table, fmt: str, refs: References, rules: Rules) -> pa.Table:
    """Canonical columns (all nullable) plus the ``_``-prefixed bookkeeping columns; see module doc."""
    df, raw, sources, unparsable = _frame(batch, fmt, table)
    n = len(df)
    cols, failures = _convert(df, table)
    if table.name == "friendships":  # undirected: store each pair once as (smaller, larger)
        a, b = cols["user_a"], cols["user_b"]
        swap = (a > b).fillna(False).to_numpy(dtype=bool)
        cols["user_a"], cols["user_b"] = a.where(~swap, b), b.where(~swap, a)
    failures += _rules(table.name, cols, refs, rules)
    reason = np.full(n, None, dtype=object)
    for mask, why in failures:
        idx = np.flatnonzero(mask)
        for i in idx:
            reason[i] = why if reason[i] is None else f"{reason[i]}; {why}"
    reason[unparsable] = "bad_json"  # nothing else about a line that is not a JSON object is meaningful
    bad = np.array([r is not None for r in reason], dtype=bool)
    if fmt != "jsonl" and bad.any():
        raw_rows = df[bad].to_dict(orient="records")
        raw.iloc[np.flatnonzero(bad)] = [strict_json(r) for r in raw_rows]
    elif bad.any():
        raw.iloc[np.flatnonzero(bad)] = [_raw_line(raw.iloc[i]) for i in np.flatnonzero(bad)]
    raw[~bad] = None
    relaxed = pa.schema([f.with_nullable(True) for f in table.schema])
    arrays = [_arrow_column(cols[f.name], f) for f in relaxed]
    out = pa.Table.from_arrays(arrays, schema=relaxed)
    key_frame = pd.DataFrame({k: cols[k] for k in table.key}).astype(object).fillna("")
    bucket = pd.util.hash_pandas_object(key_frame, index=False).to_numpy() % N_BUCKETS
    content = _content_hash(cols, table)
    return (
        out.append_column("_reason", pa.array(reason, pa.string()))
        .append_column("_raw", pa.array(raw.tolist(), pa.string()))
        .append_column("_source", pa.array(sources.tolist(), pa.string()))
        .append_column("_bucket", pa.array(bucket.astype(np.int64)))
        .append_column("_content", pa.array(content.view(np.int64)))
    )


STATUSES = ("accepted", "quarantined", "duplicate")


def dedup_group(group: pa.Table, key: tuple[str, ...]) -> pa.Table:
    """Decide every row of one bucket: adds ``_status`` (one of :data:`STATUSES`).

    Rejected rows stay ``quarantined``. Among valid rows sharing a key, the one with the smallest content
    hash is ``accepted`` (so the result does not depend on read order), exact copies of it are
    ``duplicate``, and rows with the same key but other content are ``quarantined`` with the reason
    ``conflicting_duplicate``.
    """
    rejected = np.asarray(group.column("_reason").is_valid())
    frame = pd.DataFrame({k: group.column(k).to_pandas() for k in key})
    frame["_content"] = group.column("_content").to_numpy()
    frame["_row"] = np.arange(group.num_rows)
    valid = frame[~rejected].sort_values([*key, "_content"], kind="stable")
    dup_key = valid.duplicated(subset=list(key), keep="first").to_numpy()
    dup_exact = valid.duplicated(subset=[*key, "_content"], keep="first").to_numpy()
    status = np.full(group.num_rows, "quarantined", dtype=object)
    reason = np.asarray(group.column("_reason").to_pylist(), dtype=object)
    rows = valid["_row"].to_numpy()
    status[rows] = np.where(dup_exact, "duplicate", np.where(dup_key, "quarantined", "accepted"))
    conflict = rows[dup_key & ~dup_exact]
    reason[conflict] = "conflicting_duplicate"
    group = group.set_column(
        group.schema.get_field_index("_reason"), "_reason", pa.array(reason, pa.string())
    )
    return group.append_column("_status", pa.array(status, pa.string()))


def select_status(batch: pa.Table, status: str) -> pa.Table:
    """Rows of ``batch`` whose ``_status`` is ``status``."""
    import pyarrow.compute as pc

    return batch.filter(pc.equal(batch.column("_status"), status))


def to_clean(batch: pa.Table, table: Table) -> pa.Table:
    """Drop bookkeeping columns and restore the contract's non-null schema (valid rows only)."""
    cols = [batch.column(f.name).cast(f.type) for f in table.schema]
    out = pa.Table.from_arrays(cols, schema=table.schema)
    return out.combine_chunks()

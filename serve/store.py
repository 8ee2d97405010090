"""The online store: what retrieval and ranking read about users, the graph, posts and recent activity.

One interface (:class:`OnlineStore`), two backends:

- :class:`EmbeddedStore` (default, one machine): numpy arrays loaded from ``D/online/`` (written by
  ``pipelines.features``) in every replica that needs them.
- ``serve.redis_store.RedisStore`` (several nodes): the same data in a ``redis-server``.

Live updates (new posts, served impressions, engagements) are :data:`serve.records.LogRecord` s. The
serving log (:mod:`serve.log`) makes them durable and hands them to every store; the embedded store applies
records newer than its snapshot, so a replica started later replays what the log holds since the snapshot.

Counters are kept as counts (the snapshot's ``log1p`` values are undone once at load) and live events add
to every window; a window's old events do not expire until the next ``pipelines.features`` snapshot.
User and user–author aggregates (``u_*``, ``a_*``, ``ua_*``) are refreshed by that snapshot only.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.common import schema
from pipelines.features.pit import counter_windows
from serve.records import LogRecord

#: Post columns kept as counts; ``p_impressions_<w>`` and ``p_<action>_<w>`` for every window.
COUNTER_PREFIX = "p_"
POSITIVE = ("click", "like", "comment", "share")
NEGATIVE = ("hide", "report")
#: User columns ranking reads (the u_* / a_* scalars are found in the snapshot's schema).
USER_VECTORS = ("u_topic_share", "u_topic_lift", "u_topic_dwell", "u_modality_share")
MODALITY_INDEX = {m: i for i, m in enumerate(schema.MODALITIES)}  # the order of u_modality_share
#: ``visibility_code`` of a post (-1: a value the contract does not know; retrieval shows it to nobody).
VISIBILITY_CODE = {"public": 0, "friends": 1, "private": 2}
ONLINE_TABLES = ("users", "posts", "user_author", "friendships", "blocks", "recent_actions", "viewer_events")


@dataclass
class ViewerState:
    """What one viewer was shown and pushed away recently."""

    seen: np.ndarray  # int64 post ids shown to the viewer
    hidden: np.ndarray  # int64 post ids the viewer hid or reported
    hidden_authors: dict[int, int]  # author id → hides + reports of their posts


@dataclass
class Snapshot:
    """Static parts of the embedded store (replaced whole, never mutated while readers hold it)."""

    users: np.ndarray  # sorted user ids
    user_cols: dict[str, np.ndarray]  # aligned with users
    friend_ptr: np.ndarray  # CSR over user codes
    friend_ids: np.ndarray
    friend_since: np.ndarray  # epoch seconds
    blocked: dict[int, np.ndarray]  # user id → ids blocked by or blocking them
    posts: np.ndarray  # sorted post ids
    post_cols: dict[str, np.ndarray]  # aligned with posts; numeric ones are field views of post_rows
    post_rows: np.ndarray  # structured: one record per post with every numeric column (see _pack)
    by_author_order: np.ndarray  # post codes sorted by (author, created)
    by_author_keys: np.ndarray  # author id of each entry of by_author_order
    pair_keys: np.ndarray  # sorted (viewer code * n_users + author code)
    pair_cols: dict[str, np.ndarray]
    eng_post: np.ndarray  # positive actions of the snapshot, sorted by post id
    eng_user: np.ndarray
    eng_at: np.ndarray  # epoch seconds


class OnlineStore(Protocol):
    """Reads used by retrieval and ranking; vectorized over ids. Unknown ids come back with found=False."""

    as_of_s: float
    windows: dict[str, int]
    vocab: dict[str, dict[str, int]]

    def has_user(self, user_id: int) -> bool: ...

    def users(self, ids: np.ndarray) -> dict[str, np.ndarray]: ...

    def friends(self, user_id: int) -> tuple[np.ndarray, np.ndarray]: ...

    def blocked_with(self, user_id: int) -> np.ndarray: ...

    def posts_by(self, authors: np.ndarray, since_s: float, until_s: float) -> np.ndarray: ...

    def recent_posts(self, since_s: float, until_s: float) -> np.ndarray:
        """Ids of every post created in ``[since_s, until_s)`` (deleted included)."""
        ...

    def posts(self, ids: np.ndarray, columns: Sequence[str] | None = None) -> dict[str, np.ndarray]: ...

    def pairs(self, viewer: int, authors: np.ndarray) -> dict[str, np.ndarray]: ...

    def engagers(self, post_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...

    def viewer(self, viewer: int) -> ViewerState: ...

    def apply(self, records: list[LogRecord]) -> int: ...

    def applied(self, ids: Sequence[str]) -> list[bool]:
        """Whether each record id has been applied (idempotent writes: stored once)."""
        ...

    def sample(self, n: int) -> tuple[int, np.ndarray]: ...


def _secs(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """UTC timestamps → float epoch seconds (NaN for nulls)."""
    ms = pc.cast(pc.cast(col, schema.TS), pa.int64())
    return np.asarray(pc.fill_null(pc.cast(ms, pa.float64()), np.nan).to_numpy(zero_copy_only=False)) / 1000.0


def _matrix(col: pa.ChunkedArray) -> np.ndarray:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if len(arr) == 0:
        return np.zeros((0, arr.type.list_size), np.float32)
    return np.asarray(arr.values.to_numpy(zero_copy_only=False), np.float32).reshape(len(arr), -1)


def _lookup(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Positions of ``ids`` in ``sorted_ids``; -1 where absent."""
    ids = np.asarray(ids, np.int64)
    if len(sorted_ids) == 0:
        return np.full(len(ids), -1, np.int64)
    pos = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
    return np.where(sorted_ids[pos] == ids, pos, -1).astype(np.int64)


def _pack(cols: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Every non-object column as a field of one structured array, and the columns as views of its fields.

    Ranking reads ~30 columns of ~1,000 posts per request: gathering whole records is one fancy index (one
    row copy per post) instead of one per column. In-place counter updates through the views land in it.
    """
    numeric = [k for k, v in cols.items() if v.dtype != object]
    n = len(next(iter(cols.values()))) if cols else 0
    rows = np.zeros(n, np.dtype([(k, cols[k].dtype, cols[k].shape[1:]) for k in numeric]))
    for k in numeric:
        rows[k] = cols[k]
    return rows, {k: rows[k] if k in numeric else v for k, v in cols.items()}


def _take(cols: dict[str, np.ndarray], pos: np.ndarray) -> dict[str, np.ndarray]:
    """Rows ``pos`` of every column; rows where ``pos`` is -1 (unknown ids) are zeros / empty strings."""
    missing = pos < 0
    any_missing = bool(missing.any())
    at = np.maximum(pos, 0)
    out = {}
    for k, v in cols.items():
        if len(v) == 0:
            col = np.zeros((len(pos), *v.shape[1:]), v.dtype)
            if v.dtype == object:
                col[:] = ""
        else:
            col = v[at]
            if any_missing:
                col[missing] = "" if v.dtype == object else 0
        out[k] = col
    return out


def _factorize(values: list[str | None]) -> np.ndarray:
    codes: dict[str, int] = {}
    return np.array([codes.setdefault(v, len(codes)) if v else -1 for v in values], np.int64)


@dataclass
class _Live:
    """Mutable state fed by log records (guarded by the store's lock)."""

    seen: dict[int, set[int]] = field(default_factory=dict)
    hidden: dict[int, set[int]] = field(default_factory=dict)
    hidden_authors: dict[int, dict[int, int]] = field(default_factory=dict)
    # positive actions applied since the snapshot: post id → list of (user id, at seconds)
    engagers: dict[int, list[tuple[int, float]]] = field(default_factory=dict)
    applied: set[str] = field(default_factory=set)  # record ids already applied (idempotent replay)


class EmbeddedStore:
    """The online store in this process's memory, loaded from ``D/online/``.

    Example::

        store = EmbeddedStore.load(Path("data/demo"))
        store.friends(42)            # (friend ids, friendship start in epoch seconds)
        store.posts(np.array([5_000_000]))["author_id"]
    """

    def __init__(
        self,
        snap: Snapshot,
        as_of_s: float,
        windows: dict[str, int],
        vocab: dict[str, dict[str, int]],
        events: pa.Table,
    ) -> None:
        self.snapshot = snap
        self.as_of_s = as_of_s
        self.windows = windows
        self.vocab = vocab
        self._lock = threading.RLock()
        self._live = _Live()
        self._topic_width = snap.post_cols["topic_codes"].shape[1]
        viewers = events["viewer_id"].to_numpy()
        post_ids = events["post_id"].to_numpy()
        kinds = events["type"].to_pylist()
        authors = self._author_of(post_ids)
        for v, p, k, a in zip(viewers.tolist(), post_ids.tolist(), kinds, authors.tolist(), strict=True):
            self._note_viewer_event(int(v), int(p), k, int(a))

    # ------------------------------------------------------------------------------------------- loading
    @classmethod
    def load(cls, data_dir: Path) -> EmbeddedStore:
        online = data_dir / "online"
        manifest_path = online / "manifest.json"
        if not manifest_path.exists():
            raise FileNotFoundError(f"{online}: no online snapshot (run pipelines.features first)")
        manifest = json.loads(manifest_path.read_text())
        vocab_path = Path(manifest.get("features_dir", data_dir / "features")) / "vocab.json"
        if not vocab_path.exists():
            vocab_path = data_dir / "features" / "vocab.json"
        vocab = json.loads(vocab_path.read_text())
        import datetime as dt

        as_of_s = dt.datetime.fromisoformat(manifest["as_of"]).timestamp()
        tables = {name: pq.read_table(online / f"{name}.parquet") for name in ONLINE_TABLES}
        return cls.from_tables(tables, as_of_s, dict(manifest["windows"]), vocab)

    @classmethod
    def from_tables(
        cls,
        tables: dict[str, pa.Table],
        as_of_s: float,
        windows: dict[str, int],
        vocab: dict[str, dict[str, int]],
    ) -> EmbeddedStore:
        """From the online tables (``ONLINE_TABLES``, as :func:`pipelines.features.online.build_online`
        writes them); a snapshot an older version wrote, without columns serving reads, is an error that
        says to rebuild it."""
        wanted = {
            "users": ("school_code", "work_code"),
            "posts": tuple(f"p_{a}_{w}" for w in counter_windows(windows) for a in ("impressions", "click")),
        }
        for name, columns in wanted.items():
            if missing := [c for c in columns if c not in tables[name].column_names]:
                raise ValueError(
                    f"online snapshot: {name} lacks {missing} (written by an older version): rerun "
                    "python -m pipelines.features on this data directory"
                )
        snap = _snapshot(
            tables["users"],
            tables["posts"],
            tables["user_author"],
            tables["friendships"],
            tables["blocks"],
            tables["recent_actions"],
        )
        return cls(snap, as_of_s, windows, vocab, tables["viewer_events"])

    # -------------------------------------------------------------------------------------------- reads
    def has_user(self, user_id: int) -> bool:
        return bool(_lookup(self.snapshot.users, np.array([user_id]))[0] >= 0)

    def users(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        snap = self.snapshot
        pos = _lookup(snap.users, ids)
        found = pos >= 0
        out = _take(snap.user_cols, pos)
        out["found"] = found
        out["user_id"] = np.asarray(ids, np.int64)
        return out

    def friends(self, user_id: int) -> tuple[np.ndarray, np.ndarray]:
        snap = self.snapshot
        code = int(_lookup(snap.users, np.array([user_id]))[0])
        if code < 0:
            return np.zeros(0, np.int64), np.zeros(0)
        lo, hi = snap.friend_ptr[code], snap.friend_ptr[code + 1]
        return snap.friend_ids[lo:hi], snap.friend_since[lo:hi]

    def blocked_with(self, user_id: int) -> np.ndarray:
        return self.snapshot.blocked.get(int(user_id), np.zeros(0, np.int64))

    def posts_by(self, authors: np.ndarray, since_s: float, until_s: float) -> np.ndarray:
        """Ids of posts by ``authors`` created in ``[since_s, until_s)``, newest first (deleted included:
        retrieval applies visibility)."""
        snap = self.snapshot
        authors = np.unique(np.asarray(authors, np.int64))
        lo = np.searchsorted(snap.by_author_keys, authors, side="left")
        hi = np.searchsorted(snap.by_author_keys, authors, side="right")
        lengths = hi - lo
        if lengths.sum() == 0:
            return np.zeros(0, np.int64)
        idx = np.repeat(lo, lengths) + (
            np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        )
        codes = snap.by_author_order[idx]
        created = snap.post_cols["created_s"][codes]
        keep = codes[(created >= since_s) & (created < until_s)]
        order = np.argsort(-snap.post_cols["created_s"][keep], kind="stable")
        return snap.posts[keep[order]]

    def recent_posts(self, since_s: float, until_s: float) -> np.ndarray:
        snap = self.snapshot
        created = snap.post_cols["created_s"]
        return snap.posts[(created >= since_s) & (created < until_s)]

    def posts(self, ids: np.ndarray, columns: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Post columns for ``ids`` (all, or just ``columns``), plus ``found`` and ``post_id``."""
        snap = self.snapshot
        pos = _lookup(snap.posts, ids)
        names = list(snap.post_cols) if columns is None else list(columns)
        fields = snap.post_rows.dtype.names or ()
        packed = [c for c in names if c in fields]
        if len(packed) < 6:  # a few columns: copy just those
            packed = []
        with self._lock:
            out = _take({c: snap.post_cols[c] for c in names if c not in packed}, pos)
            if packed:
                if len(snap.post_rows):
                    rows = snap.post_rows[np.maximum(pos, 0)]
                    rows[pos < 0] = np.zeros(1, rows.dtype)
                else:  # no post at all: every id is unknown
                    rows = np.zeros(len(pos), snap.post_rows.dtype)
                out.update({c: rows[c] for c in packed})
        out["found"] = pos >= 0
        out["post_id"] = np.asarray(ids, np.int64)
        return out

    def pairs(self, viewer: int, authors: np.ndarray) -> dict[str, np.ndarray]:
        snap = self.snapshot
        n_u = len(snap.users)
        v = int(_lookup(snap.users, np.array([viewer]))[0])
        a = _lookup(snap.users, authors)
        keys = np.where((v >= 0) & (a >= 0), v * n_u + a, -1)
        pos = _lookup(snap.pair_keys, keys)
        pos = np.where(keys >= 0, pos, -1)
        out = _take(snap.pair_cols, pos)
        out["found"] = (pos >= 0) & (keys >= 0)
        return out

    def engagers(self, post_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Positive actions on each post: (row index into ``post_ids``, user id, at seconds)."""
        snap = self.snapshot
        post_ids = np.asarray(post_ids, np.int64)
        lo = np.searchsorted(snap.eng_post, post_ids, side="left")
        lengths = np.searchsorted(snap.eng_post, post_ids, side="right") - lo
        total = int(lengths.sum())
        rows = np.repeat(np.arange(len(post_ids)), lengths)
        idx = np.repeat(lo, lengths) + (np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths))
        users, ats = snap.eng_user[idx], snap.eng_at[idx]
        with self._lock:
            live = self._live.engagers
            extra = [(i, u, t) for i, p in enumerate(post_ids.tolist()) if p in live for u, t in live[p]]
        if extra:
            r, u, t = (np.array(x) for x in zip(*extra, strict=True))
            rows, users, ats = np.concatenate([rows, r]), np.concatenate([users, u]), np.concatenate([ats, t])
        return rows.astype(np.int64), users.astype(np.int64), ats.astype(np.float64)

    def viewer(self, viewer: int) -> ViewerState:
        with self._lock:
            live = self._live
            return ViewerState(
                seen=np.fromiter(live.seen.get(viewer, ()), np.int64),
                hidden=np.fromiter(live.hidden.get(viewer, ()), np.int64),
                hidden_authors=dict(live.hidden_authors.get(viewer, {})),
            )

    def user_ids(self) -> np.ndarray:
        return self.snapshot.users.copy()

    def sample(self, n: int) -> tuple[int, np.ndarray]:
        """A user id and up to ``n`` post ids (warm-up traffic)."""
        snap = self.snapshot
        return int(snap.users[0]) if len(snap.users) else 0, snap.posts[:n].copy()

    # ------------------------------------------------------------------------------------------- writes
    def apply(self, records: list[LogRecord]) -> int:
        """Apply log records (see :mod:`serve.log`); replaying a record twice changes nothing."""
        new_posts = [r for r in records if r["kind"] == "post" and r["id"] not in self._live.applied]
        if new_posts:
            self._add_posts(new_posts)
        n = 0
        with self._lock:
            fresh = [r for r in records if r["id"] not in self._live.applied and r["kind"] != "post"]
            ids = np.array([r["post_id"] for r in fresh], np.int64)
            pos = _lookup(self.snapshot.posts, ids)
            authors = np.where(pos >= 0, self.snapshot.post_cols["author_id"][np.maximum(pos, 0)], -1)
            for r in records:
                if r["kind"] == "post" and r["id"] not in self._live.applied:
                    self._live.applied.add(r["id"])
                    n += 1
            for r, p, author in zip(fresh, pos.tolist(), authors.tolist(), strict=True):
                if r["id"] in self._live.applied:  # twice in this batch
                    continue
                self._live.applied.add(r["id"])
                n += 1
                if r["kind"] == "impression":
                    self._count(p, "impressions")
                    self._note_viewer_event(r["viewer_id"], r["post_id"], "impression", author)
                elif r["kind"] == "engagement" and r["type"] != "view":
                    self._count(p, r["type"])
                    self._note_viewer_event(r["viewer_id"], r["post_id"], r["type"], author)
                    if r["type"] in POSITIVE:
                        self._live.engagers.setdefault(r["post_id"], []).append(
                            (r["viewer_id"], r["at_ms"] / 1000.0)
                        )
        return n

    def applied(self, ids: Sequence[str]) -> list[bool]:
        """Whether each record id has been applied here (live records since the snapshot: this replica's
        and, through the log, every other's)."""
        with self._lock:
            return [i in self._live.applied for i in ids]

    def _author_of(self, post_ids: np.ndarray) -> np.ndarray:
        """Author of each post; -1 for posts the store does not know."""
        post = self.posts(np.asarray(post_ids, np.int64), ("author_id",))
        return np.where(post["found"], post["author_id"], -1)

    def _note_viewer_event(self, viewer: int, post: int, kind: str, author: int) -> None:
        live = self._live
        if kind == "impression":
            live.seen.setdefault(viewer, set()).add(post)
        elif kind in NEGATIVE:
            live.hidden.setdefault(viewer, set()).add(post)
            if author >= 0:
                per = live.hidden_authors.setdefault(viewer, {})
                per[author] = per.get(author, 0) + 1

    def _count(self, pos: int, what: str) -> None:
        """Add one event to every window of the post at row ``pos`` (-1: unknown post, nothing)."""
        if pos < 0:
            return
        for w in counter_windows(self.windows):
            col = self.snapshot.post_cols.get(f"p_{what}_{w}")
            if col is not None:
                col[pos] += 1.0

    def _add_posts(self, records: list[LogRecord]) -> None:
        """New posts: rebuild the post arrays (copy-on-write; readers keep the old snapshot)."""
        with self._lock:
            old = self.snapshot
            fresh = [r for r in records if _lookup(old.posts, np.array([r["post_id"]]))[0] < 0]
            if not fresh:
                return
            cols = post_record_columns(fresh, self.vocab, self._topic_width, old.post_cols, self.windows)
            ids = np.concatenate([old.posts, np.array([r["post_id"] for r in fresh], np.int64)])
            order = np.argsort(ids, kind="stable")
            rows, merged = _pack(
                {k: np.concatenate([old.post_cols[k], cols[k]])[order] for k in old.post_cols}
            )
            posts = ids[order]
            by_author = np.lexsort((merged["created_s"], merged["author_id"]))
            self.snapshot = Snapshot(
                **{
                    **old.__dict__,
                    "posts": posts,
                    "post_cols": merged,
                    "post_rows": rows,
                    "by_author_order": by_author,
                    "by_author_keys": merged["author_id"][by_author],
                }
            )


def post_record_columns(
    records: list[LogRecord],
    vocab: dict[str, dict[str, int]],
    topic_width: int,
    like: dict[str, np.ndarray],
    windows: dict[str, int],
) -> dict[str, np.ndarray]:
    """Columns for new posts (a post log record carries the contract's fields plus ``text_emb``)."""
    n = len(records)
    out: dict[str, np.ndarray] = {}
    for k, col in like.items():
        out[k] = np.zeros((n, *col.shape[1:]), col.dtype)
    topic_vocab = vocab["topic"]
    for i, r in enumerate(records):
        out["author_id"][i] = r["author_id"]
        out["created_s"][i] = r["created_at_ms"] / 1000.0
        deleted = r.get("deleted_at_ms")
        out["deleted_s"][i] = np.nan if deleted is None else deleted / 1000.0
        out["visibility"][i] = r["visibility"]
        out["modality"][i] = r["modality"]
        out["text"][i] = r.get("text") or ""
        out["modality_code"][i] = vocab["modality"].get(r["modality"], 0)
        codes = [topic_vocab.get(t, 0) for t in (r.get("topics") or [])][:topic_width]
        out["topic_codes"][i, : len(codes)] = codes
        out["n_topics"][i] = len(codes)
        out["p_text_emb"][i, : len(r["text_emb"])] = r["text_emb"]
        media = r.get("media_vector") or []
        k = min(len(media), out["p_media"].shape[1])
        out["p_media"][i, :k] = media[:k]
        out["media_duration_s"][i] = r.get("media_duration_s") or 0.0
        out["text_hash"][i] = text_hash(r.get("text"))
        out["text_len"][i] = len(r.get("text") or "")
        out["modality_index"][i] = MODALITY_INDEX.get(r["modality"], -1)
        out["visibility_code"][i] = VISIBILITY_CODE.get(r["visibility"], -1)
    return out


def text_hash(text: str | None) -> int:
    """A stable 62-bit hash of normalized text (0 for no text): duplicates share it."""
    import hashlib

    norm = " ".join((text or "").lower().split())
    if not norm:
        return 0
    return int.from_bytes(hashlib.blake2b(norm.encode(), digest_size=8).digest(), "little") >> 2


def _snapshot(
    users: pa.Table,
    posts: pa.Table,
    pairs: pa.Table,
    friendships: pa.Table,
    blocks: pa.Table,
    recent: pa.Table,
) -> Snapshot:
    uid, ucols = _user_columns(users)
    friend_ptr, friend_codes, friend_since = _friend_csr(uid, friendships)
    pid, post_rows, pcols = _post_columns(posts)
    by_author = np.lexsort((pcols["created_s"], pcols["author_id"]))
    pair_keys, pair_cols = _pair_columns(uid, pairs)
    eng_post = recent["post_id"].to_numpy().astype(np.int64)
    eng_order = np.argsort(eng_post, kind="stable")
    return Snapshot(
        eng_post=eng_post[eng_order],
        eng_user=recent["user_id"].to_numpy().astype(np.int64)[eng_order],
        eng_at=_secs(recent["at"])[eng_order],
        users=uid,
        user_cols=ucols,
        friend_ptr=friend_ptr,
        friend_ids=uid[friend_codes],
        friend_since=friend_since,
        blocked=_blocked_with(blocks),
        posts=pid,
        post_cols=pcols,
        post_rows=post_rows,
        by_author_order=by_author,
        by_author_keys=pcols["author_id"][by_author],
        pair_keys=pair_keys,
        pair_cols=pair_cols,
    )


def _user_columns(users: pa.Table) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Sorted user ids and their columns: profile codes, ``joined_s`` and the u_* / a_* features."""
    users = users.take(pc.sort_indices(users["user_id"]))  # sorted in the snapshot already; to be safe
    uid = users["user_id"].to_numpy()
    ucols: dict[str, np.ndarray] = {
        "age": pc.fill_null(users["age"], 0).to_numpy().astype(np.int64),
        "city_code": users["city_code"].to_numpy().astype(np.int64),
        "gender_code": users["gender_code"].to_numpy().astype(np.int64),
        "school_code": users["school_code"].to_numpy().astype(np.int64),
        "work_code": users["work_code"].to_numpy().astype(np.int64),
        "school": _factorize(users["school"].to_pylist()),
        "work": _factorize(users["work"].to_pylist()),
        "joined_s": _secs(users["joined_at"]),
    }
    for name in users.column_names:
        if name.startswith(("u_", "a_")) and name not in USER_VECTORS:
            ucols[name] = users[name].to_numpy().astype(np.float32)
    for name in USER_VECTORS:
        if name in users.column_names:
            ucols[name] = _matrix(users[name])
    return uid, ucols


def _friend_csr(uid: np.ndarray, friendships: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Friendships in both directions as CSR over user codes: (row pointers, friend codes, since)."""
    codes = lambda col: _lookup(uid, friendships[col].to_numpy())  # noqa: E731
    fa, fb = codes("user_a"), codes("user_b")
    since = _secs(friendships["created_at"])
    src, dst = np.concatenate([fa, fb]), np.concatenate([fb, fa])
    fs = np.concatenate([since, since])
    ok = (src >= 0) & (dst >= 0)
    src, dst, fs = src[ok], dst[ok], fs[ok]
    order = np.lexsort((dst, src))
    src, dst, fs = src[order], dst[order], fs[order]
    return np.searchsorted(src, np.arange(len(uid) + 1)), dst, fs


def _blocked_with(blocks: pa.Table) -> dict[int, np.ndarray]:
    """User id → sorted ids of the users they blocked or were blocked by."""
    blocked: dict[int, list[int]] = {}
    for a, b in zip(blocks["blocker_id"].to_pylist(), blocks["blocked_id"].to_pylist(), strict=True):
        blocked.setdefault(int(a), []).append(int(b))
        blocked.setdefault(int(b), []).append(int(a))
    return {k: np.array(sorted(set(v)), np.int64) for k, v in blocked.items()}


def _post_columns(posts: pa.Table) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Sorted post ids, their packed numeric rows (see :func:`_pack`) and their columns (counters as
    counts, not log1p)."""
    posts = posts.take(pc.sort_indices(posts["post_id"]))
    pid = posts["post_id"].to_numpy()
    topic_lists = posts["topic_codes"].to_pylist()
    width = max([len(t) for t in topic_lists] + [schema.MAX_TOPICS_PER_POST])
    topic_codes = np.zeros((len(pid), width), np.int64)
    for i, ts in enumerate(topic_lists):
        topic_codes[i, : len(ts)] = ts
    texts, modalities, visibilities = (posts[c].to_pylist() for c in ("text", "modality", "visibility"))
    pcols: dict[str, np.ndarray] = {
        "author_id": posts["author_id"].to_numpy().astype(np.int64),
        "created_s": _secs(posts["created_at"]),
        "deleted_s": _secs(posts["deleted_at"]),
        "visibility": np.asarray(visibilities, dtype=object),
        "modality": np.asarray(modalities, dtype=object),
        "text": np.asarray([t or "" for t in texts], dtype=object),
        "modality_code": posts["modality_code"].to_numpy().astype(np.int64),
        "topic_codes": topic_codes,
        "n_topics": np.array([len(t) for t in topic_lists], np.int64),
        "p_text_emb": _matrix(posts["p_text_emb"]),
        "p_media": _matrix(posts["p_media"]),
        "media_duration_s": pc.fill_null(posts["media_duration_s"], 0).to_numpy().astype(np.float32),
        "text_hash": np.array([text_hash(t) for t in texts], np.int64),
        "text_len": np.array([len(t or "") for t in texts], np.float32),
        "modality_index": np.array([MODALITY_INDEX.get(m, -1) for m in modalities], np.int64),
        "visibility_code": np.array([VISIBILITY_CODE.get(v, -1) for v in visibilities], np.int64),
    }
    for name in posts.column_names:
        if name.startswith(COUNTER_PREFIX) and name not in ("p_text_emb", "p_media"):
            pcols[name] = np.expm1(posts[name].to_numpy().astype(np.float64))  # counts, not log1p
    post_rows, pcols = _pack(pcols)
    return pid, post_rows, pcols


def _pair_columns(uid: np.ndarray, pairs: pa.Table) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """User–author pairs: sorted keys (viewer code * n_users + author code) and their ua_* columns."""
    pv, pa_ = _lookup(uid, pairs["viewer_id"].to_numpy()), _lookup(uid, pairs["author_id"].to_numpy())
    keys = pv * len(uid) + pa_
    order = np.argsort(keys)
    pair_cols = {
        name: pairs[name].to_numpy().astype(np.float32)[order]
        for name in pairs.column_names
        if name.startswith("ua_")
    }
    return keys[order], pair_cols

"""The online store in Redis: one copy for every replica on every node (``store.backend: redis``).

Same reads as :class:`serve.store.EmbeddedStore` (the :class:`serve.store.OnlineStore` protocol), so
retrieval, features and ranking do not know which backend they use. Writes (:meth:`RedisStore.apply`) are
visible to every replica as soon as they return; each record is applied once (``SET NX`` on its id).

Layout, under ``<prefix>:<snapshot>:`` (a snapshot is loaded under its own id and made current by one
``SET <prefix>:current``; live writes belong to the snapshot they were applied to)::

    meta                      hash: as_of, windows, vocab, column dtypes/shapes
    u:<column>                hash user id → value bytes           (profile and u_*/a_* features)
    p:<column>                hash post id → value bytes           (post row, content, snapshot counters)
    pc:<counter>              hash post id → live increments       (HINCRBYFLOAT)
    ua:<column>               hash "viewer:author" → float32 bytes
    fr:<user>, bl:<user>      friends (int64 ids, float64 since), blocked-with (int64 ids)
    by:<author>               sorted set post id by created_s
    bytime                    sorted set of every post id by created_s (the retriever's index reads it)
    e:<post>                  positive actions (int64 user, float64 at), APPENDed
    seen:<v>, hid:<v>         sets of post ids;  hida:<v>  hash author → hides + reports
    rec:<record id>           applied-once marker

A column is fetched for all requested ids with one ``HMGET`` and decoded with one ``np.frombuffer``: a
2,000-candidate feed costs a few dozen round trips in one pipeline, not thousands.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.features.pit import counter_windows
from serve.log import LogTailer
from serve.records import LogRecord
from serve.store import NEGATIVE, POSITIVE, EmbeddedStore, Snapshot, ViewerState, post_record_columns

log = logging.getLogger(__name__)

REC_TTL_S = 14 * 86400
LOAD_LOCK_TTL_S = 600
PIPELINE_CHUNK = 5000
_EG = np.dtype([("user", "<i8"), ("at", "<f8")])


def _enc(value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode()
    return np.asarray(value).tobytes()


class RedisStore:
    def __init__(self, client: Any, prefix: str, snapshot: str) -> None:
        self.r = client
        self.k = f"{prefix}:{snapshot}:"
        meta = {k.decode(): v.decode() for k, v in self.r.hgetall(self.k + "meta").items()}
        if not meta:
            raise RuntimeError(f"redis: snapshot {snapshot!r} is not loaded under {prefix!r}")
        self.as_of_s = float(meta["as_of"])
        self.windows: dict[str, int] = json.loads(meta["windows"])
        self.vocab: dict[str, dict[str, int]] = json.loads(meta["vocab"])
        self._cols: dict[str, dict[str, list[Any]]] = json.loads(meta["columns"])
        self._sample = json.loads(meta["sample"])

    # ------------------------------------------------------------------------------------------ loading
    @classmethod
    def connect(cls, url: str, data_dir: Path, prefix: str = "feed") -> RedisStore:
        """Connect; load ``data_dir``'s online snapshot (and the serving log since it) if it is not the
        current one. One replica loads while the others wait for it."""
        import redis

        client = redis.Redis.from_url(url)
        manifest = data_dir / "online" / "manifest.json"
        if not manifest.exists():
            raise FileNotFoundError(f"{manifest.parent}: no online snapshot (run pipelines.features first)")
        snapshot = json.loads(manifest.read_text())["as_of"].replace(":", "")

        def current() -> str | None:
            value = client.get(f"{prefix}:current")
            return value.decode() if isinstance(value, bytes) else value

        if current() != snapshot:
            lock = f"{prefix}:loading:{snapshot}"
            if client.set(lock, "1", nx=True, ex=LOAD_LOCK_TTL_S):
                try:
                    load_snapshot(client, prefix, snapshot, data_dir)
                    client.set(f"{prefix}:current", snapshot)
                finally:
                    client.delete(lock)
            else:
                deadline = time.time() + LOAD_LOCK_TTL_S
                while current() != snapshot:
                    if time.time() > deadline:
                        raise TimeoutError(f"redis: waited {LOAD_LOCK_TTL_S}s for another replica's load")
                    time.sleep(0.5)
        return cls(client, prefix, snapshot)

    # -------------------------------------------------------------------------------------------- reads
    def _columns(
        self, table: str, key: str, ids: list[Any], only: list[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Columns of ``table`` (all, or ``only``) for ``ids``, plus ``_found`` when one is numeric."""
        names = [n for n in self._cols[table] if only is None or n in only]
        pipe = self.r.pipeline(transaction=False)
        for name in names:
            pipe.hmget(f"{self.k}{key}:{name}", ids)
        out: dict[str, np.ndarray] = {}
        n = len(ids)
        for name, values in zip(names, pipe.execute() if ids else [[] for _ in names], strict=True):
            dtype, shape = self._cols[table][name]
            if dtype == "str":
                arr = np.empty(n, dtype=object)
                arr[:] = [v.decode() if v is not None else "" for v in values]
                out[name] = arr
                continue
            dt = np.dtype(dtype)
            size = dt.itemsize * int(np.prod(shape)) if shape else dt.itemsize
            zero = b"\0" * size
            buf = b"".join(v if v is not None else zero for v in values)
            out[name] = np.frombuffer(buf, dtype=dt).reshape(n, *shape).copy()
            out.setdefault("_found", np.array([v is not None for v in values], bool))
        return out

    def has_user(self, user_id: int) -> bool:
        return bool(self.r.hexists(f"{self.k}u:joined_s", int(user_id)))

    def users(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        ids = np.asarray(ids, np.int64)
        out = self._columns("users", "u", ids.tolist())
        out["found"] = out.pop("_found", np.zeros(len(ids), bool))
        out["user_id"] = ids
        return out

    def friends(self, user_id: int) -> tuple[np.ndarray, np.ndarray]:
        raw = self.r.get(f"{self.k}fr:{int(user_id)}")
        if not raw:
            return np.zeros(0, np.int64), np.zeros(0)
        n = len(raw) // 16
        return np.frombuffer(raw[: 8 * n], np.int64).copy(), np.frombuffer(raw[8 * n :], np.float64).copy()

    def blocked_with(self, user_id: int) -> np.ndarray:
        raw = self.r.get(f"{self.k}bl:{int(user_id)}")
        return np.frombuffer(raw, np.int64).copy() if raw else np.zeros(0, np.int64)

    def recent_posts(self, since_s: float, until_s: float) -> np.ndarray:
        rows = self.r.zrangebyscore(f"{self.k}bytime", since_s, f"({until_s}")
        return np.array([int(m) for m in rows], np.int64)

    def posts_by(self, authors: np.ndarray, since_s: float, until_s: float) -> np.ndarray:
        authors = np.unique(np.asarray(authors, np.int64))
        if len(authors) == 0:
            return np.zeros(0, np.int64)
        pipe = self.r.pipeline(transaction=False)
        for a in authors.tolist():
            pipe.zrangebyscore(f"{self.k}by:{a}", since_s, f"({until_s}", withscores=True)
        pairs = [(int(m), s) for rows in pipe.execute() for m, s in rows]
        if not pairs:
            return np.zeros(0, np.int64)
        ids = np.array([p for p, _ in pairs], np.int64)
        created = np.array([s for _, s in pairs])
        order = np.lexsort((ids, -created))  # newest first; ties by id, as the embedded store's stable order
        return ids[order]

    def posts(self, ids: np.ndarray, columns: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        ids = np.asarray(ids, np.int64)
        keys = ids.tolist()
        only = None if columns is None else ["author_id", *columns]  # author_id: always there, gives found
        out = self._columns("posts", "p", keys, only)
        out["found"] = out.pop("_found", np.zeros(len(ids), bool))
        counters = [
            c
            for c in self._cols["posts"]
            if c.startswith("p_") and c not in ("p_text_emb", "p_media") and (only is None or c in only)
        ]
        if keys and counters:
            pipe = self.r.pipeline(transaction=False)
            for c in counters:
                pipe.hmget(f"{self.k}pc:{c}", keys)
            for c, deltas in zip(counters, pipe.execute(), strict=True):
                out[c] = out[c] + np.array([float(d) if d is not None else 0.0 for d in deltas])
        out["post_id"] = ids
        return out

    def pairs(self, viewer: int, authors: np.ndarray) -> dict[str, np.ndarray]:
        fields = [f"{int(viewer)}:{int(a)}" for a in np.asarray(authors, np.int64).tolist()]
        out = self._columns("pairs", "ua", fields)
        out["found"] = out.pop("_found", np.zeros(len(fields), bool))
        return out

    def engagers(self, post_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        keys = [f"{self.k}e:{int(p)}" for p in np.asarray(post_ids, np.int64).tolist()]
        raws = self.r.mget(keys) if keys else []
        rows, users, ats = [], [], []
        for i, raw in enumerate(raws):
            if raw:
                ev = np.frombuffer(raw, _EG)
                rows.append(np.full(len(ev), i, np.int64))
                users.append(ev["user"])
                ats.append(ev["at"])
        if not rows:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
        return np.concatenate(rows), np.concatenate(users), np.concatenate(ats)

    def viewer(self, viewer: int) -> ViewerState:
        pipe = self.r.pipeline(transaction=False)
        pipe.smembers(f"{self.k}seen:{int(viewer)}")
        pipe.smembers(f"{self.k}hid:{int(viewer)}")
        pipe.hgetall(f"{self.k}hida:{int(viewer)}")
        seen, hidden, hida = pipe.execute()
        return ViewerState(
            seen=np.array(sorted(int(x) for x in seen), np.int64),
            hidden=np.array(sorted(int(x) for x in hidden), np.int64),
            hidden_authors={int(a): int(c) for a, c in hida.items()},
        )

    def sample(self, n: int) -> tuple[int, np.ndarray]:
        return int(self._sample["user"]), np.array(self._sample["posts"][:n], np.int64)

    # ------------------------------------------------------------------------------------------- writes
    def apply(self, records: list[LogRecord]) -> int:
        """Apply log records once each (a record's id is claimed with ``SET NX``)."""
        if not records:
            return 0
        pipe = self.r.pipeline(transaction=False)
        for rec in records:
            pipe.set(f"{self.k}rec:{rec['id']}", 1, nx=True, ex=REC_TTL_S)
        fresh = [rec for rec, ok in zip(records, pipe.execute(), strict=True) if ok]
        if not fresh:
            return 0
        posts = [rec for rec in fresh if rec["kind"] == "post"]
        if posts:
            self._add_posts(posts)
        others = [rec for rec in fresh if rec["kind"] != "post"]
        authors = self.posts(np.array([rec["post_id"] for rec in others], np.int64))
        pipe = self.r.pipeline(transaction=False)
        for i, rec in enumerate(others):
            pid, v = int(rec["post_id"]), int(rec["viewer_id"])
            known = bool(authors["found"][i])
            if rec["kind"] == "impression":
                if known:
                    for w in counter_windows(self.windows):
                        pipe.hincrbyfloat(f"{self.k}pc:p_impressions_{w}", pid, 1.0)
                pipe.sadd(f"{self.k}seen:{v}", pid)
            elif rec["type"] != "view":
                if known:
                    for w in counter_windows(self.windows):
                        pipe.hincrbyfloat(f"{self.k}pc:p_{rec['type']}_{w}", pid, 1.0)
                if rec["type"] in POSITIVE:
                    pipe.append(f"{self.k}e:{pid}", np.array([(v, rec["at_ms"] / 1000.0)], _EG).tobytes())
                elif rec["type"] in NEGATIVE:
                    pipe.sadd(f"{self.k}hid:{v}", pid)
                    if known:
                        pipe.hincrby(f"{self.k}hida:{v}", int(authors["author_id"][i]), 1)
        pipe.execute()
        return len(fresh)

    def applied(self, ids: Sequence[str]) -> list[bool]:
        """Whether each record id has been claimed (``rec:<id>``, by any replica on any node)."""
        pipe = self.r.pipeline(transaction=False)
        for i in ids:
            pipe.exists(f"{self.k}rec:{i}")
        return [bool(n) for n in pipe.execute()]

    def _add_posts(self, records: list[LogRecord]) -> None:
        like = {
            name: np.zeros((0, *shape), object if dtype == "str" else np.dtype(dtype))
            for name, (dtype, shape) in self._cols["posts"].items()
        }
        width = self._cols["posts"]["topic_codes"][1][0]
        cols = post_record_columns(records, self.vocab, width, like, self.windows)
        pipe = self.r.pipeline(transaction=False)
        for i, rec in enumerate(records):
            pid = int(rec["post_id"])
            for name, col in cols.items():
                pipe.hset(f"{self.k}p:{name}", pid, _enc(col[i]))
            pipe.zadd(f"{self.k}by:{int(rec['author_id'])}", {pid: float(cols["created_s"][i])})
            pipe.zadd(f"{self.k}bytime", {pid: float(cols["created_s"][i])})
        pipe.execute()


def _spec(arr: np.ndarray) -> list[Any]:
    return ["str" if arr.dtype == object else arr.dtype.str, list(arr.shape[1:])]


def load_snapshot(client: Any, prefix: str, snapshot: str, data_dir: Path) -> None:
    """Write ``data_dir/online`` (parsed by the embedded store) and the serving log since it to Redis."""
    t0 = time.perf_counter()
    emb = EmbeddedStore.load(data_dir)
    snap = emb.snapshot
    out = _Bulk(client, f"{prefix}:{snapshot}:")
    users, posts = snap.users.tolist(), snap.posts.tolist()
    out.columns("u", users, snap.user_cols)
    out.columns("p", posts, snap.post_cols)
    n_u = len(users)
    out.columns(
        "ua", [f"{users[key // n_u]}:{users[key % n_u]}" for key in snap.pair_keys.tolist()], snap.pair_cols
    )
    _load_graph(out, snap)
    _load_posts_by_author(out, snap)
    _load_engagers(out, snap)
    _load_viewer_state(out, emb)
    _load_meta(out, emb)
    out.flush()
    store = RedisStore(client, prefix, snapshot)
    replayed = store.apply(LogTailer(data_dir, since_ms=int(emb.as_of_s * 1000)).poll())
    log.info(
        "redis: loaded snapshot %s (%d users, %d posts, %d log records) in %.1fs",
        snapshot,
        len(users),
        len(posts),
        replayed,
        time.perf_counter() - t0,
    )


class _Bulk:
    """Writes under one snapshot's key prefix ``k``, sent in pipelines of ``PIPELINE_CHUNK`` commands."""

    def __init__(self, client: Any, k: str) -> None:
        self.k = k
        self.pipe = client.pipeline(transaction=False)
        self.pending = 0

    def queued(self) -> None:
        """Count one queued command; send the pipeline once it holds ``PIPELINE_CHUNK``."""
        self.pending += 1
        if self.pending >= PIPELINE_CHUNK:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.pipe.execute()
            self.pending = 0

    def columns(self, key: str, ids: list[Any], cols: dict[str, np.ndarray]) -> None:
        """One hash per column (``<key>:<column>``: id → value bytes), 2,000 fields per HSET."""
        for name, col in cols.items():
            for start in range(0, len(ids), 2000):
                chunk = ids[start : start + 2000]
                mapping = {i: _enc(col[start + j]) for j, i in enumerate(chunk)}
                if mapping:
                    self.pipe.hset(f"{self.k}{key}:{name}", mapping=mapping)
                    self.queued()


def _load_graph(out: _Bulk, snap: Snapshot) -> None:
    """``fr:<user>`` (friend ids, then friendship starts) and ``bl:<user>`` (blocked-with ids)."""
    for code, uid in enumerate(snap.users.tolist()):
        lo, hi = snap.friend_ptr[code], snap.friend_ptr[code + 1]
        if hi > lo:
            ids = snap.friend_ids[lo:hi].astype(np.int64)
            since = snap.friend_since[lo:hi].astype(np.float64)
            out.pipe.set(f"{out.k}fr:{uid}", ids.tobytes() + since.tobytes())
            out.queued()
    for uid, ids in snap.blocked.items():
        out.pipe.set(f"{out.k}bl:{uid}", np.asarray(ids, np.int64).tobytes())
        out.queued()


def _load_posts_by_author(out: _Bulk, snap: Snapshot) -> None:
    """``by:<author>``: the author's post ids scored by creation time."""
    authors = snap.post_cols["author_id"]
    created = snap.post_cols["created_s"]
    by: dict[int, dict[int, float]] = {}
    for pid, a, c in zip(snap.posts.tolist(), authors.tolist(), created.tolist(), strict=True):
        by.setdefault(int(a), {})[int(pid)] = float(c)
    for a, members in by.items():
        out.pipe.zadd(f"{out.k}by:{a}", members)
        out.queued()
    ids, times = snap.posts.tolist(), created.tolist()
    for lo in range(0, len(ids), 10_000):
        out.pipe.zadd(
            f"{out.k}bytime", dict(zip(ids[lo : lo + 10_000], times[lo : lo + 10_000], strict=True))
        )
        out.queued()


def _load_engagers(out: _Bulk, snap: Snapshot) -> None:
    """``e:<post>``: the snapshot's positive actions on the post, (user, at) records."""
    bounds = np.flatnonzero(np.diff(snap.eng_post)) + 1
    for idx in np.split(np.arange(len(snap.eng_post)), bounds) if len(snap.eng_post) else []:
        events = np.empty(len(idx), _EG)
        events["user"], events["at"] = snap.eng_user[idx], snap.eng_at[idx]
        out.pipe.set(f"{out.k}e:{int(snap.eng_post[idx[0]])}", events.tobytes())
        out.queued()


def _load_viewer_state(out: _Bulk, emb: EmbeddedStore) -> None:
    """``seen:<v>``, ``hid:<v>`` and ``hida:<v>`` from the snapshot's viewer events."""
    for name, sets in (("seen", emb._live.seen), ("hid", emb._live.hidden)):
        for v, post_ids in sets.items():
            if post_ids:
                out.pipe.sadd(f"{out.k}{name}:{v}", *post_ids)
                out.queued()
    for v, per in emb._live.hidden_authors.items():
        if per:
            out.pipe.hset(f"{out.k}hida:{v}", mapping={str(a): c for a, c in per.items()})
            out.queued()


def _load_meta(out: _Bulk, emb: EmbeddedStore) -> None:
    """``meta``: as_of, windows, vocab, every column's dtype and shape, and a warm-up sample."""
    snap = emb.snapshot
    columns = {
        "users": {n: _spec(c) for n, c in snap.user_cols.items()},
        "posts": {n: _spec(c) for n, c in snap.post_cols.items()},
        "pairs": {n: _spec(c) for n, c in snap.pair_cols.items()},
    }
    sample_user, sample_posts = emb.sample(8)
    out.pipe.hset(
        f"{out.k}meta",
        mapping={
            "as_of": str(emb.as_of_s),
            "windows": json.dumps(emb.windows),
            "vocab": json.dumps(emb.vocab),
            "columns": json.dumps(columns),
            "sample": json.dumps({"user": sample_user, "posts": sample_posts.tolist()}),
        },
    )
    out.queued()

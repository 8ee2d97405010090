"""The serving log: served impressions, received engagements and new posts, appended durably to the raw
interaction logs, so the next ``ingest → features → train`` run learns from what was served.

Each writer (one per replica) appends JSON lines to its own files::

    D/raw/impressions/serving/date=YYYY-MM-DD/<writer>.jsonl   the contract's columns (+ arm, model_version,
                                                               fallback, retrieval_arm, suggested)
    D/raw/engagements/serving/date=YYYY-MM-DD/<writer>.jsonl
    D/raw/posts/serving/date=YYYY-MM-DD/<writer>.jsonl         (+ text_emb: the post's embedding)

Ingestion reads them like any raw file and ignores the extra keys (they are there for analysis: which arm
served what; training does not see them yet). The same files are how replicas learn
about each other's writes: :class:`LogTailer` reads what every writer appended since its last poll and
hands it to the online store (a :data:`serve.records.LogRecord` carries a ``kind`` and a unique ``id``;
applying one twice is a no-op).

One writer thread per :class:`ServingLog` does the writing with group commit: everything queued since its
last write goes out as one ``write`` + ``fsync`` per file. :meth:`ServingLog.append` returns once its records
are on disk (client events: an accepted request is durable); :meth:`ServingLog.submit` returns at once
(served impressions, logged after the response is sent; a failed write is logged and counted).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import queue
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

from serve.records import LogRecord, engagement_id

if TYPE_CHECKING:
    from serve.store import OnlineStore

log = logging.getLogger(__name__)

TABLE_OF = {"impression": "impressions", "engagement": "engagements", "post": "posts"}
TIME_OF = {"impression": "served_at", "engagement": "at", "post": "created_at"}


def iso(ms: int) -> str:
    """Epoch milliseconds → ISO 8601 UTC with milliseconds (what ingestion parses)."""
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds")


def to_line(record: LogRecord) -> dict[str, Any]:
    """A store record → the raw-log row (contract columns with ISO timestamps, plus extras)."""
    row = {k: v for k, v in record.items() if k not in ("kind", "id") and not k.endswith("_ms")}
    for k, v in record.items():
        if k.endswith("_ms") and k != "dwell_ms":
            row[k[:-3]] = iso(int(v))
    if record.get("dwell_ms") is not None:
        row["dwell_ms"] = record["dwell_ms"]
    return row


def from_line(kind: str, row: dict[str, Any]) -> LogRecord:
    """A raw-log row written by :func:`to_line` → the store record."""
    rec = dict(row)
    for k in ("served_at", "at", "created_at"):
        if k in rec and isinstance(rec[k], str):
            rec[f"{k}_ms"] = int(dt.datetime.fromisoformat(rec.pop(k)).timestamp() * 1000)
    rec["kind"] = kind
    rec["id"] = {
        "impression": lambda r: r["impression_id"],
        "engagement": lambda r: engagement_id(r["viewer_id"], r["event_id"]),
        "post": lambda r: f"post:{r['post_id']}",
    }[kind](rec)
    return rec


class ServingLog:
    """Durable appends for one writer (a replica), written by one thread with group commit; thread-safe."""

    def __init__(self, data_dir: Path, writer: str) -> None:
        self.raw = data_dir / "raw"
        self.writer = writer
        self.failed = 0  # records of submit() calls whose write failed
        self._queue: queue.SimpleQueue[tuple[list[LogRecord], Future[None]] | None] = queue.SimpleQueue()
        self._dirs: dict[tuple[str, int], Path] = {}
        self._thread = threading.Thread(target=self._run, name=f"serving-log-{writer}", daemon=True)
        self._thread.start()

    def path(self, kind: str, ms: int) -> Path:
        day = ms // 86_400_000
        d = self._dirs.get((kind, day))
        if d is None:
            date = dt.datetime.fromtimestamp(day * 86_400, dt.UTC).date().isoformat()
            d = self._dirs[(kind, day)] = self.raw / TABLE_OF[kind] / "serving" / f"date={date}"
            d.mkdir(parents=True, exist_ok=True)
        return d / f"{self.writer}.jsonl"

    def submit(self, records: list[LogRecord]) -> Future[None]:
        """Queue records (each with ``kind`` and ``<time>_ms``) for the writer; done once on disk."""
        done: Future[None] = Future()
        if not records:
            done.set_result(None)
            return done
        if not self._thread.is_alive():
            raise RuntimeError("the serving log's writer thread is not running")
        self._queue.put((records, done))
        return done

    def append(self, records: list[LogRecord], timeout_s: float = 30.0) -> None:
        """Write records and return once they are on disk (raises if the write failed)."""
        self.submit(records).result(timeout=timeout_s)

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait until everything submitted so far is on disk."""
        self.submit([{"kind": "flush"}]).result(timeout=timeout_s)

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout=30)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            batch = [item]
            while item is not None:  # group commit: take whatever else is waiting
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                batch.append(item)
            jobs = [b for b in batch if b is not None]
            try:
                self._write([r for records, _ in jobs for r in records if r["kind"] != "flush"])
            except Exception as e:
                log.exception("serving log write failed (%d requests)", len(jobs))
                for records, done in jobs:
                    self.failed += len(records)
                    done.set_exception(e)
            else:
                for _, done in jobs:
                    done.set_result(None)
            if len(jobs) < len(batch):
                return

    def _write(self, records: list[LogRecord]) -> None:
        by_file: dict[Path, list[str]] = {}
        for r in records:
            ms = int(r[f"{TIME_OF[r['kind']]}_ms"])
            by_file.setdefault(self.path(r["kind"], ms), []).append(
                json.dumps(to_line(r), separators=(",", ":")) + "\n"
            )
        for path, lines in by_file.items():
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, "".join(lines).encode())
                os.fsync(fd)
            finally:
                os.close(fd)


class LogTailer:
    """Reads every writer's complete lines appended since the last :meth:`poll` (in file order)."""

    def __init__(self, data_dir: Path, since_ms: int = 0) -> None:
        self.raw = data_dir / "raw"
        self.since_ms = since_ms
        self._offsets: dict[Path, int] = {}
        self._lock = threading.Lock()

    def poll(self) -> list[LogRecord]:
        out: list[LogRecord] = []
        with self._lock:
            # Posts first: impressions and engagements refer to them.
            for kind in ("post", "impression", "engagement"):
                root = self.raw / TABLE_OF[kind] / "serving"
                if not root.is_dir():
                    continue
                for path in sorted(root.glob("date=*/*.jsonl")):
                    start = self._offsets.get(path, 0)
                    size = path.stat().st_size
                    if size <= start:
                        continue
                    with path.open("rb") as fh:
                        fh.seek(start)
                        chunk = fh.read(size - start)
                    end = chunk.rfind(b"\n") + 1  # only complete lines; the rest is read next time
                    self._offsets[path] = start + end
                    for line in chunk[:end].splitlines():
                        if not line.strip():
                            continue
                        rec = from_line(kind, json.loads(line))
                        if rec[f"{TIME_OF[kind]}_ms"] > self.since_ms:
                            out.append(rec)
        return out


class StoreSync:
    """Applies what every writer appended to the serving log, every ``poll_s`` and on demand."""

    def __init__(self, store: OnlineStore, tailer: LogTailer, poll_s: float) -> None:
        self.store, self.tailer, self.poll_s = store, tailer, poll_s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.poll_now()
        self._thread = threading.Thread(target=self._run, name="store-sync", daemon=True)
        self._thread.start()

    def poll_now(self) -> int:
        with self._lock:
            return self.store.apply(self.tailer.poll())

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.poll_now()
            except Exception:
                log.exception("applying the serving log failed; retrying")

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()

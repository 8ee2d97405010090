"""Client writes checked with the ingest contract's own rules (:mod:`pipelines.ingest.rules`).

One rule set: a write (client events, a new post) becomes the raw-log lines the serving log will write for
it (:func:`serve.log.to_line`), and those lines are validated as ``pipelines.ingest`` will validate them
later (:func:`pipelines.ingest.rules.validate_batch`), with the references — the users, the posts and
their creation times, the impressions — drawn from the online store instead of the clean tables, and
times bounded by the feed's accepted event age and clock skew. A request the feed accepts therefore
passes the next ingest's row rules, and its problems carry the quarantine's reasons
(``unknown_post:post_id``, ``before_post_created``, ``missing:media_duration_s``, …) in words. (What
the next ingest can still quarantine is what no single request can know: a copy of an event stored by two
replicas at once is a duplicate there, and a served impression whose log write failed leaves its events
``unknown_impression``.)

Impressions: the feed signs each impression id it serves with the viewer and the post
(:class:`ImpressionSigner`), so any replica — after a restart too — can tell that an event citing it comes
from that viewer about that post, without a lookup. An engagement naming any other impression is
``unknown_impression``: one user cannot write another user's labels.

Example::

    >>> signer = ImpressionSigner(b"k" * 32)
    >>> iid = signer.sign("req1", 0, viewer=7, post=42)
    >>> signer.verify(iid, viewer=7, post=42), signer.verify(iid, viewer=8, post=42)
    (True, False)
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from pipelines.common import schema
from pipelines.ingest.rules import References, Rules, hash_strings, impression_keys, validate_batch
from serve.log import TABLE_OF, to_line
from serve.records import LogRecord

#: A problem of one record: (the request's field, a message).
Problem = tuple[str, str]

#: The request field a raw-log column comes from (the rest keep their names).
API_FIELD = {"served_at": "at", "viewer_id": "authorization", "author_id": "authorization"}
#: A reason's words (the reason's column, or the table's time column, is the field).
MESSAGES = {
    "bad_type": "not a valid value",
    "missing": "required",
    "bad_enum": "not an allowed value",
    "out_of_range": "out of range",
    "too_old": "older than the feed accepts (feed.max_event_age_s)",
    "in_future": "in the future",
    "unknown_user": "unknown user",
    "unknown_post": "unknown post",
    "unknown_impression": "not an impression this feed served to this viewer for this post",
    "impression_mismatch": "not an impression this feed served to this viewer for this post",
    "before_post_created": "before the post was created",
    "deleted_before_created": "deleted before it was created",
    "self_reference": "refers to itself",
    "bad_json": "not a JSON object",
}
#: Reasons without a column, and the column they are about.
BARE = {"before_post_created": None, "impression_mismatch": "impression_id", "deleted_before_created": None}


class ImpressionSigner:
    """Impression ids bound to their viewer and post: ``<request_id>:<position>:<16 hex of HMAC>``."""

    def __init__(self, key: bytes) -> None:
        self.key = hashlib.sha256(b"impression:" + key).digest()

    def _mac(self, base: str, viewer: int, post: int) -> str:
        msg = f"{base}\x00{viewer}\x00{post}".encode()
        return hmac.new(self.key, msg, hashlib.sha256).hexdigest()[:16]

    def sign(self, request_id: str, position: int, viewer: int, post: int) -> str:
        base = f"{request_id}:{position}"
        return f"{base}:{self._mac(base, viewer, post)}"

    def verify(self, impression_id: str, viewer: int, post: int) -> bool:
        base, _, mac = impression_id.rpartition(":")  # any text: compared as bytes (str needs ASCII)
        return bool(base) and hmac.compare_digest(mac.encode(), self._mac(base, viewer, post).encode())


def _field(reason: str, time_column: str | None) -> Problem:
    kind, _, column = reason.partition(":")
    col = column or BARE.get(kind) or time_column or "body"
    return API_FIELD.get(col, col), MESSAGES.get(kind, kind)


def contract_problems(records: Sequence[LogRecord], refs: References, rules: Rules) -> list[list[Problem]]:
    """Per record, what the ingest contract would quarantine it for (empty: nothing)."""
    out: list[list[Problem]] = [[] for _ in records]
    by_table: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        by_table.setdefault(TABLE_OF[r["kind"]], []).append(i)
    for name, rows in by_table.items():
        table = schema.TABLES[name]
        lines = [json.dumps(to_line(records[i])) for i in rows]
        checked = validate_batch(pa.table({"text": lines}), table, "jsonl", refs, rules)
        for i, reason in zip(rows, checked.column("_reason").to_pylist(), strict=True):
            if reason:
                out[i] = [_field(r, table.time_column) for r in reason.split("; ")]
    return out


def references(
    users: Sequence[int],
    post_ids: np.ndarray,
    post_created_s: np.ndarray,
    impressions: Sequence[tuple[str, int, int]] = (),
) -> References:
    """The contract's references for one request: the known ``users``, the known posts (ids and creation
    times), and the ``impressions`` (id, viewer, post) it may cite."""
    order = np.argsort(post_ids)
    ids = [i for i, _, _ in impressions]
    return References(
        user_ids=np.sort(np.asarray(users, np.int64)),
        post_ids=np.asarray(post_ids, np.int64)[order],
        post_created_ms=np.round(np.asarray(post_created_s, np.float64)[order] * 1000).astype(np.int64),
        impression_hashes=np.sort(hash_strings(ids)) if ids else np.zeros(0, np.uint64),
        impression_owners=np.sort(
            impression_keys(ids, [v for _, v, _ in impressions], [p for _, _, p in impressions])
        )
        if ids
        else np.zeros(0, np.uint64),
    )

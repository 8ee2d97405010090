"""Training labels: an engagement labels the impression it names only if that impression is of the same
viewer and post, so a planted cross-user event changes no label."""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

from pipelines.common import schema
from pipelines.common.config import FeaturesConfig
from pipelines.features.rows import attach_labels

T0 = 1_700_000_000_000


def _impressions() -> pa.Table:
    return pa.table(
        {
            "impression_id": ["a:0", "a:1", "b:0"],
            "request_id": ["a", "a", "b"],
            "viewer_id": [1, 1, 2],
            "post_id": [10, 11, 10],
            "served_at": pa.array([T0, T0, T0], pa.timestamp("ms", tz="UTC")),
            "position": pa.array([0, 1, 0], pa.int32()),
        },
        schema=schema.IMPRESSIONS,
    )


def _engagements(rows: Sequence[tuple[str, int, int, str | None, str]]) -> pa.Table:
    return pa.table(
        {
            "event_id": [r[0] for r in rows],
            "viewer_id": [r[1] for r in rows],
            "post_id": [r[2] for r in rows],
            "impression_id": [r[3] for r in rows],
            "type": [r[4] for r in rows],
            "at": pa.array([T0 + 1000] * len(rows), pa.timestamp("ms", tz="UTC")),
            "dwell_ms": pa.array([None] * len(rows), pa.int32()),
        },
        schema=schema.ENGAGEMENTS,
    )


def test_a_planted_cross_user_event_changes_no_label() -> None:
    honest = [("e1", 1, 10, "a:0", "like")]
    planted = [
        ("x1", 1, 10, "b:0", "share"),  # viewer 1 cites viewer 2's impression
        ("x2", 2, 11, "a:1", "hide"),  # viewer 2 cites viewer 1's impression
        ("x3", 1, 11, "a:0", "comment"),  # viewer 1's impression of another post
    ]
    cfg = FeaturesConfig()
    clean = attach_labels(_impressions(), _engagements(honest), cfg)
    attacked = attach_labels(_impressions(), _engagements(honest + planted), cfg)
    labels = ["click", "like", "comment", "share", "hide", "report", "dwell_ms", "skip"]
    assert attacked[labels].equals(clean[labels])
    assert clean["like"].tolist() == [1, 0, 0]

"""What the ranker's inputs cost at serving: ``python -m bench.feature_cost --data-dir D``.

Times :func:`serve.features.assemble` (one viewer, ~1,000 candidate posts, the online snapshot of ``D``)
with today's inputs and, in the same process and alternating, with the inputs before issue 13 (no
per-action rates, no lift and dwell topic crosses), so the added cost is measured side by side. Prints
medians in ms.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

OLD_VIEWER = ("u_friends", "u_actions_7d", "u_impressions_7d", "u_action_rate")
OLD_AUTHOR = ("a_posts_7d", "a_actions_7d", "a_friends", "a_action_rate")


@contextlib.contextmanager
def old_inputs() -> Iterator[None]:
    """serve.features assembling only the inputs it had before issue 13."""
    import serve.features as f

    saved = f.VIEWER_SCALARS, f.AUTHOR_SCALARS, f.TOPIC_PROFILES
    f.VIEWER_SCALARS, f.AUTHOR_SCALARS = OLD_VIEWER, OLD_AUTHOR
    f.TOPIC_PROFILES = {"u_topic_share": "x_topic_match"}
    try:
        yield
    finally:
        f.VIEWER_SCALARS, f.AUTHOR_SCALARS, f.TOPIC_PROFILES = saved


def main(
    data_dir: Annotated[Path, typer.Option(help="Data directory with online/.")],
    candidates: Annotated[int, typer.Option(help="Posts per request.")] = 1000,
    repeats: Annotated[int, typer.Option(help="Timed calls per variant.")] = 200,
) -> None:
    """Median ms of assemble() for one request, today's inputs vs the inputs before issue 13."""
    from serve.features import assemble
    from serve.store import EmbeddedStore

    store = EmbeddedStore.load(data_dir)
    rng = np.random.default_rng(0)
    users = store.user_ids()
    all_posts = store.snapshot.posts  # sorted post ids
    now = store.as_of_s + 60
    times: dict[str, list[float]] = {"today": [], "before issue 13": []}
    for i in range(repeats):
        viewer = int(rng.choice(users))
        ids = np.sort(rng.choice(all_posts, size=min(candidates, len(all_posts)), replace=False))
        for name in ("today", "before issue 13") if i % 2 else ("before issue 13", "today"):
            with old_inputs() if name != "today" else contextlib.nullcontext():
                start = time.perf_counter()
                assemble(store, viewer, ids, now)
                times[name].append(time.perf_counter() - start)
    for name, ts in times.items():
        typer.echo(f"{name}: assemble {candidates} candidates, median {1000 * statistics.median(ts):.2f} ms")


if __name__ == "__main__":
    typer.run(main)

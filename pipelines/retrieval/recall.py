"""Offline recall of a retriever on the test split, beside the simple peers.

The queries are the test split's engaged rows (as :meth:`RetrieverSetup.positive_mask` defines them),
each with the viewer's features at that impression; the corpus is every post of the test split, each
with its features (and the state the prior reads) from its first row in file order (files are written
day by day, so an early impression of it). A query's post is found at K
when it is among the K corpus posts the method scores highest for that viewer:

- ``retriever``: the viewer vector against every post vector (exact inner product);
- ``popular``: the posts with the most engagement so far (all-time counters at their first impression);
- ``random``: a uniformly random order (recall@K = K / corpus, the floor).

Recall here is against what the logging policy happened to show, so it undercounts what a retriever
finds that was never shown; ``bench.retrieval`` measures recall against the synthetic world's oracle.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.batch import Jagged
from pipelines.common.cli import DataError
from pipelines.common.config import RetrieverEvalConfig
from pipelines.features.manifest import arrow_columns, eval_set_id, read_split
from pipelines.retrieval.setup import NEGATIVE_ACTIONS, RetrieverSetup

#: Counters the popularity peer adds up (the all-time windows; a log without them falls back to random).
POPULARITY = ("p_click_all", "p_like_all", "p_comment_all", "p_share_all")
METHODS = ("retriever", "popular", "random")


@dataclass
class Recall:
    """Recall@K per method on one test split."""

    eval_set: str
    queries: int
    corpus: int
    recall: dict[str, dict[int, float]]  # method → K → recall

    def flat(self) -> dict[str, float]:
        return {f"test/{m}/recall_at_{k}": v for m, by_k in self.recall.items() for k, v in by_k.items()}

    def table(self) -> str:
        ks = sorted(next(iter(self.recall.values())))
        head = "| method | " + " | ".join(f"recall@{k}" for k in ks) + " |"
        rows = [head, "|---|" + "---:|" * len(ks)]
        for m, by_k in self.recall.items():
            rows.append(f"| {m} | " + " | ".join(f"{by_k[k]:.3f}" for k in ks) + " |")
        return "\n".join(rows)


def evaluate_recall(
    data_dir: Path, retriever: Any, setup: RetrieverSetup, cfg: RetrieverEvalConfig
) -> Recall:
    """Recall@K (``cfg.ks``) of ``retriever`` (a :class:`models.retriever.ServableRetriever`) and the peers on
    the test split, over at most ``cfg.max_queries`` engaged rows."""
    labels = [*setup.positives, *(a for a in NEGATIVE_ACTIONS if a not in setup.positives)]
    wanted = [*retriever.viewer_columns, *retriever.post_columns, *retriever.prior_columns]
    wanted += [*labels, *POPULARITY, "post_id"]
    table = read_split(data_dir, "test")
    table = table.select([c for c in dict.fromkeys(wanted) if c in table.column_names])
    cols = arrow_columns(table, jagged=True)
    post_ids = np.asarray(cols["post_id"], np.int64)
    corpus_ids, first = np.unique(post_ids, return_index=True)
    queries = np.flatnonzero(setup.positive_mask(cols))
    if len(queries) == 0:
        raise DataError(f"{data_dir / 'features' / 'test'}: no engaged row to measure recall on")
    rng = np.random.default_rng(cfg.seed)
    if len(queries) > cfg.max_queries:
        queries = np.sort(rng.choice(queries, cfg.max_queries, replace=False))
    target = np.searchsorted(corpus_ids, post_ids[queries])  # (Q,) corpus index of each query's post

    def rows(index: np.ndarray, names: list[str]) -> dict[str, Any]:
        return {
            n: cols[n].take(index) if isinstance(cols[n], Jagged) else np.asarray(cols[n])[index]
            for n in names
        }

    u = retriever.embed_viewers(rows(queries, retriever.viewer_columns))  # (Q, d)
    p = retriever.embed_posts(rows(first, retriever.post_columns))  # (C, d)
    prior = retriever.prior(
        rows(first, retriever.prior_columns), len(first)
    )  # (C,) the post's state when first shown
    pop: np.ndarray | None = None
    if all(c in cols for c in POPULARITY):
        pop = np.sum([np.asarray(cols[c], np.float64)[first] for c in POPULARITY], axis=0)
    ranks: dict[str, list[np.ndarray]] = {m: [] for m in METHODS if m != "popular" or pop is not None}
    for lo in range(0, len(queries), 256):  # (256, C) scores at a time
        at = np.arange(lo, min(lo + 256, len(queries)))
        chunk = {
            "retriever": u[at] @ p.T / retriever.temperature + prior[None, :],
            "random": rng.random((len(at), len(corpus_ids))),
        }
        if pop is not None:  # ties broken at random
            chunk["popular"] = pop[None, :] + rng.random((len(at), len(pop))) * 1e-3
        for method, sc in chunk.items():
            own = sc[np.arange(len(at)), target[at]]
            ranks[method].append((sc > own[:, None]).sum(1))  # posts scored above the engaged one
    recall = {m: {k: float((np.concatenate(r) < k).mean()) for k in sorted(cfg.ks)} for m, r in ranks.items()}
    return Recall(eval_set_id(data_dir), len(queries), len(corpus_ids), recall)

"""Pre-ranking against newest-first truncation: ``python -m bench.prerank --data-dir D``.

When a viewer's friends posted more than the ranker may score (``ranking.max_candidates``), something
must choose which candidates reach it. Round 1 kept the newest; the feed now keeps the best by two-tower
score (:func:`serve.index.two_tower_scores`, as :func:`serve.index.prerank` does). For the viewers of
:class:`bench.retrieval.OracleBench` (demo world, at the online snapshot's time), at each candidate
budget ``B``:

1. the candidates are every friend's post the viewer may see (the in-network pool, before any cut);
2. a policy keeps ``B`` of them: newest first, by two-tower score, or at random (the floor);
3. the registered ranker (``feed-ranker@champion`` by default) scores the kept posts from the online
   store's features, and the final feed is their first 10 after the value model and re-ranking of
   ``configs/serve.yaml`` (freshness, fatigue, seen demotion, de-duplication, diversity), as served;
4. NDCG@10 of that feed, with the oracle's P(click, like, comment or share) at the top slot as the gain
   and the ideal ten among the whole pool as the normalizer.

Only viewers with more friends' posts than ``B`` count at that budget (below it every policy keeps
everything); their number is in the table. The ranker over the whole pool (no budget) is shown beside:
it is not a ceiling, since a cut by recency or by two-tower score can remove posts the ranker over-rates.
The two-tower cut is the served one (:func:`serve.index.prerank` on friends-only candidates).
Writes the "Pre-ranking (issue 17)" section of ``--out``.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from bench.report import machine, publish
from bench.retrieval import OracleBench, load_retriever, top
from pipelines.common.runtime import REPO

POLICIES = ("two-tower score", "newest first", "random")


def dcg(gains: np.ndarray) -> float:
    return float(np.sum(gains / np.log2(np.arange(2, len(gains) + 2))))


def ndcg_at(truth: np.ndarray, chosen: np.ndarray, k: int = 10) -> float:
    """NDCG@k of the feed ``chosen`` (indices into ``truth``, in feed order) against the ideal ``k``."""
    ideal = dcg(np.sort(truth)[::-1][:k])
    return dcg(truth[chosen[:k]]) / ideal if ideal > 0 else 0.0


def paired_ci(diffs: np.ndarray, seed: int, draws: int = 2000) -> tuple[float, float]:
    """95% bootstrap interval of the mean of per-viewer differences."""
    rng = np.random.default_rng(seed)
    means = diffs[rng.integers(0, len(diffs), (draws, len(diffs)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def final_feed(store: Any, viewer: int, post_ids: np.ndarray, value: np.ndarray, t: float, cfg: Any) -> Any:
    """The first 10 of ``post_ids`` after re-ranking (``cfg``: the serve config), as positions into them."""
    from serve.reranking import RerankContext, Slate, rerank

    post = store.posts(post_ids, ("author_id", "created_s", "text_hash"))
    state = store.viewer(viewer)
    slate = Slate(
        post_id=post_ids,
        author_id=post["author_id"],
        created_s=post["created_s"].astype(np.float64),
        text_hash=post["text_hash"],
        score=value.astype(np.float64),
        seen=np.isin(post_ids, state.seen),
        reasons=[()] * len(post_ids),
    )
    ctx = RerankContext(now_s=t, hidden_authors=state.hidden_authors, seed=viewer, limit=10)
    out = rerank(slate, ctx, cfg.rerank).post_id[:10]
    pos = {int(p): i for i, p in enumerate(post_ids.tolist())}
    return np.array([pos[int(p)] for p in out], np.int64)


def measure(
    bench: OracleBench, retriever: Any, ranker: Any, cfg: Any, budgets: list[int], seed: int
) -> dict[str, Any]:
    """Per budget and policy: mean NDCG@10 over the viewers the budget cuts, and the share of the oracle's
    ten best friends' posts the policy kept. ``cfg``: the serve config (value weights, re-ranking)."""
    from models.tasks import value_score
    from serve.features import assemble
    from serve.index import PostIndex, prerank
    from serve.retrieval import Candidates

    rng = np.random.default_rng(seed)
    world, store, t = bench.world, bench.store, bench.t
    rows: dict[int, dict[str, list[float]]] = {b: {} for b in budgets}
    full: list[float] = []
    pool_sizes = []
    for v in bench.viewers:
        friends = np.flatnonzero(v.in_net)
        if len(friends) < 10:
            continue
        pool_sizes.append(len(friends))
        viewer_id = int(world.user_ids[v.index])
        post_ids = world.post_ids[v.posts[friends]]
        truth = v.truth[friends]
        probs = ranker.predict(assemble(store, viewer_id, post_ids, t))
        value = np.asarray(value_score(probs, cfg.feed.value_weights))
        whole = ndcg_at(truth, final_feed(store, viewer_id, post_ids, value, t, cfg))
        full.append(whole)
        pool = Candidates(post_ids, np.zeros(len(post_ids), bool))
        index = PostIndex(retriever, "bench", 7 * 86400)  # prerank reads only its retriever
        position = {int(p): i for i, p in enumerate(post_ids.tolist())}
        created = world.post_created[v.posts[friends]]
        best10 = set(top(truth, 10).tolist())
        for b in budgets:
            if len(friends) <= b:
                continue
            rows[b].setdefault("no budget", []).append(whole)
            served = prerank(store, viewer_id, t, index, pool, b).post_ids
            kept = {
                "two-tower score": np.array([position[int(p)] for p in served.tolist()]),
                "newest first": top(created, b),
                "random": rng.permutation(len(friends))[:b],
            }
            for name, idx in kept.items():
                feed = idx[final_feed(store, viewer_id, post_ids[idx], value[idx], t, cfg)]
                rows[b].setdefault(name, []).append(ndcg_at(truth, feed))
                rows[b].setdefault(f"{name}/kept", []).append(len(best10 & set(idx.tolist())) / 10)
    return {"budgets": rows, "full": full, "pool": pool_sizes}


def main(
    data_dir: Annotated[Path, typer.Option(help="A demo-world data directory after make demo.")],
    retriever: Annotated[str, typer.Option(help="Retriever: model URI or model.pt.")] = (
        "models:/feed-retriever@champion"
    ),
    ranker: Annotated[str, typer.Option(help="Ranker: model URI.")] = "models:/feed-ranker@champion",
    budgets: Annotated[str, typer.Option(help="Candidate budgets B (comma-separated).")] = "10,25,50,100,200",
    viewers: Annotated[int, typer.Option(help="Viewers sampled.")] = 500,
    seed: int = 0,
    out: Annotated[Path | None, typer.Option(help="Markdown file to write the section into.")] = None,
) -> None:
    from pipelines.common import tracking
    from pipelines.common.tracking import load_ranker_version
    from serve.config import load_serve_yaml

    t0 = time.time()
    cfg = load_serve_yaml(REPO / "configs" / "serve.yaml")[1]
    bench = OracleBench(data_dir, viewers, 10, seed)
    with tracking.pointed_at(tracking.tracking_uri(data_dir)):
        two_tower, model = load_retriever(retriever), load_ranker_version(ranker)
    bs = [int(b) for b in budgets.split(",")]
    res = measure(bench, two_tower, model, cfg, bs, seed)
    pool = np.array(res["pool"])
    lines = [
        "| budget B | viewers cut | " + " | ".join(f"NDCG@10, {p}" for p in POLICIES) + " | "
        "NDCG@10, whole pool | two-tower − newest [95% CI] | oracle's 10 best kept: two-tower / newest / "
        "random |",
        "|---:|---:|" + "---:|" * (len(POLICIES) + 1) + "---|---|",
    ]
    for b in bs:
        r = res["budgets"][b]
        if not r:
            continue
        n = len(r[POLICIES[0]])
        cells = " | ".join(f"{np.mean(r[p]):.3f}" for p in (*POLICIES, "no budget"))
        kept = " / ".join(f"{np.mean(r[f'{p}/kept']):.2f}" for p in POLICIES)
        lo, hi = paired_ci(np.array(r[POLICIES[0]]) - np.array(r[POLICIES[1]]), seed)
        diff = f"{np.mean(r[POLICIES[0]]) - np.mean(r[POLICIES[1]]):+.3f} [{lo:+.3f}, {hi:+.3f}]"
        lines.append(f"| {b} | {n} | {cells} | {diff} | {kept} |")
    section = "\n".join(
        [
            "## Pre-ranking (issue 17)",
            "",
            f"`python -m bench.prerank --data-dir {data_dir} --budgets {budgets}`, {dt.date.today()}, "
            f"{machine()}; {time.time() - t0:.0f} s. Retriever `{retriever}`, ranker `{ranker}`. "
            f"{len(pool)} viewers of the demo world at the snapshot time with 10 or more friends' posts they "
            f"may see (median {np.median(pool):.0f}, p90 {np.percentile(pool, 90):.0f}, max {pool.max()}). "
            "At each budget B a policy keeps B of those posts, the ranker scores them, and the feed is the "
            "first 10 after the value model and re-ranking (configs/serve.yaml); NDCG@10 with the "
            "oracle's P(click, like, comment or share) as the gain, "
            "normalized by the ideal ten of the whole pool. Only viewers with more than B friends' posts "
            "count at B; 'whole pool' is the ranker over all of their friends' posts (no budget). Over "
            f"all the viewers, the whole pool gives NDCG@10 {np.mean(res['full']):.3f}.",
            "",
            *lines,
            "",
        ]
    )
    publish(section, out)


if __name__ == "__main__":
    typer.run(main)

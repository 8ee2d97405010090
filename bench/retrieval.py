"""Retrieval against the synthetic world's oracle: ``python -m bench.retrieval --data-dir D``.

For viewers of the demo world at the online snapshot's time ``T`` (the end of the logs), every post a
viewer may see at ``T`` (the last 7 days, not deleted, public or a friend's friends-only post, nobody
blocked either way, not their own) is scored by the hidden engagement model
(:func:`pipelines.synth.world.engagement_truth`: P(click, like, comment or share) at the top slot, with
the friendship's tie or a stranger's). The oracle's top ``N`` posts are what a perfect retriever returns.
Recall@K of a method = the share of those ``N`` posts among its K candidates:

- ``retriever``: the two-tower score (viewer vector · post vector / T + the post's prior, exact) over all
  the posts the viewer may see; ``retriever, out-of-network only``: over strangers' posts only, against the
  oracle's top among them (what the ANN index is for);
- ``friends newest``: today's in-network retrieval (friends' posts, newest first, no model);
- ``as served``: the feed's candidates (every friend's post and the index's top ``out_of_network``
  strangers' posts by the whole score), pre-ranked to K;
- ``friends newest + retriever OON``: half the budget friends' newest, half the retriever's strangers;
- ``popular``: all-time engagement counters; ``random``: the floor.

Then the ANN index: the post vectors at 10x (each post's vector and 9 jittered copies), FAISS HNSW and
IVF beside exact search: recall of the exact top-K and single-query latency (p50/p99, 1 thread).

Without ``--retriever`` it trains ``--seeds`` retrievers per loss (``--losses pointwise,softmax``) on the
data directory's features, as the pipeline does, and reports mean ± sd; with it, it measures that one
(a model URI or a checkpoint's ``model.pt``). Writes the "Retrieval (issue 17)" section of ``--out``.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from bench.report import machine, publish
from pipelines.common.runtime import REPO

KS = (50, 200, 1000)


def eligible(world: Any, v: int, t: float, window_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Post indices viewer ``v`` may see at ``t`` and each one's tie (friend's, or ``STRANGER_TIE``)."""
    from pipelines.synth.world import STRANGER_TIE

    n = len(world.user_ids)
    lo, hi = np.searchsorted(world.post_created_sorted, [t - window_s, t])
    posts = world.post_by_time[lo:hi]
    author = world.post_author[posts]
    f_lo, f_hi = world.nbr_ptr[v], world.nbr_ptr[v + 1]
    friends, ties, since = world.nbr_idx[f_lo:f_hi], world.nbr_tie[f_lo:f_hi], world.nbr_since[f_lo:f_hi]
    friends, ties = friends[since < t], ties[since < t]
    is_friend = np.isin(author, friends)
    vis = world.post_visibility[posts]
    ok = (world.post_deleted[posts] > t) & (author != v) & ((vis == 0) | ((vis == 1) & is_friend))
    keys = world.block_keys
    if len(keys):
        for pair in (v * n + author, author * n + v):
            at = np.minimum(np.searchsorted(keys, pair), len(keys) - 1)
            ok &= keys[at] != pair
    posts, author, is_friend = posts[ok], author[ok], is_friend[ok]
    tie_of = dict(zip(friends.tolist(), ties.tolist(), strict=True))
    tie = np.array([tie_of[a] if f else STRANGER_TIE for a, f in zip(author, is_friend, strict=True)])
    return posts, tie


def oracle_scores(world: Any, v: int, posts: np.ndarray, tie: np.ndarray, t: float) -> np.ndarray:
    """P(click, like, comment or share) at the top slot, by the hidden model."""
    from pipelines.synth.world import engagement_truth

    s = {
        "viewer": np.full(len(posts), v),
        "post": posts,
        "tie": tie,
        "t": np.full(len(posts), t),
        "pos": np.zeros(len(posts), np.int64),
    }
    p = engagement_truth(world, s)
    return 1 - (1 - p["p_click"]) * (1 - p["p_like"]) * (1 - p["p_comment"]) * (1 - p["p_share"])


def top(scores: np.ndarray, k: int) -> np.ndarray:
    k = min(k, len(scores))
    part = np.argpartition(-scores, k - 1)[:k] if k else np.zeros(0, np.int64)
    return part[np.argsort(-scores[part], kind="stable")]


@dataclass
class Viewer:
    """One measured viewer: the posts they may see at ``T`` and what the oracle says of them."""

    index: int  # world user index
    posts: np.ndarray  # (E,) world post indices
    rows: np.ndarray  # (E,) rows of the recent-post columns
    best: set[int]  # positions (in ``posts``) of the oracle's top N
    best_oon: set[int]  # the oracle's top N among out-of-network posts
    in_net: np.ndarray  # (E,) bool: a friend's post
    truth: np.ndarray  # (E,) the oracle's P(click, like, comment or share) at the top slot
    columns: dict[str, Any]  # the viewer's feature columns at T (one row)


class OracleBench:
    """The world, the online store at its snapshot time and ``viewers`` sampled viewers with the oracle's
    top ``n_oracle`` posts each, prepared once for every retriever measured."""

    def __init__(self, data_dir: Path, viewers: int, n_oracle: int, seed: int) -> None:
        import json

        from pipelines.common.config import DataConfig
        from pipelines.synth.world import STRANGER_TIE, build_world
        from serve.features import assemble
        from serve.store import EmbeddedStore

        summary = json.loads((data_dir / "synth_summary.json").read_text())
        cfg = DataConfig.model_validate({"synth": summary["config"]}).synth
        world, _ = build_world(cfg)
        store = EmbeddedStore.load(data_dir)
        t, window = store.as_of_s, cfg.candidate_days * 86400
        self.world, self.store, self.t = world, store, t
        lo, hi = np.searchsorted(world.post_created_sorted, [t - window, t])
        self.recent = world.post_by_time[lo:hi]
        # Every recent post's columns once (post, prior and popularity columns read no viewer column).
        self.cols = assemble(store, int(world.user_ids[0]), world.post_ids[self.recent], t)
        counters = [
            c for c in ("p_click_all", "p_like_all", "p_comment_all", "p_share_all") if c in self.cols
        ]
        self.popularity = np.sum([np.asarray(self.cols[c], np.float64) for c in counters], axis=0)
        row_of = {int(p): i for i, p in enumerate(self.recent)}
        self.rng = np.random.default_rng(seed)
        pool = np.flatnonzero((np.diff(world.nbr_ptr) > 0) & ~world.cold)
        self.n_oracle = n_oracle
        self.viewers: list[Viewer] = []
        self.created = world.post_created
        for v in self.rng.choice(pool, min(viewers, len(pool)), replace=False):
            posts, tie = eligible(world, int(v), t, window)
            if len(posts) < n_oracle:
                continue
            truth = oracle_scores(world, int(v), posts, tie, t)
            in_net = tie != STRANGER_TIE
            oon = np.flatnonzero(~in_net)
            self.viewers.append(
                Viewer(
                    index=int(v),
                    posts=posts,
                    rows=np.array([row_of[int(p)] for p in posts]),
                    best=set(top(truth, n_oracle).tolist()),
                    best_oon=set(oon[top(truth[oon], n_oracle)].tolist()),
                    in_net=in_net,
                    truth=truth,
                    columns=assemble(store, int(world.user_ids[v]), world.post_ids[posts[:1]], t),
                )
            )

    @property
    def oracle_oon_share(self) -> float:
        return float(np.mean([np.mean(~v.in_net[sorted(v.best)]) for v in self.viewers]))

    def _hit(self, best: set[int], idx: np.ndarray, n: int) -> float:
        return len(best & set(idx.tolist())) / max(n, 1)

    def baselines(self) -> dict[str, dict[int, float]]:
        """Recall@K of the methods without a model."""
        hits: dict[str, dict[int, list[float]]] = {m: {k: [] for k in KS} for m in BASELINES}
        for v in self.viewers:
            created = self.created[v.posts]
            friends = np.flatnonzero(v.in_net)
            for k in KS:
                ranked = {
                    "friends newest": friends[top(created[friends], k)],
                    "popular": top(self.popularity[v.rows] + self.rng.random(len(v.rows)) * 1e-3, k),
                    "random": self.rng.permutation(len(v.posts))[:k],
                }
                for m, idx in ranked.items():
                    hits[m][k].append(self._hit(v.best, idx, self.n_oracle))
        return {m: {k: float(np.mean(x)) for k, x in by_k.items()} for m, by_k in hits.items()}

    def recall(self, retriever: Any) -> dict[str, dict[int, float]]:
        """Recall@K of ``retriever`` alone, mixed with friends' newest, and on out-of-network posts only."""
        post_vec = retriever.embed_posts({c: self.cols[c] for c in retriever.post_columns})  # (P, d)
        prior = retriever.prior(
            {c: self.cols[c] for c in retriever.prior_columns}, len(self.recent)
        )  # (P,) state at T
        hits: dict[str, dict[int, list[float]]] = {m: {k: [] for k in KS} for m in MODEL_METHODS}
        for v in self.viewers:
            u = retriever.embed_viewers({c: v.columns[c] for c in retriever.viewer_columns})[0]
            score = retriever.scores(u, post_vec[v.rows], prior[v.rows])
            friends, oon = np.flatnonzero(v.in_net), np.flatnonzero(~v.in_net)
            created = self.created[v.posts]
            # The feed's path: every friend's post and the index's top out_of_network strangers' posts by
            # the whole score (the index holds [p / T, prior]), pre-ranked to K.
            served = np.concatenate([friends, oon[top(score[oon], SERVED_OON)]])
            for k in KS:
                half = friends[top(created[friends], k // 2)]
                mixed = np.concatenate([half, oon[top(score[oon], k - len(half))]])
                hits["retriever"][k].append(self._hit(v.best, top(score, k), self.n_oracle))
                hits["friends newest + retriever OON"][k].append(self._hit(v.best, mixed, self.n_oracle))
                oon_top = oon[top(score[oon], k)]
                hits["retriever, out-of-network only"][k].append(
                    self._hit(v.best_oon, oon_top, len(v.best_oon))
                )
                hits["as served"][k].append(self._hit(v.best, served[top(score[served], k)], self.n_oracle))
        if not hasattr(self, "post_vectors"):  # the ANN table uses the first retriever measured
            self.post_vectors, self.post_prior, self.temperature = post_vec, prior, retriever.temperature
        return {m: {k: float(np.mean(x)) for k, x in by_k.items()} for m, by_k in hits.items()}


BASELINES = ("friends newest", "popular", "random")
MODEL_METHODS = ("retriever", "as served", "friends newest + retriever OON", "retriever, out-of-network only")
#: configs/serve.yaml's retrieval.out_of_network (the "as served" method).
SERVED_OON = 200


def ann_table(
    vectors: np.ndarray, prior: np.ndarray, temperature: float, scale: int, queries: int, seed: int
) -> list[dict[str, Any]]:
    """FAISS indexes as the feed builds them (``[p / T, prior]`` per post, queried with ``[u, 1]``) over the
    posts grown ``scale``-fold (jittered copies): recall of the exact top-K and single-query latency, 1
    thread. The queries are jittered post vectors standing for viewers."""
    import faiss

    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(seed)
    d = vectors.shape[1]
    copies = [vectors] + [
        vectors + rng.normal(0, 0.05, vectors.shape).astype(np.float32) for _ in range(scale - 1)
    ]
    unit = np.concatenate(copies).astype(np.float32)
    faiss.normalize_L2(unit)
    priors = np.concatenate([prior] + [prior + rng.normal(0, 0.1, len(prior)) for _ in range(scale - 1)])
    corpus = np.ascontiguousarray(np.concatenate([unit / temperature, priors[:, None]], axis=1), np.float32)
    u = unit[rng.choice(len(unit), queries, replace=False)] + rng.normal(0, 0.1, (queries, d)).astype(
        np.float32
    )
    faiss.normalize_L2(u)
    q = np.ascontiguousarray(np.concatenate([u, np.ones((queries, 1), np.float32)], axis=1))
    d += 1
    k = 200
    exact = faiss.IndexFlatIP(d)
    exact.add(corpus)
    _, truth = exact.search(q, k)
    rows = []

    def measure(name: str, index: Any, build_s: float) -> None:
        lat = []
        found = []
        for i in range(queries):
            t0 = time.perf_counter()
            _, ids = index.search(q[i : i + 1], k)
            lat.append(time.perf_counter() - t0)
            found.append(len(set(ids[0].tolist()) & set(truth[i].tolist())) / k)
        rows.append(
            {
                "index": name,
                "build_s": build_s,
                "recall": float(np.mean(found)),
                "p50_ms": 1000 * float(np.percentile(lat, 50)),
                "p99_ms": 1000 * float(np.percentile(lat, 99)),
            }
        )

    measure("exact (IndexFlatIP)", exact, 0.0)
    for m, ef in ((32, 64), (32, 128), (32, 256)):
        t0 = time.perf_counter()
        hnsw = faiss.IndexHNSWFlat(d, m, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = 80
        hnsw.add(corpus)
        built = time.perf_counter() - t0
        hnsw.hnsw.efSearch = ef
        measure(f"HNSW M={m} efSearch={ef}", hnsw, built)
    nlist = int(4 * np.sqrt(len(corpus)))
    t0 = time.perf_counter()
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.train(corpus)
    ivf.add(corpus)
    built = time.perf_counter() - t0
    for nprobe in (8, 32):
        ivf.nprobe = nprobe
        measure(f"IVF nlist={nlist} nprobe={nprobe}", ivf, built)
    for r in rows:
        r["corpus"] = len(corpus)
    return rows


def load_retriever(spec: str) -> Any:
    from models.retriever import ServableRetriever
    from pipelines.common import tracking

    if spec.startswith("models:/"):
        return tracking.load_retriever_version(spec)
    return ServableRetriever.load(Path(spec))


def train_retriever(data_dir: Path, loss: str, seed: int) -> Any:
    """configs/retriever.yaml with ``model.loss`` and ``optim.seed`` set, trained on ``data_dir`` (Ray Train +
    TorchRec, as the stage does; not registered); its best checkpoint's servable retriever."""
    from models.retriever import ServableRetriever
    from pipelines.common.config import RetrieverConfig, load_config
    from pipelines.common.tracking import MODEL_FILE
    from pipelines.retrieval.setup import RetrieverTraining, build_setup
    from pipelines.train.trainer import best_checkpoint, fit, run_name

    overrides = {"model.loss": loss, "optim.seed": seed, "experiment": f"bench-retriever-{loss}-{seed}"}
    cfg = load_config(REPO / "configs" / "retriever.yaml", RetrieverConfig, overrides)
    setup = build_setup(data_dir, cfg)
    result = fit(
        RetrieverTraining(setup),
        setup.columns,
        cfg.optim,
        cfg.distributed,
        data_dir,
        run_name(cfg.experiment, data_dir, False),
    )
    return ServableRetriever.load(best_checkpoint(result) / MODEL_FILE)


def _cell(values: list[float]) -> str:
    return f"{values[0]:.3f}" if len(values) == 1 else f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"


def main(
    data_dir: Annotated[
        Path, typer.Option(help="A demo-world data directory after make demo (features/, online/).")
    ],
    retriever: Annotated[
        str | None,
        typer.Option(help="Model URI (models:/feed-retriever@challenger) or a model.pt; default: train."),
    ] = None,
    seeds: Annotated[int, typer.Option(help="Without --retriever: retrievers trained per loss.")] = 3,
    losses: Annotated[
        str, typer.Option(help="Without --retriever: the losses compared.")
    ] = "pointwise,softmax",
    viewers: Annotated[int, typer.Option(help="Viewers measured.")] = 500,
    oracle_top: Annotated[int, typer.Option(help="N: the oracle's top posts a retriever should find.")] = 50,
    scale: Annotated[int, typer.Option(help="ANN corpus: the posts' vectors times this.")] = 10,
    seed: int = 0,
    out: Annotated[Path | None, typer.Option(help="Markdown file to write the section into.")] = None,
) -> None:
    from pipelines.common import tracking
    from pipelines.common.runtime import ray_session

    t0 = time.time()
    bench = OracleBench(data_dir, viewers, oracle_top, seed)
    runs: dict[str, list[dict[str, dict[int, float]]]] = {}
    if retriever is not None:
        with tracking.pointed_at(tracking.tracking_uri(data_dir)):
            runs[retriever] = [bench.recall(load_retriever(retriever))]
    else:
        with ray_session():
            for loss in losses.split(","):
                runs[loss] = [bench.recall(train_retriever(data_dir, loss, s)) for s in range(seeds)]
    base = bench.baselines()
    head = "| method | " + " | ".join(f"recall@{k}" for k in KS) + " |"
    lines = [head, "|---|" + "---:|" * len(KS)]
    for name, results in runs.items():
        for m in MODEL_METHODS:
            label = m if retriever is not None else f"{m} ({name} loss)"
            lines.append(f"| {label} | " + " | ".join(_cell([r[m][k] for r in results]) for k in KS) + " |")
    for m, by_k in base.items():
        lines.append(f"| {m} | " + " | ".join(f"{by_k[k]:.3f}" for k in KS) + " |")
    ann = ann_table(bench.post_vectors, bench.post_prior, bench.temperature, scale, 1000, seed)
    ann_lines = [
        "| index | vectors | build s | recall of exact top-200 | p50 ms | p99 ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    ann_lines += [
        f"| {r['index']} | {r['corpus']:,} | {r['build_s']:.1f} | {r['recall']:.3f} | "
        f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} |"
        for r in ann
    ]
    what = f"--retriever {retriever}" if retriever else f"--seeds {seeds} --losses {losses}"
    section = "\n".join(
        [
            "## Retrieval (issue 17)",
            "",
            f"`python -m bench.retrieval --data-dir {data_dir} {what}`, {dt.date.today()}, {machine()}; "
            f"{time.time() - t0:.0f} s. {len(bench.viewers)} viewers of the demo world at the snapshot time; "
            f"the oracle's top {oracle_top} by hidden P(click, like, comment or share) among the posts each "
            f"may see, {100 * bench.oracle_oon_share:.0f}% of them out-of-network. Retrievers: mean ± sd "
            "over seeds (optim.seed), each trained by the pipeline's Ray Train + TorchRec loop.",
            "",
            *lines,
            "",
            f"ANN as the feed builds it (``[p / T, prior]`` per post, ``[u, 1]`` per query; the first "
            f"retriever measured) at {scale}x the posts (1,000 queries, 1 thread, k = 200):",
            "",
            *ann_lines,
            "",
        ]
    )
    publish(section, out)


if __name__ == "__main__":
    typer.run(main)

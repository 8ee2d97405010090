"""The main job in one process on embedded defaults: ``python -m pipelines.demo`` (``make demo-local``;
``make demo`` runs the same stages as Ray jobs on a local cluster, :mod:`cluster.demo`).

On one local Ray instance: synth → ingest → features → train (Ray Train + TorchRec, logged to the embedded
MLflow store ``D/mlflow.db``) → evaluate against the baselines → register a ``feed-ranker`` version
(alias ``challenger``) → the two-tower retriever the same way (``feed-retriever``, its recall) → promote
each to ``champion`` if it beats the current one → deploy the feed (``configs/serve.yaml``: friends' posts
and the retriever's suggestions) on Ray Serve and fetch feeds for sample users over HTTP with minted tokens.
Prints what each stage produced, the offline quality table and a readable feed.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markdown import Markdown
from rich.table import Table

from models.tasks import BINARY_TASKS
from pipelines.common.config import DataConfig, RetrieverConfig, TrainConfig, dump_config, load_config

log = logging.getLogger(__name__)


def _rate(n: float, d: float) -> str:
    return f"{100 * n / d:.2f}%" if d else "-"


def report(
    console: Console,
    synth_rows: dict[str, int],
    ingest: dict[str, Any],
    manifest: dict[str, Any],
    seconds: dict[str, float],
    data_dir: Path,
) -> None:
    """Readable summary of the data stages."""
    t = Table(title="Ingest: raw → clean + quarantine", title_justify="left")
    for col in ("table", "generated", "read", "accepted", "quarantined", "duplicates"):
        t.add_column(col, justify="right" if col != "table" else "left")
    for name, c in ingest["tables"].items():
        t.add_row(
            name,
            f"{synth_rows.get(name, 0):,}",
            f"{c['read']:,}",
            f"{c['accepted']:,}",
            f"{c['quarantined']:,}",
            f"{c['duplicates']:,}",
        )
    console.print(t)
    s = Table(
        title="Features: one example per impression (rates weighted by sample_weight)", title_justify="left"
    )
    for col in ("split", "days", "rows", "impressions", *BINARY_TASKS):
        s.add_column(col, justify="right" if col != "split" else "left")
    for split in ("train", "valid", "test"):
        r = manifest["splits"][split]
        pos = r["positives"]
        s.add_row(
            split,
            f"{r['days'][0]}..{r['days'][-1]}",
            f"{r['rows']:,}",
            f"{r['impressions']:,}",
            *(_rate(pos[k], r["weight"]) for k in BINARY_TASKS),
        )
    console.print(s)
    cols = manifest["columns"]
    console.print(
        f"features/: {len(cols['dense'])} dense, "
        f"{len(cols['sparse_ids']) + len(cols['sparse_vocab']) + len(cols['sparse_lists'])} sparse, "
        f"vectors {cols['vectors']}; online/: {manifest['online']}"
    )
    timing = ", ".join(f"{k} {v:.0f}s" for k, v in seconds.items())
    console.print(f"[bold]Data ready in {data_dir}[/bold] ({timing}).")


def sample_viewers(data_dir: Path, n: int) -> list[int]:
    """Users with the most candidate posts right now (what a demo should show)."""
    import numpy as np

    from serve.retrieval import RetrievalConfig, retrieve
    from serve.store import EmbeddedStore

    store = EmbeddedStore.load(data_dir)
    ids = store.user_ids()[:: max(1, len(store.user_ids()) // 400)]
    sizes = [len(retrieve(store, u, store.as_of_s, RetrievalConfig()).post_ids) for u in ids]
    order = np.argsort(sizes)[::-1]
    return [int(ids[i]) for i in order[:n]]


def fetch_feed(base: str, auth: Any, viewer: int, limit: int = 10) -> Any:
    """``GET /feed/{viewer}`` with a token minted by ``auth`` (a :class:`serve.auth.TokenAuth`); raises on
    an error status."""
    import requests

    r = requests.get(
        f"{base}/feed/{viewer}",
        params={"limit": limit},
        headers={"Authorization": f"Bearer {auth.mint(viewer)}"},
        timeout=30,
    )
    r.raise_for_status()
    return r


def feed_table(body: dict[str, Any]) -> Table:
    t = Table(
        title=f"GET /feed/{body['user_id']}: model {body['model']['name']} v{body['model']['version']} "
        f"({body['model']['arm']}){', FALLBACK ' + str(body['fallback_reason']) if body['fallback'] else ''}",
        title_justify="left",
    )
    for col in ("#", "post", "author", "posted", "kind", "text", "P(click)", "P(like)", "score", "why"):
        t.add_column(col, justify="right" if col in ("#", "P(click)", "P(like)", "score") else "left")
    for it in body["items"]:
        p = it["probabilities"] or {}
        t.add_row(
            str(it["position"]),
            str(it["post_id"]),
            str(it["author_id"]),
            it["created_at"][5:16].replace("T", " "),
            it["modality"],
            it["text"][:48],
            f"{p['click']:.3f}" if p else "–",
            f"{p['like']:.3f}" if p else "–",
            f"{it['score']:.3f}",
            it["why"],
        )
    return t


def serve_feed(console: Console, data_dir: Path, serve_config: Path, keep_serving: bool) -> None:
    """Deploy the feed app on the current Ray instance and print real feeds fetched over HTTP."""
    import os
    import secrets

    from ray import serve

    from serve.app import compose
    from serve.auth import TokenAuth
    from serve.config import load_serve_yaml

    doc, cfg = load_serve_yaml(serve_config)
    secret = os.environ.get(cfg.auth.secret_env) or secrets.token_urlsafe(32)
    args = cfg.model_dump(mode="json") | {"data_dir": str(data_dir)}
    args["auth"] = {**args["auth"], "secret": secret, "dev_tokens": True}  # the page's demo sign-in
    http = doc.get("http_options", {})
    host, port = http.get("host", "127.0.0.1"), int(http.get("port", 8000))
    serve.start(http_options={"host": host, "port": port})
    app = doc["applications"][0]
    serve.run(
        compose(args, app.get("deployments")), name=app["name"], route_prefix=app.get("route_prefix", "/")
    )
    base = f"http://{host}:{port}"
    auth = TokenAuth(secret, cfg.auth.issuer, cfg.auth.leeway_s)
    viewers = sample_viewers(data_dir, 2)
    for viewer in viewers:
        r = fetch_feed(base, auth, viewer)
        console.print(feed_table(r.json()))
        console.print(f"Server-Timing: {r.headers.get('server-timing')}")
    token = auth.mint(viewers[0], ttl_s=3600)
    console.print(
        f"Feed: {base}/feed/{{user_id}} (OpenAPI docs: {base}/docs). Try:\n"
        f"  curl -H 'Authorization: Bearer {token}' '{base}/feed/{viewers[0]}?limit=5'\n"
        f"The page: {base}/  (sign in as a demo user, e.g. {viewers[0]})",
        soft_wrap=True,
    )
    if keep_serving:
        console.print("Serving until Ctrl-C.")
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
    serve.shutdown()


app = typer.Typer(add_completion=False, help=__doc__.split("\n")[0])


@app.command()
def main(
    data_dir: Annotated[
        Path, typer.Option(help="Where the demo writes raw/, clean/, features/, online/.")
    ] = Path("data/demo"),
    config: Annotated[Path | None, typer.Option(help="YAML config (configs/data.yaml).")] = Path(
        "configs/data.yaml"
    ),
    train_config: Annotated[Path | None, typer.Option(help="YAML config (configs/train.yaml).")] = Path(
        "configs/train.yaml"
    ),
    retriever_config: Annotated[
        Path | None, typer.Option(help="YAML config (configs/retriever.yaml).")
    ] = Path("configs/retriever.yaml"),
    serve_config: Annotated[Path, typer.Option(help="Ray Serve config (configs/serve.yaml).")] = Path(
        "configs/serve.yaml"
    ),
    keep_serving: Annotated[bool, typer.Option(help="Keep the feed up until Ctrl-C.")] = False,
) -> None:
    """Run the data stages, train, evaluate, register and promote; print what each produced."""
    from pipelines.common.cli import exit_on_error
    from pipelines.common.runtime import ray_session, setup_logging
    from pipelines.common.tracking import tracking_uri
    from pipelines.features.stage import run as features
    from pipelines.ingest.stage import run as ingest
    from pipelines.promote.stage import run as promote
    from pipelines.promote.stage import run_retriever as promote_retriever
    from pipelines.retrieval.stage import run as train_retriever
    from pipelines.synth.stage import run as synth
    from pipelines.train.stage import run as train_and_publish
    from serve.runtime import ray_serve_env

    setup_logging(logging.WARNING)
    console = Console(width=None if sys.stdout.isatty() else 120)
    with exit_on_error():
        cfg = load_config(config, DataConfig)
        train_cfg = load_config(train_config, TrainConfig)
        retriever_cfg = load_config(retriever_config, RetrieverConfig)
        console.rule("resolved config")
        console.print(dump_config(cfg), end="")
        console.print(dump_config(train_cfg), end="")
        console.print(dump_config(retriever_cfg), end="")
        seconds: dict[str, float] = {}

        @contextlib.contextmanager
        def stage(name: str) -> Iterator[None]:
            console.rule(name)
            t0 = time.perf_counter()
            yield
            seconds[name] = time.perf_counter() - t0

        with ray_session():
            with stage("synth"):
                synth_rows = synth(cfg.synth, data_dir)
            with stage("ingest"):
                ingest_summary = ingest(cfg.ingest, data_dir)
            with stage("features"):
                manifest = features(cfg.features, data_dir)
            report(console, synth_rows, ingest_summary, manifest, seconds, data_dir)
            with stage("train"):
                published = train_and_publish(train_cfg, data_dir)
            with stage("retriever"):
                retriever = train_retriever(retriever_cfg, data_dir)
        with stage("promote"):
            decision = promote(data_dir, train_cfg)
            retriever_decision = promote_retriever(data_dir, retriever_cfg)
        ev = published.evaluation
        console.rule(f"offline quality, test split: {ev.rows:,} impressions, {ev.requests:,} requests")
        console.print(Markdown(ev.table()))
        r = retriever.recall
        console.rule(f"retriever recall, test split: {r.queries:,} engaged impressions, {r.corpus:,} posts")
        console.print(Markdown(r.table()))
        with ray_session(env=ray_serve_env()), stage("serve"):
            serve_feed(console, data_dir, serve_config, keep_serving)
        for name, version, d in (
            (published.model_name, published.version, decision),
            (retriever.model_name, retriever.version, retriever_decision),
        ):
            verdict = "promoted to champion" if d.promoted else "not promoted"
            console.print(f"[bold]{name} version {version}[/bold] (alias challenger) {verdict}: {d.reason}")
        timing = ", ".join(f"{k} {v:.0f}s" for k, v in seconds.items())
        console.print(
            f"Stages: {timing}. Evaluation files and plots: {data_dir / 'evaluation'}; browse runs and the "
            f"registry with: mlflow ui --backend-store-uri {tracking_uri(data_dir)}"
        )


if __name__ == "__main__":
    app()

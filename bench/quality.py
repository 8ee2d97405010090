"""Ranker quality over seeds, against the strongest peers: ``python -m bench.quality --world demo``.

For one world (``--world demo``: configs/data.yaml; ``--world nograph``: configs/data-nograph.yaml, no social
graph and most test viewers new), on the same features:

1. the ranker trained by the real pipeline (Ray Train + TorchRec, configs/train.yaml) once per seed
   (``optim.seed`` 0..N-1), evaluated on the test split: AUC and RCE per task, NDCG@10; the peers
   (logistic regression, LightGBM) fitted with the same seed on the same train rows;
2. mean ± sd over seeds per scorer and task, and whether the ranker beats the best peer by more than 2 sd of
   the seeds' noise (the target of issue 13);
3. what each hidden factor of the synthetic world is worth: LightGBM on the feature table plus one hidden
   variable the generator knows (interest match, tie strength, post quality, the viewer's click
   propensity, modality preference), test AUC. It locates the headroom: what no logged feature reveals.

Writes the "Ranker quality: <world>" section of ``--out``. The features are built (synth → ingest →
features) into ``--data-dir`` when missing.
"""

from __future__ import annotations

import datetime as dt
import statistics
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from bench.report import machine, write_section
from models.tasks import BINARY_TASKS
from pipelines.common.runtime import REPO

WORLDS = {"demo": "configs/data.yaml", "nograph": "configs/data-nograph.yaml"}
PEERS = ("lightgbm", "logistic")


def build(data_dir: Path, config: Path) -> None:
    """synth → ingest → features, unless ``data_dir`` already has features."""
    from pipelines.common.config import DataConfig, load_config
    from pipelines.features.stage import run as features
    from pipelines.ingest.stage import run as ingest
    from pipelines.synth.stage import run as synth

    if (data_dir / "features" / "manifest.json").exists():
        return
    cfg = load_config(config, DataConfig)
    synth(cfg.synth, data_dir, progress=False)
    ingest(cfg.ingest, data_dir)
    features(cfg.features, data_dir)


def one_seed(data_dir: Path, seed: int, settings: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Train the ranker with ``optim.seed = seed`` (and ``settings``: dotted configs/train.yaml overrides)
    and evaluate it beside the peers (same seed)."""
    from pipelines.common.config import TrainConfig, load_config
    from pipelines.common.tracking import load_trained
    from pipelines.evaluate.evaluation import RANKER, evaluate
    from pipelines.train.trainer import best_checkpoint, train

    overrides = {**settings, "optim.seed": seed, "evaluate.seed": seed, "experiment": f"quality-seed{seed}"}
    cfg = load_config(REPO / "configs" / "train.yaml", TrainConfig, overrides)
    t0 = time.perf_counter()
    result = train(cfg, data_dir, name=f"quality-seed{seed}-{int(time.time())}")
    ranker = load_trained(best_checkpoint(result))
    ev = evaluate(data_dir, {RANKER: ranker}, cfg.evaluate)
    out = {name: _flat(m, ev.ndcg_k) for name, m in ev.models.items()}
    out[RANKER]["seconds"] = time.perf_counter() - t0
    return out


def _flat(m: dict[str, Any], k: int) -> dict[str, Any]:
    row: dict[str, Any] = {f"{t}/auc": m["tasks"][t]["auc"] for t in BINARY_TASKS}
    row.update({f"{t}/rce": m["tasks"][t].get("rce", float("nan")) for t in BINARY_TASKS})
    row["ndcg"] = m[f"ndcg@{k}"]
    return row


def summarize(runs: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, tuple[float, float]]]:
    """scorer → metric → (mean, sd over seeds)."""
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for scorer in runs[0]:
        out[scorer] = {}
        for key in runs[0][scorer]:
            values = [r[scorer][key] for r in runs if np.isfinite(r[scorer][key])]
            if values:
                sd = statistics.stdev(values) if len(values) > 1 else 0.0
                out[scorer][key] = (statistics.mean(values), sd)
    return out


def quality_table(summary: dict[str, dict[str, tuple[float, float]]], metric: str) -> list[str]:
    """Mean ± sd per task (``metric`` auc or rce) for the ranker, the peers and the oracle, then the
    ranker's margin over the best peer in units of the larger sd."""
    scorers = [s for s in ("ranker", *PEERS, "oracle") if s in summary]
    head = ["scorer", *BINARY_TASKS] + (["NDCG@10"] if metric == "auc" else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    fmt = ".3f" if metric == "auc" else ".2f"
    for s in scorers:
        cells = []
        for t in BINARY_TASKS:
            mean, sd = summary[s].get(f"{t}/{metric}", (float("nan"), 0.0))
            cells.append(f"{mean:{fmt}} ± {sd:{fmt}}")
        if metric == "auc":
            mean, sd = summary[s]["ndcg"]
            cells.append(f"{mean:.3f} ± {sd:.3f}")
        lines.append("| " + " | ".join([s, *cells]) + " |")
    margins = []
    for t in BINARY_TASKS:
        key = f"{t}/{metric}"
        mean, sd = summary["ranker"][key]
        best = max(PEERS, key=lambda p: summary[p].get(key, (-np.inf, 0))[0])
        peer_mean, peer_sd = summary[best][key]
        noise = max(sd, peer_sd, 1e-9)
        margins.append(f"{mean - peer_mean:+{fmt}} vs {best} ({(mean - peer_mean) / noise:+.1f} sd)")
    lines.append("| ranker − best peer | " + " | ".join(margins) + (" |  |" if metric == "auc" else " |"))
    return lines


def hidden_factors(data_dir: Path, config: Path) -> list[str]:
    """LightGBM (the peer's settings) on the feature table plus one hidden variable: test AUC per task."""
    import lightgbm as lgb
    from sklearn.metrics import roc_auc_score

    from pipelines.common.config import DataConfig, load_config
    from pipelines.evaluate.scorers import FeatureTable, GBDTBaseline
    from pipelines.features.manifest import read_columns
    from pipelines.synth.world import build_world

    world, _ = build_world(load_config(config, DataConfig).synth)
    table = FeatureTable.of(data_dir)
    splits = {s: read_columns(data_dir, s) for s in ("train", "valid", "test")}
    hidden = {s: world_factors(world, cols) for s, cols in splits.items()}
    variants = ["none", *hidden["test"], "all"]
    lines = ["| LightGBM + | " + " | ".join(f"{t} AUC" for t in BINARY_TASKS) + " |"]
    lines.append("|" + "---|" * (len(BINARY_TASKS) + 1))
    params = GBDTBaseline(table).params(seed=0)
    for variant in variants:

        def x(split: str, variant: str = variant) -> np.ndarray:
            base = table.matrix(splits[split])
            names = [] if variant == "none" else list(hidden[split]) if variant == "all" else [variant]
            extra = [hidden[split][n][:, None] for n in names]
            return np.concatenate([*extra, base], axis=1)  # codes stay last

        xtr, xva, xte = x("train"), x("valid"), x("test")
        cats = list(range(xtr.shape[1] - len(table.codes), xtr.shape[1]))
        aucs = []
        for t in BINARY_TASKS:
            clf = lgb.LGBMClassifier(**params)
            clf.fit(
                xtr,
                splits["train"][t],
                sample_weight=splits["train"]["sample_weight"],
                eval_X=(xva,),
                eval_y=(splits["valid"][t],),
                categorical_feature=cats,
                callbacks=[lgb.early_stopping(50, verbose=False)],
            )
            prob = np.asarray(clf.predict_proba(xte))[:, 1]
            aucs.append(f"{roc_auc_score(splits['test'][t], prob):.3f}")
        lines.append(f"| {variant} | " + " | ".join(aucs) + " |")
    return lines


def world_factors(world: Any, cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The hidden engagement model's inputs per row, looked up in the generator's world."""
    from pipelines.synth.world import STRANGER_TIE

    users = np.argsort(world.user_ids)
    posts = np.argsort(world.post_ids)
    v = users[np.searchsorted(world.user_ids[users], cols["viewer_id"])]
    p = posts[np.searchsorted(world.post_ids[posts], cols["post_id"])]
    a = world.post_author[p]
    match = (world.interest[v] * world.post_topics[p]).sum(1) * world.interest.shape[1]
    tie = np.full(len(v), STRANGER_TIE)
    for i in range(len(v)):  # friends' tie strength, from the CSR graph
        lo, hi = world.nbr_ptr[v[i]], world.nbr_ptr[v[i] + 1]
        hit = np.flatnonzero(world.nbr_idx[lo:hi] == a[i])
        if len(hit):
            tie[i] = world.nbr_tie[lo + hit[0]]
    return {
        "interest match": np.log1p(match),
        "tie strength": np.log(tie),
        "post quality": world.post_quality[p],
        "click propensity": world.click_prop[v],
        "modality preference": world.modality_pref[v, world.post_modality[p]],
    }


def main(
    world: Annotated[
        str, typer.Option(help="demo (configs/data.yaml) or nograph (configs/data-nograph.yaml).")
    ] = "demo",
    seeds: Annotated[int, typer.Option(help="Training seeds (optim.seed 0..N-1).")] = 5,
    data_dir: Annotated[
        Path | None, typer.Option(help="Features dir (default data/bench-quality/<world>).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Markdown file to write the section into.")] = Path(
        "bench/RESULTS.md"
    ),
    factors: Annotated[bool, typer.Option(help="Also measure what each hidden factor is worth.")] = True,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="A configs/train.yaml override, KEY=YAML (e.g. optim.id_dropout=0.1)."),
    ] = None,
    title: Annotated[
        str, typer.Option(help="Suffix of the section title (several settings, one file).")
    ] = "",
) -> None:
    """Train the ranker over seeds and compare it with the peers; write the section."""
    import yaml

    from pipelines.common.runtime import ray_session, setup_logging

    setup_logging()
    settings = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in set_ or [])}
    config = REPO / WORLDS[world]
    data_dir = data_dir or REPO / "data" / "bench-quality" / world
    t0 = time.perf_counter()
    with ray_session():
        build(data_dir, config)
        runs = [one_seed(data_dir, s, settings) for s in range(seeds)]
    summary = summarize(runs)
    lines = [
        f"## Ranker quality: {world} world{title} (issue 13)",
        "",
        f"Measured {dt.date.today().isoformat()} on {machine()}: `python -m bench.quality --world {world} "
        f"--seeds {seeds}{''.join(f' --set {kv}' for kv in set_ or [])}` ({WORLDS[world]}; "
        f"{(time.perf_counter() - t0) / 60:.0f} min). The ranker is "
        "trained by the real pipeline (Ray Train + TorchRec, configs/train.yaml) with `optim.seed` 0.."
        f"{seeds - 1}; the peers are fitted with the same seed on the same train rows. Test split, mean ± sd "
        "over seeds; the last row is the ranker's margin over the better peer, in units of the larger sd.",
        "",
        "AUC per task, NDCG@10 of each request ordered by the value model:",
        "",
        *quality_table(summary, "auc"),
        "",
        "RCE per task (relative cross-entropy against the base rate, %):",
        "",
        *quality_table(summary, "rce"),
        "",
    ]
    if factors:
        lines += [
            "What each hidden factor of the world is worth (LightGBM on the feature table plus one variable "
            "only the generator knows, seed 0):",
            "",
            *hidden_factors(data_dir, config),
            "",
        ]
    write_section(out, "\n".join(lines))
    typer.echo("\n".join(lines))


if __name__ == "__main__":
    typer.run(main)

"""Online evaluation: simulated users read their feed through the real HTTP endpoint.

``python -m pipelines.simulate --data-dir D --url http://127.0.0.1:8000 [--users 300]``

Each simulated user is a real user of the synthetic world. Their behaviour comes from the world's hidden
engagement model (:func:`pipelines.synth._truth`: interests, tie strengths, post quality, recency,
position), never from the ranker: a user opens the app (``GET /feed/{id}`` with a minted token), reads down
the page (going on to the next item with probability ``scroll``, stopping after a hide), engages and
dwells as the hidden model says, sends what they did (``POST /events``), and comes back for another
session with a probability that rises with what they got out of this one (positive actions and dwell)
and falls with hides, up to ``max_sessions``. That last rule is the simulator's assumption, stated here
because "sessions per user" depends on it.

Per arm (what the server put the user in: ``champion``, ``challenger``, or the reverse-chronological
holdout ``chronological``, see ``model.challenger_traffic`` / ``model.chronological_traffic``): impressions
viewed, CTR, like / comment / share / hide rates per viewed impression, dwell per session, sessions per
user, feed latency p50/p99. Every arm is compared with ``champion`` (or the first arm) with 95% bootstrap
confidence intervals over users. Results go to MLflow (experiment ``feed-online``) and ``--out``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from pydantic import BaseModel, ConfigDict, Field

from pipelines import schema
from pipelines.config import DataConfig, load_config

log = logging.getLogger(__name__)

METRICS = ("ctr", "like_rate", "comment_rate", "share_rate", "hide_rate", "dwell_s_per_session", "sessions")
ACTIONS = ("click", "like", "comment", "share", "hide", "report")


class SimConfig(BaseModel):
    """How the simulated users behave and how many there are."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    users: int = Field(300, ge=1, description="Simulated users (sampled among users with friends).")
    max_sessions: int = Field(5, ge=1, le=50, description="Sessions per user at most.")
    page: int = Field(20, ge=1, le=100, description="Items per feed request.")
    scroll: float = Field(0.85, gt=0, lt=1, description="Chance to read on to the next item.")
    return_base: float = Field(-0.5, description="Logit of coming back after a session with nothing in it.")
    return_per_action: float = Field(0.6, ge=0, description="… plus this per positive action (click…share).")
    return_per_dwell_s: float = Field(0.02, ge=0, description="… plus this per second of dwell.")
    return_per_hide: float = Field(1.5, ge=0, description="… minus this per hide or report.")
    concurrency: int = Field(4, ge=1, le=64, description="Users simulated at once (HTTP clients).")
    bootstrap: int = Field(1000, ge=100, description="Bootstrap resamples for the intervals.")
    seed: int = 0


@dataclass
class UserLog:
    """What one simulated user did, summed over their sessions."""

    user_id: int
    arm: str = ""
    versions: set[str] = field(default_factory=set)
    sessions: int = 0
    viewed: int = 0
    actions: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ACTIONS, 0))
    dwell_ms: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    rejected_events: int = 0


class Truth:
    """The synthetic world's hidden engagement model, looked up by public user and post ids."""

    def __init__(self, data_cfg: DataConfig) -> None:
        from pipelines.synth import build_world

        self.world, _ = build_world(data_cfg.synth)
        w = self.world
        self.user_index = {int(u): i for i, u in enumerate(w.user_ids.tolist())}
        self.post_index = {int(p): i for i, p in enumerate(w.post_ids.tolist())}

    def has_friends(self, user_ids: np.ndarray) -> np.ndarray:
        w = self.world
        idx = np.array([self.user_index[int(u)] for u in user_ids])
        return (w.nbr_ptr[idx + 1] - w.nbr_ptr[idx]) > 0

    def tie(self, viewer: int, author: int) -> float:
        w = self.world
        lo, hi = w.nbr_ptr[viewer], w.nbr_ptr[viewer + 1]
        hit = np.flatnonzero(w.nbr_idx[lo:hi] == author)
        return float(w.nbr_tie[lo + hit[0]]) if len(hit) else 0.05  # not a friend: a weak tie

    def outcomes(
        self, viewer_id: int, items: list[dict[str, Any]], now_s: float, rng: np.random.Generator
    ) -> list[dict[str, Any]]:
        """Engagement of ``viewer_id`` with each item (in page order), sampled from the hidden model."""
        from pipelines.synth import CLICK_DWELL_FACTOR, DWELL_SIGMA, _truth

        v = self.user_index[viewer_id]
        known = [it for it in items if int(it["post_id"]) in self.post_index]
        if not known:
            return []
        posts = np.array([self.post_index[int(it["post_id"])] for it in known])
        authors = [self.user_index.get(int(it["author_id"]), -1) for it in known]
        s = {
            "viewer": np.full(len(known), v),
            "post": posts,
            "tie": np.array([self.tie(v, a) if a >= 0 else 0.05 for a in authors]),
            "t": np.full(len(known), now_s),
            "pos": np.array([int(it["position"]) for it in known]),
        }
        truth = _truth(self.world, s)
        out = []
        for j, it in enumerate(known):
            clicked = bool(rng.random() < truth["p_click"][j])
            dwell = math.exp(truth["mu"][j] + DWELL_SIGMA * rng.standard_normal()) * (
                CLICK_DWELL_FACTOR if clicked else 1.0
            )
            acts = {"click": clicked} | {a: bool(rng.random() < truth[f"p_{a}"][j]) for a in ACTIONS[1:]}
            out.append({"item": it, "dwell_ms": int(min(dwell, schema.MAX_DWELL_MS)), "actions": acts})
        return out


def _session(
    http: Any, url: str, token: str, user: UserLog, truth: Truth, cfg: SimConfig, rng: np.random.Generator
) -> tuple[int, float, int]:
    """One app open; returns (positive actions, dwell seconds, hides + reports)."""
    headers = {"Authorization": f"Bearer {token}"}
    t0 = time.perf_counter()
    r = http.get(f"{url}/feed/{user.user_id}", params={"limit": cfg.page}, headers=headers, timeout=30)
    user.latencies_ms.append((time.perf_counter() - t0) * 1000)
    r.raise_for_status()
    body = r.json()
    user.sessions += 1
    user.arm = body["model"]["arm"]
    if body["model"].get("version"):
        user.versions.add(str(body["model"]["version"]))
    import datetime as dt

    now_s = dt.datetime.fromisoformat(body["served_at"]).timestamp()
    events: list[dict[str, Any]] = []
    positives, dwell_s, negatives = 0, 0.0, 0
    for o in truth.outcomes(user.user_id, body["items"], now_s, rng):
        it = o["item"]
        user.viewed += 1
        user.dwell_ms += o["dwell_ms"]
        dwell_s += o["dwell_ms"] / 1000
        about = {"post_id": it["post_id"], "impression_id": it["impression_id"]}
        events.append({"type": "view", "dwell_ms": o["dwell_ms"], **about})
        for a, fired in o["actions"].items():
            if fired:
                user.actions[a] += 1
                events.append({"type": a, **about})
                positives += a in ("click", "like", "comment", "share")
                negatives += a in ("hide", "report")
        if negatives or rng.random() > cfg.scroll:
            break  # a hide ends the session; otherwise they may just stop scrolling
    if events:
        resp = http.post(f"{url}/events", json={"events": events}, headers=headers, timeout=30)
        if resp.status_code != 202:
            user.rejected_events += len(events)
            log.warning("events of user %d rejected: %s %s", user.user_id, resp.status_code, resp.text[:300])
    return positives, dwell_s, negatives


def simulate_user(url: str, token: str, user_id: int, truth: Truth, cfg: SimConfig, seed: int) -> UserLog:
    import requests

    rng = np.random.default_rng(seed)
    user = UserLog(user_id)
    with requests.Session() as http:
        for _ in range(cfg.max_sessions):
            positives, dwell_s, negatives = _session(http, url, token, user, truth, cfg, rng)
            logit = (
                cfg.return_base
                + cfg.return_per_action * positives
                + cfg.return_per_dwell_s * dwell_s
                - cfg.return_per_hide * negatives
            )
            if rng.random() > 1 / (1 + math.exp(-logit)):
                break
    return user


# ------------------------------------------------------------------------------------------------ report
def _per_user(users: list[UserLog]) -> dict[str, np.ndarray]:
    return {
        "viewed": np.array([u.viewed for u in users], float),
        "sessions": np.array([u.sessions for u in users], float),
        "dwell_s": np.array([u.dwell_ms / 1000 for u in users], float),
        **{a: np.array([u.actions[a] for u in users], float) for a in ACTIONS},
    }


def _metrics(c: dict[str, np.ndarray], idx: np.ndarray | None = None) -> dict[str, float]:
    """Ratio metrics over a set of users (sums of numerators over sums of denominators)."""
    s = {k: float(v.sum() if idx is None else v[idx].sum()) for k, v in c.items()}
    n = len(next(iter(c.values()))) if idx is None else len(idx)
    viewed = max(s["viewed"], 1.0)
    return {
        "ctr": s["click"] / viewed,
        "like_rate": s["like"] / viewed,
        "comment_rate": s["comment"] / viewed,
        "share_rate": s["share"] / viewed,
        "hide_rate": (s["hide"] + s["report"]) / viewed,
        "dwell_s_per_session": s["dwell_s"] / max(s["sessions"], 1.0),
        "sessions": s["sessions"] / max(n, 1),
    }


def report(users: list[UserLog], cfg: SimConfig) -> dict[str, Any]:
    """Per-arm metrics, and each arm minus the control (champion) with 95% bootstrap intervals."""
    arms = sorted({u.arm for u in users})
    by_arm = {a: [u for u in users if u.arm == a] for a in arms}
    cols = {a: _per_user(us) for a, us in by_arm.items()}
    out: dict[str, Any] = {"arms": {}, "vs_control": {}}
    for a, us in by_arm.items():
        lat = np.concatenate([np.array(u.latencies_ms) for u in us]) if us else np.zeros(0)
        out["arms"][a] = {
            "users": len(us),
            "sessions_total": int(cols[a]["sessions"].sum()),
            "viewed": int(cols[a]["viewed"].sum()),
            "versions": sorted({v for u in us for v in u.versions}),
            **_metrics(cols[a]),
            "latency_p50_ms": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
            "latency_p99_ms": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
            "rejected_events": sum(u.rejected_events for u in us),
        }
    control = "champion" if "champion" in arms else arms[0]
    out["control"] = control
    rng = np.random.default_rng(cfg.seed)
    for a in arms:
        if a == control:
            continue
        na, nc = len(by_arm[a]), len(by_arm[control])
        draws: dict[str, list[float]] = {m: [] for m in METRICS}
        for _ in range(cfg.bootstrap):
            ma = _metrics(cols[a], rng.integers(0, na, na))
            mc = _metrics(cols[control], rng.integers(0, nc, nc))
            for m in METRICS:
                draws[m].append(ma[m] - mc[m])
        out["vs_control"][a] = {
            m: {
                "diff": out["arms"][a][m] - out["arms"][control][m],
                "ci95": [float(np.percentile(draws[m], 2.5)), float(np.percentile(draws[m], 97.5))],
            }
            for m in METRICS
        }
    return out


def markdown(rep: dict[str, Any]) -> str:
    arms = rep["arms"]
    lines = [
        "| arm | users | sessions/user | viewed | CTR | like | comment | share | hide | dwell s/session "
        "| p50 ms | p99 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for a, m in arms.items():
        lines.append(
            f"| {a} | {m['users']} | {m['sessions']:.2f} | {m['viewed']} | {m['ctr']:.4f} | "
            f"{m['like_rate']:.4f} | {m['comment_rate']:.4f} | {m['share_rate']:.4f} | "
            f"{m['hide_rate']:.4f} | "
            f"{m['dwell_s_per_session']:.1f} | {m['latency_p50_ms']:.1f} | {m['latency_p99_ms']:.1f} |"
        )
    for a, diffs in rep["vs_control"].items():
        lines += ["", f"{a} − {rep['control']} (95% bootstrap CI over users):", ""]
        lines += ["| metric | difference | 95% CI | excludes 0 |", "|---|---|---|---|"]
        for m, d in diffs.items():
            lo, hi = d["ci95"]
            lines.append(
                f"| {m} | {d['diff']:+.4f} | [{lo:+.4f}, {hi:+.4f}] | {'yes' if lo > 0 or hi < 0 else 'no'} |"
            )
    return "\n".join(lines) + "\n"


def simulate(url: str, data_dir: Path, data_cfg: DataConfig, secret: str, cfg: SimConfig) -> dict[str, Any]:
    """Run the simulation against the feed at ``url``; returns the report (see :func:`report`)."""
    from serve.auth import TokenAuth
    from serve.store import EmbeddedStore

    truth = Truth(data_cfg)
    known = EmbeddedStore.load(data_dir).user_ids()
    known = known[np.isin(known, truth.world.user_ids)]
    candidates = known[truth.has_friends(known)]
    rng = np.random.default_rng(cfg.seed)
    chosen = rng.choice(candidates, size=min(cfg.users, len(candidates)), replace=False)
    auth = TokenAuth(secret)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(cfg.concurrency) as pool:
        futures = [
            pool.submit(
                simulate_user,
                url,
                auth.mint(int(u), ttl_s=3600),
                int(u),
                truth,
                cfg,
                cfg.seed * 1_000_003 + int(u),
            )
            for u in chosen.tolist()
        ]
        users = [f.result() for f in futures]
    rep = report(users, cfg)
    rep["seconds"] = time.perf_counter() - t0
    rep["config"] = cfg.model_dump()
    return rep


def log_to_mlflow(rep: dict[str, Any], data_dir: Path, url: str, experiment: str = "feed-online") -> str:
    import mlflow

    from pipelines import tracking

    tracking.configure(data_dir)
    exp = tracking.experiment_id(experiment, data_dir)
    with mlflow.start_run(experiment_id=exp, run_name=f"simulate-{int(time.time())}") as run:
        mlflow.log_params({"url": url, **{f"sim.{k}": v for k, v in rep["config"].items()}})
        for a, m in rep["arms"].items():
            mlflow.log_metrics({f"{a}/{k}": float(v) for k, v in m.items() if isinstance(v, int | float)})
            mlflow.set_tag(f"{a}.versions", ",".join(m["versions"]))
        for a, diffs in rep["vs_control"].items():
            for k, d in diffs.items():
                mlflow.log_metrics(
                    {
                        f"{a}_vs_{rep['control']}/{k}": d["diff"],
                        f"{a}_vs_{rep['control']}/{k}_lo": d["ci95"][0],
                        f"{a}_vs_{rep['control']}/{k}_hi": d["ci95"][1],
                    }
                )
        mlflow.log_dict(rep, "online/report.json")
        mlflow.log_text(markdown(rep), "online/report.md")
        return str(run.info.run_id)


def main(
    data_dir: Annotated[Path, typer.Option(help="Data dir the feed serves (online/) and MLflow.")],
    url: Annotated[str, typer.Option(help="The feed's base URL.")] = "http://127.0.0.1:8000",
    config: Annotated[Path, typer.Option(help="The data config the world was generated with.")] = Path(
        "configs/data.yaml"
    ),
    users: Annotated[int, typer.Option(help="Simulated users.")] = 300,
    max_sessions: Annotated[int, typer.Option(help="Sessions per user at most.")] = 5,
    secret_env: Annotated[str, typer.Option(help="Env var with the feed's JWT secret.")] = "FEED_JWT_SECRET",
    out: Annotated[Path | None, typer.Option(help="Write report.json and report.md here.")] = None,
    mlflow_log: Annotated[bool, typer.Option("--mlflow/--no-mlflow", help="Log the run to MLflow.")] = True,
) -> None:
    """Simulated users read their feeds over HTTP; online metrics per arm with confidence intervals."""
    import os

    from pipelines.cli import exit_on_error
    from pipelines.runtime import setup_logging

    setup_logging()
    with exit_on_error():
        secret = os.environ.get(secret_env)
        if not secret:
            raise ValueError(f"{secret_env} is not set (the feed's token secret)")
        rep = simulate(
            url,
            data_dir,
            load_config(config, DataConfig),
            secret,
            SimConfig(users=users, max_sessions=max_sessions),
        )
        text = markdown(rep)
        typer.echo(text)
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / "report.json").write_text(json.dumps(rep, indent=2))
            (out / "report.md").write_text(text)
        if mlflow_log:
            typer.echo(f"MLflow run {log_to_mlflow(rep, data_dir, url)} (experiment feed-online)")


if __name__ == "__main__":
    typer.run(main)

"""Simulated users: they read their feed over HTTP and act as the synthetic world's hidden engagement
model says (clicks, likes, hides, dwell, whether to open another session)."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import Field

from pipelines.common import schema
from pipelines.common.config import DataConfig, StrictConfig
from pipelines.synth.world import STRANGER_TIE

log = logging.getLogger(__name__)


ACTIONS = ("click", "like", "comment", "share", "hide", "report")


class SimConfig(StrictConfig, frozen=True):
    """How the simulated users behave and how many there are."""

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
    split: Literal["model", "retrieval"] = Field(
        "model",
        description="Which experiment the arms are: the model arms (champion, challenger, chronological) or "
        "the retrieval arms (suggestions, friends_only: retrieval.holdout_traffic).",
    )
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
        from pipelines.synth.world import build_world

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
        return float(w.nbr_tie[lo + hit[0]]) if len(hit) else STRANGER_TIE  # as the synthetic logs do

    def outcomes(
        self, viewer_id: int, items: list[dict[str, Any]], now_s: float, rng: np.random.Generator
    ) -> list[dict[str, Any]]:
        """Engagement of ``viewer_id`` with each item (in page order), sampled from the hidden model."""
        from pipelines.synth.world import CLICK_DWELL_FACTOR, DWELL_SIGMA, engagement_truth

        v = self.user_index[viewer_id]
        known = [it for it in items if int(it["post_id"]) in self.post_index]
        if not known:
            return []
        posts = np.array([self.post_index[int(it["post_id"])] for it in known])
        authors = [self.user_index.get(int(it["author_id"]), -1) for it in known]
        s = {
            "viewer": np.full(len(known), v),
            "post": posts,
            "tie": np.array([self.tie(v, a) if a >= 0 else STRANGER_TIE for a in authors]),
            "t": np.full(len(known), now_s),
            "pos": np.array([int(it["position"]) for it in known]),
        }
        truth = engagement_truth(self.world, s)
        out = []
        for j, it in enumerate(known):
            clicked = bool(rng.random() < truth["p_click"][j])
            dwell = math.exp(truth["mu"][j] + DWELL_SIGMA * rng.standard_normal()) * (
                CLICK_DWELL_FACTOR if clicked else 1.0
            )
            acts = {"click": clicked} | {a: bool(rng.random() < truth[f"p_{a}"][j]) for a in ACTIONS[1:]}
            out.append({"item": it, "dwell_ms": int(min(dwell, schema.MAX_DWELL_MS)), "actions": acts})
        return out


def shed_retry(call: Any, attempts: int = 5) -> Any:
    """``call()`` again after the server's ``Retry-After`` (at most 5 s) while it sheds load (503), as a
    client of the feed should; the last answer otherwise. A shed request stored nothing, so the retry of
    a write is not a duplicate."""
    for _ in range(attempts - 1):
        r = call()
        if r.status_code != 503 or "Retry-After" not in r.headers:
            return r
        try:
            wait = float(r.headers["Retry-After"])
        except ValueError:
            wait = 1.0
        time.sleep(min(max(wait, 0.1), 5.0))
    return call()


def _session(
    http: Any, url: str, token: str, user: UserLog, truth: Truth, cfg: SimConfig, rng: np.random.Generator
) -> tuple[int, float, int]:
    """One app open; returns (positive actions, dwell seconds, hides + reports)."""
    headers = {"Authorization": f"Bearer {token}"}
    t0 = time.perf_counter()
    r = shed_retry(
        lambda: http.get(
            f"{url}/feed/{user.user_id}", params={"limit": cfg.page}, headers=headers, timeout=30
        )
    )
    user.latencies_ms.append((time.perf_counter() - t0) * 1000)
    r.raise_for_status()
    body = r.json()
    user.sessions += 1
    user.arm = body["model"]["arm" if cfg.split == "model" else "retrieval_arm"]
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
        resp = shed_retry(
            lambda: http.post(f"{url}/events", json={"events": events}, headers=headers, timeout=30)
        )
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

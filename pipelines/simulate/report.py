"""The online report: per-arm CTR, action rates, dwell per session and sessions per user, with bootstrap
intervals of each arm's difference to champion."""

from __future__ import annotations

from typing import Any

import numpy as np

from pipelines.simulate.users import ACTIONS, SimConfig, UserLog

#: The control arm of each experiment (the model arms', the retrieval arms').
CONTROLS = ("champion", "friends_only")
METRICS = ("ctr", "like_rate", "comment_rate", "share_rate", "hide_rate", "dwell_s_per_session", "sessions")


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
    """Per-arm metrics, and each arm minus the control (champion, or friends_only in the retrieval
    experiment) with 95% bootstrap intervals."""
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
    control = next((c for c in CONTROLS if c in arms), arms[0])
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

"""Replica-kill figures: ``python -m bench.replica_kill`` after ``make demo`` (``make bench-chaos``).

Kills one FeedIngress replica of the running demo cluster under 8-client load, five times
(:func:`cluster.chaos.against_local_cluster`), and writes the "Availability (issue 15)" section of
``--out``: failed requests, the longest gap between completed responses, and the time until Serve had every
replica running again, per kill.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated

import typer

from bench.report import machine, write_section
from cluster.chaos import against_local_cluster
from serve.runtime import haproxy_available


def main(
    out: Annotated[Path, typer.Option(help="The results file to update.")] = Path("bench/RESULTS.md"),
    state_dir: Annotated[Path, typer.Option(help="The local cluster's state dir.")] = Path(".cluster"),
    data_dir: Annotated[Path, typer.Option(help="The demo's data dir.")] = Path("data/demo"),
    rounds: Annotated[int, typer.Option()] = 5,
    clients: Annotated[int, typer.Option()] = 8,
) -> None:
    reports = against_local_cluster(state_dir, data_dir, clients=clients, rounds=rounds)
    rows = [
        f"| {i} | {r.replicas} | {r.requests} | {r.failed} | {r.longest_gap_s:.2f} | "
        f"{'—' if r.recovery_s is None else f'{r.recovery_s:.1f}'} | {r.p50_ms:.0f} | {r.p99_ms:.0f} |"
        for i, r in enumerate(reports, 1)
    ]
    section = "\n".join(
        [
            "## Availability (issue 15)",
            "",
            f"`make demo && python -m bench.replica_kill` — {dt.date.today().isoformat()}, {machine()}; "
            f"HAProxy in front: {'yes' if haproxy_available() else 'no'}.",
            "",
            "One FeedIngress replica (of the 2 configs/serve.yaml keeps) killed (`ray.kill`, as a crash) "
            f"while {clients} closed-loop clients read the feed; load kept 10 s after each kill. *Gap*: the "
            "longest time without a completed response, from 1 s before the kill. *Recovery*: kill → every "
            "replica RUNNING again.",
            "",
            "| kill | replicas | requests | failed | longest gap s | recovery s | p50 ms | p99 ms |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
            *rows,
            "",
            f"Totals: {sum(r.requests for r in reports)} requests, {sum(r.failed for r in reports)} failed "
            f"over {len(reports)} kills. What the failed ones got: "
            + ("; ".join(e for r in reports for e in r.errors) or "—")
            + ".",
            "",
        ]
    )
    write_section(out, section)
    typer.echo(section)


if __name__ == "__main__":
    typer.run(main)

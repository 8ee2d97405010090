"""``make demo`` by stage: ``python -m bench.demo_stages --out bench/RESULTS.md`` runs the main job on a
local cluster (:func:`cluster.demo.run_main_job`, what ``make demo`` runs) and writes its wall time and
peak memory per stage. The cluster stays up until ``make stop``."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from bench.report import machine, write_section
from cluster.demo import MainJob, run_main_job
from cluster.local import ClusterSpec, LocalCluster


def write_results(path: Path, job: MainJob, spec: ClusterSpec) -> None:
    lines = [
        "## make demo by stage (issue 5)",
        "",
        f"Measured {dt.date.today().isoformat()} on {machine()}: `python -m bench.demo_stages --out "
        f"bench/RESULTS.md` (what `make demo` runs, after its install), a local cluster of a head and "
        f"{spec.workers} worker node(s) ({spec.head_cpus} + {spec.workers}×{spec.worker_cpus} CPUs) and an "
        "MLflow server, each stage a `ray job submit`. Peak RSS: the largest sum, sampled every 0.5 s, of "
        "the resident memory of the cluster's processes (Ray's and MLflow's) during the stage; shared pages "
        "count once per process, so it errs high.",
        "",
        "| stage | wall s | peak RSS GiB |",
        "|---|---|---|",
    ]
    for name, s in job.seconds.items():
        rss = job.peak_rss.get(name)
        lines.append(f"| {name} | {s:.0f} | {f'{rss / 2**30:.1f}' if rss else '–'} |")
    write_section(path, "\n".join(lines) + "\n")


def main(
    out: Annotated[Path, typer.Option(help="The markdown file to write the section into.")] = Path(
        "bench/RESULTS.md"
    ),
    data_dir: Annotated[Path, typer.Option(help="Data dir shared by the cluster's nodes.")] = Path(
        "data/demo"
    ),
    workers: Annotated[int, typer.Option(help="Ray worker nodes besides the head.")] = 1,
) -> None:
    """Run the main job on a local cluster and write its stage table."""
    console = Console(width=None if sys.stdout.isatty() else 120)
    spec = ClusterSpec(workers=workers, data_dir=data_dir)
    configs = Path("configs")
    job = run_main_job(
        LocalCluster(), spec, configs / "data.yaml", configs / "train.yaml", configs / "serve.yaml", console
    )
    write_results(out, job, spec)


if __name__ == "__main__":
    typer.run(main)

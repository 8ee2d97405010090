"""Data-pipeline figures: ``python -m bench.data_pipeline`` (what ``make bench`` runs).

For each scale (demo = configs/data.yaml users, and multiples of it) it runs every stage as its own
process, exactly as a user would (``python -m pipelines.<stage>``, each starting its own local Ray), and
samples the proportional set size (PSS: shared pages split between processes, so Ray's shared object
store is not counted once per process) of the stage's whole process tree — driver, Ray workers, raylet.

Writes a Markdown table to ``--out`` with the command, the machine and the date.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import psutil
import typer

from bench.report import machine, write_section
from pipelines.common.config import DataConfig, load_config
from pipelines.common.runtime import REPO


def run_stage(args: list[str], log_path: Path) -> dict[str, float]:
    """Run one stage command; return wall seconds and peak PSS (bytes) of its process tree.

    Ray's raylet and GCS are started by the stage's driver but detach from it, so every process that
    appears during the run (and is gone after it) is counted: new pids under this session's process group
    and Ray's own daemons started after the stage began.
    """
    start = time.perf_counter()
    before = {p.pid for p in psutil.process_iter()}
    with log_path.open("w") as log:
        proc = subprocess.Popen(args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env={**os.environ})
        peak = 0
        stop = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not stop.is_set():
                total = 0
                for p in psutil.process_iter():
                    if p.pid in before:
                        continue
                    try:
                        total += p.memory_full_info().pss
                    except psutil.Error:
                        continue
                peak = max(peak, total)
                stop.wait(0.5)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = proc.wait()
        stop.set()
        sampler.join()
    if code != 0:
        raise RuntimeError(f"{' '.join(args)} failed with {code}; see {log_path}")
    return {"seconds": time.perf_counter() - start, "peak_pss": float(peak)}


def bench_scale(users: int, days: int, data_dir: Path, logs: Path) -> list[dict[str, Any]]:
    py = sys.executable
    rows: list[dict[str, Any]] = []
    stages = {
        "synth": [
            py,
            "-m",
            "pipelines.synth",
            "--data-dir",
            str(data_dir),
            "--users",
            str(users),
            "--days",
            str(days),
        ],
        "ingest": [py, "-m", "pipelines.ingest", "--data-dir", str(data_dir)],
        "features": [py, "-m", "pipelines.features", "--data-dir", str(data_dir)],
    }
    for name, args in stages.items():
        m = run_stage(args, logs / f"{users}-{name}.log")
        if name == "synth":
            s = json.loads((data_dir / "synth_summary.json").read_text())["rows"]
            n, unit = s["impressions"] + s["engagements"], "log rows"
        elif name == "ingest":
            n, unit = (
                json.loads((data_dir / "ingest_summary.json").read_text())["totals"]["read"],
                "rows read",
            )
        else:
            mf = json.loads((data_dir / "features" / "manifest.json").read_text())
            n, unit = sum(v["impressions"] for v in mf["splits"].values()), "impressions"
            m["text_encoder_s"] = mf["seconds"]["text_encoder"]
        rows.append({"users": users, "stage": name, "rows": n, "unit": unit, **m})
        print(
            f"{users:>6} users {name:<9} {m['seconds']:7.1f}s  {n / m['seconds']:9,.0f} {unit}/s  "
            f"peak PSS {m['peak_pss'] / 2**20:7,.0f} MiB",
            flush=True,
        )
    return rows


def render(rows: list[dict[str, Any]], command: str) -> str:
    lines = [
        "## Data pipeline (issue 2)",
        "",
        f"Command: `{command}` — {dt.date.today().isoformat()}, {machine()}.",
        "Each stage is its own process (`python -m pipelines.<stage>`, starting its own local Ray:",
        "start-up is included). Peak memory is the PSS of every process the stage started (driver,",
        "Ray workers, raylet, GCS), sampled every 0.5 s.",
        "",
        "| users | stage | wall s | rows | rows/s | peak PSS MiB |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        extra = f" (text encoder {r['text_encoder_s']:.0f} s)" if "text_encoder_s" in r else ""
        lines.append(
            f"| {r['users']:,} | {r['stage']}{extra} | {r['seconds']:.1f} | {r['rows']:,} {r['unit']} | "
            f"{r['rows'] / r['seconds']:,.0f} | {r['peak_pss'] / 2**20:,.0f} |"
        )
    by_scale: dict[int, dict[str, float]] = {}
    for r in rows:
        s = by_scale.setdefault(r["users"], {"seconds": 0.0, "peak": 0.0})
        s["seconds"] += r["seconds"]
        s["peak"] = max(s["peak"], r["peak_pss"])
    lines += ["", "| users | all three stages, wall s | peak PSS MiB (max over stages) |", "|---:|---:|---:|"]
    for users, s in by_scale.items():
        lines.append(f"| {users:,} | {s['seconds']:.1f} | {s['peak'] / 2**20:,.0f} |")
    if len(by_scale) > 1:
        items = list(by_scale.items())
        (u0, s0), (u1, s1) = items[0], items[-1]
        lines += [
            "",
            f"{u1 / u0:.0f}× the users: {s1['seconds'] / s0['seconds']:.1f}× the time, "
            f"{s1['peak'] / s0['peak']:.2f}× the peak memory.",
        ]
    return "\n".join(lines) + "\n"


def main(
    out: Annotated[Path, typer.Option(help="Markdown file to write the results section into.")] = Path(
        "bench/RESULTS.md"
    ),
    scales: Annotated[str, typer.Option(help="Comma-separated multiples of the demo scale.")] = "1,10",
    config: Annotated[Path, typer.Option(help="Config giving the demo scale.")] = Path("configs/data.yaml"),
    work_dir: Annotated[Path, typer.Option(help="Scratch data directory (removed after).")] = Path(
        "data/bench"
    ),
) -> None:
    """Measure rows/s and peak memory of synth, ingest and features at several scales."""
    cfg = load_config(config, DataConfig)
    logs = work_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for k in (int(x) for x in scales.split(",")):
        d = work_dir / f"x{k}"
        shutil.rmtree(d, ignore_errors=True)
        rows += bench_scale(cfg.synth.users * k, cfg.synth.days, d, logs)
        shutil.rmtree(d, ignore_errors=True)
    command = "make bench" if scales == "1,10" else f"python -m bench.data_pipeline --scales {scales}"
    section = render(rows, command)
    write_section(out, section)
    print(section)


if __name__ == "__main__":
    typer.run(main)

"""The main job on embedded defaults: ``python -m pipelines.demo`` (what ``make demo`` runs).

Today it runs the data part end to end on one local Ray instance — synth → ingest → features — and prints
what each stage produced. Later stages (training, serving) join here as they land.
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
from rich.table import Table

from pipelines.config import DataConfig, dump_config, load_config

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
    for col in ("split", "days", "rows", "impressions", "click", "like", "comment", "share", "hide", "skip"):
        s.add_column(col, justify="right" if col != "split" else "left")
    for split in ("train", "valid", "test"):
        r = manifest["splits"][split]
        pos = r["positives"]
        s.add_row(
            split,
            f"{r['days'][0]}..{r['days'][-1]}",
            f"{r['rows']:,}",
            f"{r['impressions']:,}",
            *(_rate(pos[k], r["weight"]) for k in ("click", "like", "comment", "share", "hide", "skip")),
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


app = typer.Typer(add_completion=False, help=__doc__.split("\n")[0])


@app.command()
def main(
    data_dir: Annotated[
        Path, typer.Option(help="Where the demo writes raw/, clean/, features/, online/.")
    ] = Path("data/demo"),
    config: Annotated[Path | None, typer.Option(help="YAML config (configs/data.yaml).")] = Path(
        "configs/data.yaml"
    ),
) -> None:
    """Run synth → ingest → features on a local Ray instance and print what they produced."""
    from pipelines.cli import exit_on_error
    from pipelines.features import features
    from pipelines.ingest import ingest
    from pipelines.runtime import ray_session, setup_logging
    from pipelines.synth import synth

    setup_logging(logging.WARNING)
    console = Console(width=None if sys.stdout.isatty() else 120)
    with exit_on_error():
        cfg = load_config(config, DataConfig)
        console.rule("resolved config")
        console.print(dump_config(cfg), end="")
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


if __name__ == "__main__":
    app()

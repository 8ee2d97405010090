"""Ingestion: ``python -m pipelines.ingest --data-dir D``: ``D/raw/`` → ``D/clean/`` + ``D/quarantine/``.

The command line of the stage; the work is :func:`pipelines.ingest.stage.run`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from pipelines.common.cli import exit_on_error
from pipelines.common.config import DataConfig, dump_config, load_config
from pipelines.ingest.stage import QuarantineError, run
from pipelines.ingest.tables import check_raw

log = logging.getLogger(__name__)

app = typer.Typer(add_completion=False, help=__doc__.split("\n")[0])


@app.command()
def main(
    data_dir: Annotated[
        Path, typer.Option(help="Data directory holding raw/; clean/ and quarantine/ are written.")
    ],
    config: Annotated[Path | None, typer.Option(help="YAML config (configs/data.yaml).")] = None,
    dry_run: Annotated[
        bool, typer.Option(help="Validate and print the would-be summary; write nothing.")
    ] = False,
) -> None:
    """Validate raw logs into clean/ and quarantine/ with a row-accounting summary. Exit 2 when a table's
    quarantined share is over ingest.max_quarantine_fraction (one line per table with its top reasons)."""
    from pipelines.common.runtime import ray_session, setup_logging

    setup_logging()
    with exit_on_error():
        cfg = load_config(config, DataConfig)
        log.info("resolved config:\n%s", dump_config(cfg.ingest))
        check_raw(data_dir)
        with ray_session():
            try:
                summary = run(cfg.ingest, data_dir, dry_run=dry_run)
            except QuarantineError as e:
                typer.echo(summary_table(e.summary))
                raise
        typer.echo(summary_table(summary))
        if not dry_run:
            log.info("summary in %s", data_dir / "ingest_summary.json")


def summary_table(summary: dict[str, Any]) -> str:
    """One line per table: read, accepted, quarantined (with the top reason), duplicates."""
    lines = [
        f"{'table':<12} {'read':>10} {'accepted':>10} {'quarantined':>12} {'duplicates':>10}  top reason"
    ]
    for name, t in summary["tables"].items():
        top = max(t["reasons"].items(), key=lambda kv: kv[1])[0] if t["reasons"] else ""
        counts = f"{t['read']:>10,} {t['accepted']:>10,} {t['quarantined']:>12,} {t['duplicates']:>10,}"
        lines.append(f"{name:<12} {counts}  {top}")
    return "\n".join(lines)


if __name__ == "__main__":
    app()

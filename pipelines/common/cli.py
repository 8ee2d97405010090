"""Shared CLI behaviour: known failures become one clear message and a non-zero exit, never a traceback."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import typer

from pipelines.common.config import ConfigError

log = logging.getLogger("pipelines")


class DataError(RuntimeError):
    """Input data that cannot be processed at all (corrupt file, missing column, missing stage output)."""


@contextlib.contextmanager
def exit_on_error() -> Iterator[None]:
    """Turn :class:`ConfigError` / :class:`DataError` into ``error: …`` on stderr and exit status 2."""
    try:
        yield
    except (ConfigError, DataError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None

"""Filesystem helpers shared by the stages: date-partitioned Parquet and all-or-nothing output folders."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from pipelines.common.cli import DataError


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a hidden sibling folder to write into; on success it replaces ``final`` in one rename.

    On any exception the partial folder is removed and ``final`` is left exactly as it was, so a failed
    stage never leaves half an output behind.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, final)


def replace_dir(src: Path, dst: Path) -> None:
    """Move folder ``src`` to ``dst``, replacing what was there (two renames; the old copy is removed)."""
    old = dst.parent / f".{dst.name}.old-{uuid.uuid4().hex[:8]}"
    if dst.exists():
        dst.rename(old)
    src.rename(dst)
    shutil.rmtree(old, ignore_errors=True)


def utc_dates(ts: pa.Array | pa.ChunkedArray) -> pa.Array:
    """``YYYY-MM-DD`` strings of UTC timestamps (the partition key of event tables)."""
    return pc.strftime(ts, format="%Y-%m-%d")


def write_by_date(table: pa.Table, root: Path, time_column: str, part: str) -> None:
    """Write ``table`` under ``root/date=YYYY-MM-DD/part-<part>.parquet``, one file per UTC day present."""
    if table.num_rows == 0:
        return
    dates = utc_dates(table[time_column])
    for day in pc.unique(dates).to_pylist():
        sub = table.filter(pc.equal(dates, day))
        out = root / f"date={day}"
        out.mkdir(parents=True, exist_ok=True)
        pq.write_table(sub, out / f"part-{part}.parquet")


def write_table(table: pa.Table, root: Path, part: str = "0") -> None:
    """Write an unpartitioned table as ``root/part-<part>.parquet``."""
    root.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, root / f"part-{part}.parquet")


def parquet_files(root: Path) -> list[str]:
    """Every Parquet file under ``root``, sorted (none when ``root`` does not exist)."""
    return sorted(str(p) for p in Path(root).rglob("*.parquet"))


def read_table(
    root: Path,
    schema: pa.Schema | None = None,
    columns: list[str] | None = None,
    where: pc.Expression | None = None,
    missing: str | None = None,
) -> pa.Table:
    """Every Parquet file under ``root`` as one table (hive ``date=`` folders are not turned into columns),
    optionally projected to ``columns`` and filtered by ``where``. No files: an empty table, or with
    ``missing`` a :class:`DataError` ``"<root>: <missing>"``."""
    files = parquet_files(root)
    if not files:
        if missing is not None:
            raise DataError(f"{root}: {missing}")
        return (schema or pa.schema([])).empty_table() if columns is None else _empty(schema, columns)
    ds = pads.dataset(files, format="parquet", schema=schema)
    return ds.to_table(columns=columns, filter=where)


def _empty(schema: pa.Schema | None, columns: list[str]) -> pa.Table:
    if schema is None:
        return pa.table({c: pa.array([]) for c in columns})
    return pa.schema([schema.field(c) for c in columns]).empty_table()


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write JSON atomically (write aside, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)

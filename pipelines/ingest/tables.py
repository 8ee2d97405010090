"""One table's ingestion: discover and check raw files, validate with Ray Data, de-duplicate per bucket,
write clean rows and quarantine the rest."""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipelines.common import schema
from pipelines.common.cli import DataError
from pipelines.common.io import read_table, write_by_date, write_table
from pipelines.common.runtime import task_cpus
from pipelines.common.schema import Table
from pipelines.ingest.rules import (
    References,
    Rules,
    dedup_group,
    hash_strings,
    impression_keys,
    select_status,
    strict_json,
    to_clean,
    validate_batch,
)

log = logging.getLogger(__name__)


FORMATS = {".parquet": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl"}


QUARANTINE = pa.schema(
    [
        pa.field("table", pa.string()),
        pa.field("source_file", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("raw", pa.string()),
    ]
)


@dataclass
class TableCounts:
    """Row accounting of one table: ``read == accepted + quarantined + duplicates``."""

    read: int = 0
    accepted: int = 0
    quarantined: int = 0
    duplicates: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    files: int = 0

    def balanced(self) -> bool:
        return self.read == self.accepted + self.quarantined + self.duplicates


# --------------------------------------------------------------------------------------------- file checks
def discover(raw_dir: Path, table: Table) -> dict[str, list[str]]:
    """Files of ``table`` under ``raw_dir/<table>`` grouped by format; unknown files are an error."""
    root = raw_dir / table.name
    if not root.is_dir():
        if table.name in schema.OPTIONAL_TABLES:
            return {}
        optional = ", ".join(schema.OPTIONAL_TABLES)
        raise DataError(
            f"{root}: missing; the {table.name} table is required (only {optional} may be absent)"
        )
    found: dict[str, list[str]] = {}
    for p in sorted(root.rglob("*")):
        if p.is_dir() or p.name.startswith((".", "_")):
            continue
        fmt = FORMATS.get(p.suffix.lower())
        if fmt is None:
            raise DataError(f"{p}: unsupported file type (expected {', '.join(sorted(FORMATS))})")
        check_file(p, fmt, table)
        found.setdefault(fmt, []).append(str(p))
    return found


def required_columns(table: Table) -> list[str]:
    return [f.name for f in table.schema if not f.nullable]


def check_file(path: Path, fmt: str, table: Table) -> None:
    """Fail fast, naming the file and column, on a corrupt or schema-less file."""
    if fmt == "parquet":
        try:
            columns = pq.read_schema(path).names
        except Exception as e:
            raise DataError(f"{path}: not a readable Parquet file ({e})") from None
    elif fmt == "csv":
        try:
            with pacsv.open_csv(path, read_options=pacsv.ReadOptions(block_size=1 << 16)) as reader:
                columns = reader.schema.names
        except Exception as e:
            raise DataError(f"{path}: not a readable CSV file with a header row ({e})") from None
    else:
        with path.open("rb") as fh:
            first = next((line for line in fh if line.strip()), None)
        if first is None:
            return
        try:
            obj = json.loads(first)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"{path}: first line is not JSON ({e}); is this a JSONL file?") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}: JSONL rows must be objects, first line is {type(obj).__name__}")
        return  # JSONL has no header: a missing required key is a row-level rejection
    missing = [c for c in required_columns(table) if c not in columns]
    if missing:
        raise DataError(
            f"{path}: missing required column {missing[0]!r} of table {table.name!r} (has {columns})"
        )


def check_raw(data_dir: Path) -> Path:
    """Check every raw file up front, so a corrupt one fails the run before anything is computed."""
    raw_dir = data_dir / "raw"
    if not raw_dir.is_dir():
        raise DataError(f"{raw_dir}: no raw logs (run pipelines.synth or put logs there)")
    for name in schema.INGEST_ORDER:
        discover(raw_dir, schema.TABLES[name])
    return raw_dir


# ------------------------------------------------------------------------------------------------ one table
def _read(files: dict[str, list[str]], table: Table) -> list[tuple[str, Any]]:
    import ray.data

    out = []
    cpus = task_cpus()
    for fmt, paths in files.items():
        if fmt == "parquet":
            ds = ray.data.read_parquet(paths, include_paths=True, partitioning=None, num_cpus=cpus)
        elif fmt == "csv":
            string_types = {f.name: pa.string() for f in table.schema}
            ds = ray.data.read_csv(
                paths,
                include_paths=True,
                partitioning=None,  # type: ignore[arg-type]  # None disables hive parsing of paths
                convert_options=pacsv.ConvertOptions(column_types=string_types, strings_can_be_null=True),
                num_cpus=cpus,
            )
        else:
            ds = ray.data.read_text(paths, include_paths=True, num_cpus=cpus)
        out.append((fmt, ds))
    return out


def _quarantine_rows(batch: pa.Table, table_name: str) -> pa.Table:
    batch = select_status(batch, "quarantined")
    raw = batch.column("_raw").to_pylist()
    if any(r is None for r in raw):  # conflicting duplicates were valid rows: keep their canonical form
        canon = batch.drop_columns([c for c in batch.column_names if c.startswith("_")]).to_pylist()
        raw = [r if r is not None else strict_json(c) for r, c in zip(raw, canon, strict=True)]
    return pa.table(
        {
            "table": pa.array([table_name] * batch.num_rows, pa.string()),
            "source_file": batch.column("_source"),
            "reason": batch.column("_reason"),
            "raw": pa.array(raw, pa.string()),
        },
        schema=QUARANTINE,
    )


def finalize_bucket(table: Table, files: list[str], out_dir: str, part: str) -> dict[str, Any]:
    """De-duplicate one key bucket, write its clean and quarantined rows; return its status counts."""
    rows = pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")
    decided = dedup_group(rows, table.key)
    root = Path(out_dir)
    clean = to_clean(select_status(decided, "accepted"), table)
    if table.time_column is not None:
        write_by_date(clean, root / "clean" / table.name, table.time_column, part)
    elif clean.num_rows:
        write_table(clean, root / "clean" / table.name, part)
    quarantined = _quarantine_rows(decided, table.name)
    if quarantined.num_rows:
        write_table(quarantined, root / "quarantine" / table.name, part)
    status = pd.Series(decided.column("_status").to_pylist(), dtype=object).value_counts()
    return {
        "read": decided.num_rows,
        "accepted": int(status.get("accepted", 0)),
        "duplicates": int(status.get("duplicate", 0)),
        "quarantined": int(status.get("quarantined", 0)),
        "reasons": pd.Series(quarantined.column("reason").to_pylist(), dtype=object).value_counts().to_dict(),
    }


def bucket_groups(buckets: dict[int, list[str]], rows_per_file: int) -> list[list[str]]:
    """The staged files of the key buckets, merged into as few groups as ``rows_per_file`` allows (a key's
    rows all share one bucket, so a group of buckets de-duplicates as well as one): each group writes one
    file per date, so a small table is not spread over 16 files a day."""
    rows = {b: sum(pq.read_metadata(f).num_rows for f in files) for b, files in buckets.items()}
    n = max(1, min(len(buckets), -(-sum(rows.values()) // rows_per_file)))
    groups: list[list[str]] = [[] for _ in range(n)]
    for i, b in enumerate(sorted(buckets)):
        groups[i % n].extend(buckets[b])
    return [g for g in groups if g]


def ingest_table(
    table: Table,
    raw_dir: Path,
    out_dir: Path,
    refs: References,
    rules: Rules,
    batch_size: int,
    rows_per_file: int = 250_000,
) -> TableCounts:
    """Validate (Ray Data), then de-duplicate per key bucket (Ray tasks) and write one table."""
    import ray

    files = discover(raw_dir, table)
    counts = TableCounts(files=sum(len(v) for v in files.values()))
    staging = out_dir / "_staging" / table.name
    t0 = time.perf_counter()
    for fmt, ds in _read(files, table):
        ds.map_batches(
            validate_batch,
            batch_format="pyarrow",
            batch_size=batch_size,
            fn_kwargs={"table": table, "fmt": fmt, "refs": refs, "rules": rules},
            num_cpus=task_cpus(),
        ).write_parquet(
            str(staging / fmt), partition_cols=["_bucket"], ray_remote_args={"num_cpus": task_cpus()}
        )
    t1 = time.perf_counter()
    buckets: dict[int, list[str]] = {}
    for d in sorted(staging.glob("*/_bucket=*")):
        files_b = [str(f) for f in sorted(d.glob("*.parquet"))]
        buckets.setdefault(int(d.name.split("=", 1)[1]), []).extend(files_b)
    task: Any = ray.remote(num_cpus=task_cpus())(finalize_bucket)
    results = ray.get(
        [
            task.remote(table, group_files, str(out_dir), f"{k:05d}")
            for k, group_files in enumerate(bucket_groups(buckets, rows_per_file))
        ]
    )
    log.debug("%s: validate %.1fs, dedup %.1fs", table.name, t1 - t0, time.perf_counter() - t1)
    reasons: dict[str, int] = {}
    for r in results:
        counts.read += r["read"]
        counts.accepted += r["accepted"]
        counts.duplicates += r["duplicates"]
        counts.quarantined += r["quarantined"]
        for k, v in r["reasons"].items():
            reasons[k] = reasons.get(k, 0) + int(v)
    counts.reasons = dict(sorted(reasons.items()))
    if not counts.balanced() or sum(reasons.values()) != counts.quarantined:
        raise RuntimeError(f"{table.name}: row accounting does not add up: {counts}")
    clean_dir = out_dir / "clean" / table.name
    if not clean_dir.exists():
        write_table(table.schema.empty_table(), clean_dir, "empty")
    shutil.rmtree(staging, ignore_errors=True)  # none when the table had no files
    return counts


def next_references(refs: References, table: Table, clean_dir: Path) -> References:
    """Add the ids of the table just ingested to what later tables may reference."""
    if table.name == "users":
        ids = read_table(clean_dir, table.schema, ["user_id"]).column("user_id").to_numpy()
        return References(user_ids=np.sort(ids.astype(np.int64)))
    if table.name == "posts":
        t = read_table(clean_dir, table.schema, ["post_id", "created_at"])
        ids = t.column("post_id").to_numpy().astype(np.int64)
        created = pc.cast(t.column("created_at"), pa.int64()).to_numpy()
        order = np.argsort(ids)
        return References(refs.user_ids, ids[order], created[order])
    if table.name == "impressions":
        t = read_table(clean_dir, table.schema, ["impression_id", "viewer_id", "post_id"])
        ids = t.column("impression_id").to_pylist()
        owners = impression_keys(ids, t.column("viewer_id").to_numpy(), t.column("post_id").to_numpy())
        return References(
            refs.user_ids, refs.post_ids, refs.post_created_ms, np.sort(hash_strings(ids)), np.sort(owners)
        )
    return refs

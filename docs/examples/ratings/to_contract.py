"""Map a ratings log onto the contract's raw tables with the SQL views of ``to_contract.sql`` (DuckDB):

    python docs/examples/ratings/to_contract.py --export data/ratings/export --raw data/ratings/raw

Writes ``<raw>/<table>/part-0.parquet`` for users, posts, impressions and engagements, and prints each
table's row count. Any SQL engine your logs live in does the same with the same views (a warehouse export
job, Spark SQL): ingest reads Parquet, CSV or JSONL.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import duckdb

TABLES = ("users", "posts", "impressions", "engagements")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--export", type=Path, required=True, help="Folder of users.dat, movies.dat, ratings.dat.")
    p.add_argument("--raw", type=Path, required=True, help="The data directory's raw/ folder.")
    a = p.parse_args()
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET VARIABLE export = ?", [str(a.export.resolve())])
    con.execute((Path(__file__).parent / "to_contract.sql").read_text())
    for table in TABLES:
        dest = a.raw / table
        dest.mkdir(parents=True, exist_ok=True)
        con.execute(f"COPY {table} TO '{dest / 'part-0.parquet'}' (FORMAT parquet)")
        count = con.execute(f"SELECT count(*) FROM {table}").fetchone()
        sys.stdout.write(f"{table:12s} {count[0] if count else 0:>9,} rows → {dest}\n")


if __name__ == "__main__":
    main()

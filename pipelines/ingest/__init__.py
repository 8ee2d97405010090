"""Ingestion: ``python -m pipelines.ingest --data-dir D``: ``D/raw/`` → ``D/clean/`` + ``D/quarantine/``.

For each table, in reference order (users → friendships → blocks → posts → impressions → engagements)::

    raw/<table>/**/*.{parquet,csv,jsonl}
        │  file check (driver): readable? every required column present?   → DataError, exit 2
        ▼
    Ray Data read ─► map_batches(validate_batch) ─► write_parquet(partition_cols=["_bucket"])
        │  types, enums, ranges, timestamps, references; bucket = hash(key) % 16 (staging)
        ▼
    one Ray task per bucket: dedup_group        exact copies dropped, same key + other content quarantined
        ├─ rejected rows ─────────────────────► quarantine/<table>/  (raw row + reason + source file)
        ▼
    clean/<table>/[date=YYYY-MM-DD/]*.parquet   the contract's schema, non-null where required

Accounting per table, written to ``D/ingest_summary.json``: ``read = accepted + quarantined + duplicates``.
Everything is written to a hidden staging folder and moved into place only when every table succeeded:
a failure leaves the previous ``clean/`` and ``quarantine/`` untouched.
"""

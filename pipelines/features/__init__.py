"""Features: ``python -m pipelines.features --data-dir D``: ``D/clean/`` → ``D/features/`` + ``D/online/``.

One training example per impression, point-in-time correct (see :mod:`pipelines.features.pit`)::

    clean/ ──► vocabularies, History (compact event index, in the object store)
          └──► posts ─► TextEncoder Ray actors (MiniLM, ONNX Runtime) ─► PCA ─► post embeddings
    for each served_at day (one Ray task per day, memory bounded by a day):
        impressions of the day + engagements of the day and the attribution window after it
          ─► labels (click, like, comment, share, hide, report, dwell_ms, skip)
          ─► features as of each served_at ─► split by day ─► sampling (train only)
          ─► features/<split>/date=YYYY-MM-DD/part-0.parquet
    History as of the last event ─► online/ (what serving reads)

``features/manifest.json`` documents every column by role (ids, labels, weight, sparse, dense, vectors),
the splits and their row counts; ``features/stats.json`` has train-split means and standard deviations
of the dense columns; ``docs/schema.md`` describes both folders.
"""

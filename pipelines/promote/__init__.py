"""Promotion: ``python -m pipelines.promote --data-dir D [--version N] [--force] [--reason TEXT]``.

Moves alias ``champion`` of ``feed-ranker`` to a version (default: the one aliased ``challenger``) only if
it beats the current champion on the same evaluation set: both versions are scored now, on this data
directory's test split, and the candidate must improve ``registry.gate_metric`` by more than
``registry.min_gain`` without any task's AUC falling more than ``registry.max_auc_drop`` (configs/train.yaml).
With no champion yet, the candidate becomes the first. ``--force`` promotes regardless and says so.

``--online-report R.json`` (from ``pipelines.simulate --out``, with the candidate served as ``challenger``)
adds the online half: the candidate must also win online (:func:`pipelines.promote.gate.online_gate`).
``make retrain`` uses it.

Every decision, promoted or not, is recorded on the candidate version as tags (``promotion.decision``,
``promotion.reason``, ``promotion.at``, ``promotion.eval_set``, ``promotion.previous_champion``) and
printed. Serving follows the alias, so moving it by hand in the MLflow UI is just as valid.
"""

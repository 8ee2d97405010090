"""Offline evaluation: ``python -m pipelines.evaluate --data-dir D [--model-uri URI | --checkpoint DIR]``.

Scores the test split (``D/features/test``) with the ranker and, side by side on the same rows::

    reverse-chron   newest first (−post age at serving): the feed before ranking
    popularity      the post's engagements over all time before serving (all-time counters)
    logistic        one scikit-learn logistic regression per task (ridge for dwell) on the same features
    oracle          the ground-truth probabilities in D/truth/ (synthetic data only): the ceiling

Per task: ROC-AUC, PR-AUC, log loss and expected calibration error (probability models only; ECE from
torchmetrics) and a reliability plot; dwell: MAE in seconds. AUCs and ranking use the scores as served
(every item at the top slot); log loss, ECE, reliability and dwell MAE compare the ranker with what
happened, so they apply its position-bias tower to the logged position. Ranking: NDCG@k (graded
relevance of what the viewer did) and MRR of the value-model order within each request (requests with
no engagement carry no signal and are skipped). The logistic baseline is fitted and scored at position 0.

Writes ``evaluation.json``, ``quality.md`` and plots to ``--out`` (default ``D/evaluation/<name>``);
training runs it at the end and logs the same files to MLflow.
"""

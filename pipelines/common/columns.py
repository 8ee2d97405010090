"""Column names and their roles in the feature tables, in one place (labels, sparse ids, vocabulary
codes, dense prefixes)."""

from __future__ import annotations

LABELS = ("click", "like", "comment", "share", "hide", "report", "skip")


SPARSE_IDS = ("sp_viewer", "sp_author", "sp_post")  # raw int64 ids: the model hashes them


SPARSE_VOCAB = ("sp_city", "sp_author_city", "sp_gender", "sp_age_bucket", "sp_modality")


SPARSE_LISTS = ("sp_topics",)


DENSE_PREFIXES = ("ctx_", "u_", "p_", "a_", "ua_", "rel_", "x_")


ID_FEATURES = ("sp_viewer", "sp_author", "sp_post")

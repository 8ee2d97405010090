"""Every column of the feature tables (``D/features/<split>/``: the ranker's inputs, labels and keys) and
its role, in one place. The log tables' columns are the Arrow schemas of :mod:`pipelines.common.schema`;
the task names are :mod:`models.tasks`.

Roles, as ``features/manifest.json`` lists them under ``columns``::

    ids       IDS                      which impression a row is; never a model input
    labels    LABELS                   what the heads learn: 0/1 actions, dwell in ms, skip
    weight    WEIGHT                   inverse sampling rate (negatives kept at a rate, rare labels upsampled)
    sparse    SPARSE_IDS               raw int64 ids: the model maps them to table rows (unknown → OOV row)
              SPARSE_VOCAB             vocabulary codes (0 = unknown)
              SPARSE_LISTS             lists of vocabulary codes (a post's topics)
    dense     DENSE_PREFIXES           every float column whose name starts with one of these
    vectors   (by shape)               fixed-length float vectors: text embedding, media, topic shares
    bias      BIAS                     the logged position: the position-bias tower in training, top slot
                                       at serving

Example::

    >>> SPARSE[:3], LABELS[-2:], WEIGHT
    (('sp_viewer', 'sp_author', 'sp_post'), ('dwell_ms', 'skip'), 'sample_weight')
"""

from __future__ import annotations

from typing import Final

IDS: Final = ("impression_id", "request_id", "viewer_id", "post_id", "author_id", "served_at", "position")
SPLIT: Final = "split"
WEIGHT: Final = "sample_weight"
DWELL: Final = "dwell_ms"

#: 0/1 labels from engagement events (an action on the impression within the attribution window).
ACTION_LABELS: Final = ("click", "like", "comment", "share", "hide", "report")
#: Every 0/1 label: the actions, and skip (dwell under ``features.skip_dwell_ms``).
BINARY_LABELS: Final = (*ACTION_LABELS, "skip")
#: Every label column, in file order.
LABELS: Final = (*ACTION_LABELS, DWELL, "skip")

SPARSE_IDS: Final = ("sp_viewer", "sp_author", "sp_post")
SPARSE_VOCAB: Final = (
    "sp_city",
    "sp_author_city",
    "sp_gender",
    "sp_age_bucket",
    "sp_modality",
    "sp_school",
    "sp_work",
)
SPARSE_LISTS: Final = ("sp_topics",)
SPARSE: Final = (*SPARSE_IDS, *SPARSE_VOCAB, *SPARSE_LISTS)

#: ctx_ request context, u_ viewer, p_ post, a_ author, ua_ viewer–author history, rel_ relation flags,
#: x_ viewer × post crosses.
DENSE_PREFIXES: Final = ("ctx_", "u_", "p_", "a_", "ua_", "rel_", "x_")
BIAS: Final = ("ctx_position",)

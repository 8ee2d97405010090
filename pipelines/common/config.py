"""Typed configuration: YAML files in ``configs/`` validated by pydantic models that reject unknown keys.

One sub-config per component, composed into a root per file (``configs/data.yaml`` → :class:`DataConfig`).
A wrong key or type is a :class:`ConfigError` naming the file and the dotted key.

Example::

    >>> cfg = DataConfig()          # the embedded defaults
    >>> cfg.synth.users
    2000
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from models.tasks import BINARY_TASKS, DEFAULT_RELEVANCE, DEFAULT_TASK_WEIGHTS, DEFAULT_VALUE_WEIGHTS, TASKS
from pipelines.common.columns import SPARSE_IDS

if TYPE_CHECKING:  # torch: imported by to_spec() only, so reading a config stays light
    from models.ranker import RankerSpec
    from models.train_wrapper import LossSpec


class StrictConfig(BaseModel):
    """The base of every config section in the project (pipelines, serving, simulation): unknown keys are
    errors and values are validated on assignment. Sections that must not change once loaded (serving's)
    say so with ``class X(StrictConfig, frozen=True)``. Errors surface as :class:`ConfigError`."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ConfigError(ValueError):
    """A config that cannot be read or does not validate; the message names the file and every bad key."""


M = TypeVar("M", bound=BaseModel)


def format_errors(where: Path | str, err: ValidationError) -> str:
    """One line per error: ``<where>: <dotted.key>: <message>``."""
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        lines.append(f"{where}: {key}: {e['msg']}")
    return "\n".join(lines)


def validate(model: type[M], data: Any, where: Path | str) -> M:
    """``model`` validated from ``data``; a :class:`ConfigError` listing every error otherwise.

    >>> validate(DataConfig, {"synth": {"userz": 1, "days": 0}}, "x.yaml")
    Traceback (most recent call last):
    ...
    pipelines.common.config.ConfigError: x.yaml: synth.days: Input should be greater than or equal to 1
    x.yaml: synth.userz: Extra inputs are not permitted
    """
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_errors(where, e)) from None


class SynthConfig(StrictConfig):
    """The synthetic social network (``python -m pipelines.synth``)."""

    users: int = Field(2000, ge=10, description="Number of users.")
    days: int = Field(7, ge=1, le=366, description="Days of activity logs to generate.")
    seed: int = Field(0, description="Everything generated is a function of this seed.")
    start_date: dt.date = Field(dt.date(2026, 11, 1), description="First day of logs (UTC).")
    cities: int = Field(12, ge=1, description="Number of cities; communities form inside them.")
    schools_per_city: int = Field(4, ge=1)
    workplaces_per_city: int = Field(8, ge=1)
    mean_degree: float = Field(40.0, gt=0, description="Mean number of friends (heavy-tailed).")
    max_degree: int = Field(1000, ge=1, description="Degree cap, as real networks impose.")
    block_rate: float = Field(0.02, ge=0, le=1, description="Blocks per user.")
    posts_per_user_day: float = Field(1.0, gt=0, description="Mean posts per user per day.")
    sessions_per_user_day: float = Field(3.0, gt=0, description="Mean app sessions per user per day.")
    impressions_per_session: int = Field(12, ge=1, description="Mean feed items seen per session.")
    candidate_days: int = Field(7, ge=1, description="Logging policy: friends' posts from the last N days.")
    media_dim: int = Field(16, ge=1, description="Length of precomputed media vectors.")
    deletion_rate: float = Field(0.02, ge=0, le=1, description="Share of posts deleted later.")
    users_per_task: int = Field(400, ge=1, description="Users per parallel generation task (memory bound).")
    social_graph: bool = Field(
        True,
        description="False: a ratings-style log with no friendships or blocks, every post public, and the "
        "logging policy drawing candidates from every author's recent posts.",
    )
    open_candidates: int = Field(
        200,
        ge=1,
        description="Without a social graph: recent posts drawn per session for the policy to order.",
    )
    explore_share: float = Field(
        0.1,
        ge=0,
        le=1,
        description="With a social graph: share of a session's slots the logging policy fills with recent "
        "public posts by non-friends, drawn at random and placed at random positions (exploration: without "
        "it the logs never show an out-of-network post, and no model can learn to score one).",
    )
    cold_start_share: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Share of users who join on the last day (no history before the test split).",
    )

    @model_validator(mode="after")
    def _degree_fits(self) -> SynthConfig:
        if self.mean_degree >= self.users:
            raise ValueError(f"mean_degree ({self.mean_degree}) must be below users ({self.users})")
        return self


class IngestConfig(StrictConfig):
    """Validation rules of ``python -m pipelines.ingest``."""

    min_timestamp: dt.datetime = Field(
        dt.datetime(2000, 1, 1, tzinfo=dt.UTC), description="Earlier timestamps are rejected."
    )
    max_future_s: int = Field(300, ge=0, description="Timestamps this far past ingest time are rejected.")
    batch_size: int = Field(65536, ge=1, description="Rows per Ray Data validation batch.")
    max_quarantine_fraction: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Ingest fails (exit 2, naming each table's top reasons) when more of a table's rows than "
        "this are quarantined: a mapping or config problem, not bad rows.",
    )
    rows_per_file: int = Field(
        250_000, ge=1000, description="Target rows per clean file: bounds the files per table and date."
    )


class FeaturesConfig(StrictConfig):
    """Point-in-time feature generation of ``python -m pipelines.features``."""

    skip_dwell_ms: int = Field(2000, ge=0, description="An impression viewed for less is a skip.")
    windows: dict[str, int] = Field(
        default_factory=lambda: {"1h": 3600, "1d": 86400, "7d": 7 * 86400},
        description="Counter windows: name → seconds.",
    )
    attribution_window_s: int = Field(
        86400, ge=1, description="An engagement without impression_id credits the latest earlier impression."
    )
    split_by: Literal["days", "time"] = Field(
        "days",
        description="days: whole UTC days of served_at (valid_days, test_days); time: cut timestamps "
        "(valid_from, test_from) or, without them, served_at quantiles (valid_fraction, test_fraction).",
    )
    valid_days: int = Field(1, ge=0, description="Days before the test days that form the validation split.")
    test_days: int = Field(1, ge=0, description="Last days of served_at that form the test split.")
    valid_from: dt.datetime | None = Field(None, description="split_by time: valid from here (to test_from).")
    test_from: dt.datetime | None = Field(None, description="split_by time: test from here on.")
    valid_fraction: float = Field(
        0.1, ge=0, lt=1, description="split_by time, no cuts: the share of impressions before the test ones."
    )
    test_fraction: float = Field(
        0.2, gt=0, lt=1, description="split_by time, no cuts: the last share of impressions by served_at."
    )
    negative_keep_rate: float = Field(
        0.5, gt=0, le=1, description="Train split: share of all-negative impressions kept (weight 1/rate)."
    )
    rare_upsample: int = Field(
        2, ge=1, description="Train split: copies of rows with a comment or share (weight 1/copies each)."
    )
    text_dim: int = Field(32, ge=1, le=384, description="Text embedding dims kept (PCA of MiniLM's 384).")
    encoder_batch_size: int = Field(64, ge=1, description="Texts per MiniLM forward pass.")
    encoder_actors: int = Field(1, ge=1, description="Text-encoder Ray actors (each takes up to 4 CPUs).")
    seed: int = Field(0, description="Seed of the sampling hash and the PCA.")

    @model_validator(mode="after")
    def _windows_positive(self) -> FeaturesConfig:
        bad = {k: v for k, v in self.windows.items() if v <= 0 or not k.isalnum() or k in ("all", "rate")}
        if bad:
            raise ValueError(
                f"windows need alphanumeric names other than 'all' (the all-time counters, always kept) and "
                f"'rate' (the all-time rates' suffix), and positive seconds, got {bad}"
            )
        return self


class DataConfig(StrictConfig):
    """Root of ``configs/data.yaml``: the data-preparation stages."""

    synth: SynthConfig = Field(default_factory=SynthConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)


def _only_id_features(per_id: dict[str, Any]) -> None:
    """A per-id-feature setting names only id features."""
    if bad := sorted(set(per_id) - set(SPARSE_IDS)):
        raise ValueError(f"unknown id features {bad}; id features are {list(SPARSE_IDS)}")


class ModelConfig(StrictConfig):
    """Architecture of the multitask ranker: :meth:`ModelConfig.to_spec` makes its
    :class:`models.ranker.RankerSpec`."""

    embedding_dim: int = Field(16, ge=2)
    bottom_mlp: list[int] = Field(
        default_factory=lambda: [64], description="Hidden sizes before the dim-D layer."
    )
    top_mlp: list[int] = Field(default_factory=lambda: [128, 64], min_length=1, description="Shared layers.")
    interaction: Literal["dot", "dcn"] = "dcn"
    dcn_layers: int = Field(2, ge=1)
    dcn_rank: int = Field(16, ge=1)
    wide: bool = Field(
        False, description="A linear path from the dense inputs to every logit beside the deep network."
    )
    min_id_count: dict[str, int] = Field(
        default_factory=lambda: dict.fromkeys(SPARSE_IDS, 1),
        description="Per id feature, ids in fewer rows of the train split (after negative sampling and rare "
        "upsampling) share the out-of-vocabulary row (a number: the same for every id). With post ids on (a "
        "log whose items recur over days, like a ratings log's films), e.g. {sp_post: 5}: a post needs 5 "
        "train rows for its own row, and new posts score through the OOV row.",
    )

    @field_validator("min_id_count", mode="before")
    @classmethod
    def _count_per_id(cls, v: Any) -> Any:
        if isinstance(v, int):
            return dict.fromkeys(SPARSE_IDS, v)
        if isinstance(v, dict):
            return {**dict.fromkeys(SPARSE_IDS, 1), **v}
        return v

    @field_validator("min_id_count")
    @classmethod
    def _count_ids(cls, v: dict[str, int]) -> dict[str, int]:
        _only_id_features(v)
        if low := {k: n for k, n in v.items() if n < 1}:
            raise ValueError(f"minimum counts must be at least 1, got {low}")
        return v

    exclude_sparse: list[str] = Field(
        default_factory=lambda: ["sp_post", "sp_viewer", "sp_author"],
        description="Sparse features left out of the model. Post ids: most posts a feed ranks are newer "
        "than the training data, so a post-id table mostly memorizes (measured: lower test AUC); a log "
        "whose items recur over days can take sp_post out. Viewer and author ids over-fit beside the "
        "per-viewer rates and topic profiles (bench/RESULTS.md, Ranker quality). The viewer's school and "
        "work codes are in; leaving them out is a lead where most viewers are new (bench.ablate).",
    )

    def to_spec(self, sparse: dict[str, int], n_dense: int, n_bias: int = 0) -> RankerSpec:
        """The ranker's shapes: this architecture over the data's tables (``sparse``: feature → table
        rows), dense width and bias inputs (both read from ``features/``, not configured).

        >>> spec = ModelConfig(top_mlp=[32]).to_spec({"sp_viewer": 10}, n_dense=3)
        >>> spec.top_mlp, spec.n_dense, spec.embedding_dim
        ((32,), 3, 16)
        """
        from models.ranker import RankerSpec

        return RankerSpec(
            sparse=dict(sparse),
            n_dense=n_dense,
            embedding_dim=self.embedding_dim,
            bottom_mlp=tuple(self.bottom_mlp),
            top_mlp=tuple(self.top_mlp),
            interaction=self.interaction,
            dcn_layers=self.dcn_layers,
            dcn_rank=self.dcn_rank,
            n_bias=n_bias,
            wide=self.wide,
        )


class LossSettings(StrictConfig):
    """Per-task loss weighting: :meth:`LossSettings.to_spec` makes the
    :class:`models.train_wrapper.LossSpec`."""

    task_weights: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_TASK_WEIGHTS))
    pos_weight: dict[str, float] = Field(default_factory=dict)
    learned_weights: bool = False
    huber_delta: float = Field(1.0, gt=0)

    def to_spec(self) -> LossSpec:
        """The training wrapper's loss settings.

        >>> LossSettings(learned_weights=True).to_spec().learned_weights
        True
        """
        from models.train_wrapper import LossSpec

        return LossSpec(**self.model_dump())


class OptimConfig(StrictConfig):
    """Optimizers and batching."""

    @field_validator("id_dropout", mode="before")
    @classmethod
    def _dropout_per_id(cls, v: Any) -> Any:
        if isinstance(v, int | float):
            return dict.fromkeys(SPARSE_IDS, float(v))
        return v

    @field_validator("id_dropout")
    @classmethod
    def _dropout_ids(cls, v: dict[str, float]) -> dict[str, float]:
        _only_id_features(v)
        if bad := sorted(k for k, r in v.items() if not 0 <= r < 1):
            raise ValueError(f"rates must be in [0, 1): {bad}")
        return v

    epochs: int = Field(4, ge=1)
    batch_size: int = Field(256, ge=1, description="Per worker.")
    dense_lr: float = Field(1e-3, gt=0, description="Adam on MLPs and heads.")
    embedding_lr: float = Field(0.05, gt=0, description="Fused row-wise Adagrad on embedding tables.")
    id_dropout: dict[str, float] = Field(
        default_factory=lambda: {"sp_viewer": 0.3, "sp_author": 0.1, "sp_post": 0.1},
        description="Per id feature, the share of training rows whose id goes to the out-of-vocabulary row, "
        "so the model learns to score new viewers, authors and posts (a number: the same for every id). "
        "Viewers drop more: where most test viewers are new (configs/data-nograph.yaml), 0.1 left the ranker "
        "far below LightGBM on them (bench/RESULTS.md, Ranker quality).",
    )
    history_dropout: float = Field(
        0.3,
        ge=0,
        lt=1,
        description="Share of training rows whose viewer-history features (u_* rates and profiles, ua_*, "
        "x_*) are replaced by a new viewer's (features/manifest.json cold_viewer), so the ranker learns to "
        "score viewers it has no history for; measured on the cold-start world, 0 left like AUC below "
        "LightGBM's (bench/RESULTS.md, Ranker quality).",
    )
    max_steps_per_epoch: int | None = Field(None, ge=1, description="Cap for smoke runs.")
    shuffle_buffer: int = Field(
        16384, ge=1, description="Rows each worker shuffles locally (blocks are also read in random order)."
    )
    materialize: bool = Field(
        True,
        description="Keep the prepared splits (dense matrix and table rows, built once per block) in Ray's "
        "object store for every epoch; false for data larger than the object store: each epoch then reads "
        "and prepares the files again.",
    )
    patience: int | None = Field(
        1, ge=1, description="Stop after this many epochs without a better validation loss (None: never)."
    )
    report_every: int = Field(20, ge=1, description="Steps between progress reports.")
    time_input_dist: bool = Field(
        False,
        description="Time TorchRec's input all-to-all apart from the forward (bench.train_speed's "
        "breakdown; replaces the sharded modules' forward with an instrumented copy of it).",
    )
    seed: int = 0


class DistributedConfig(StrictConfig):
    """Where and how training runs; the same code covers CPU/gloo and GPU/nccl."""

    num_workers: int = Field(2, ge=1)
    use_gpu: bool | None = Field(None, description="None: use GPUs when the cluster has them.")
    sharding: Literal["table_wise", "column_wise", "row_wise", "data_parallel"] | None = Field(
        None, description="None: table_wise on CPU, row_wise on GPU. row_wise needs GPUs."
    )
    replicate_rows: int = Field(
        0,
        ge=0,
        description="Tables with at most this many rows are replicated on every worker (TorchRec "
        "data_parallel: no all-to-all, gradients all-reduced with the dense ones and stepped by the dense "
        "optimizer) whatever `sharding` says; 0: none.",
    )
    cpus_per_worker: float = Field(
        0.5, gt=0, description="CPUs each worker reserves; leave some for Ray Data's read tasks."
    )
    max_failures: int = Field(2, ge=-1, description="Worker failures recovered from the last checkpoint.")


class EvaluateConfig(StrictConfig):
    """Offline evaluation on the test split (``pipelines.evaluate``)."""

    value_weights: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_VALUE_WEIGHTS),
        description="Weighted sum of task predictions that orders a request's items (dwell per second).",
    )
    relevance: dict[str, int] = Field(
        default_factory=lambda: dict(DEFAULT_RELEVANCE),
        description="Graded relevance of observed engagement for NDCG (MRR: relevance > 0).",
    )
    ndcg_k: int = Field(10, ge=1)
    calibration_bins: int = Field(15, ge=2)
    baseline_rows: int = Field(
        200_000, ge=100, description="Train rows (at most) the logistic-regression and LightGBM peers fit on."
    )
    seed: int = 0

    @model_validator(mode="after")
    def _known_tasks(self) -> EvaluateConfig:
        if bad := sorted(set(self.value_weights) - set(TASKS)):
            raise ValueError(f"value_weights: unknown tasks {bad}; known: {list(TASKS)}")
        if bad := sorted(set(self.relevance) - set(BINARY_TASKS)):
            raise ValueError(f"relevance: unknown tasks {bad}; known: {list(BINARY_TASKS)}")
        return self


class RegistryConfig(StrictConfig):
    """MLflow model registry and the promotion gate (``pipelines.promote``)."""

    model_name: str = "feed-ranker"
    gate_metric: Literal["ndcg", "mrr", "mean_auc"] = Field(
        "ndcg", description="What a challenger must beat the champion on, on the same test split."
    )
    min_gain: float = Field(0.0, description="Required improvement of gate_metric over the champion.")
    max_auc_drop: float = Field(
        0.01, ge=0, description="Guardrail: no task's AUC may fall more than this below the champion's."
    )


class TrainConfig(StrictConfig):
    """Root of ``configs/train.yaml``."""

    experiment: str = "feed-ranker"
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossSettings = Field(default_factory=LossSettings)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)

    @model_validator(mode="after")
    def _row_wise_needs_gpu(self) -> TrainConfig:
        if self.distributed.sharding == "row_wise" and self.distributed.use_gpu is False:
            raise ValueError("distributed.sharding row_wise needs GPUs (fbgemm has no CPU row-wise kernels)")
        return self


class RetrieverModelConfig(StrictConfig):
    """The two-tower retriever (:mod:`models.retriever`): which feature columns feed each tower (names or
    shell patterns over ``features/manifest.json``'s columns; a pattern matching nothing is skipped, so
    the same config fits a log without, say, media vectors) and the towers' shapes."""

    viewer_features: list[str] = Field(
        default_factory=lambda: ["u_*", "sp_city", "sp_gender", "sp_age_bucket", "sp_school", "sp_work"],
        description="The viewer tower: profile, activity, topic and modality shares of past engagement.",
    )
    post_features: list[str] = Field(
        default_factory=lambda: [
            "p_text_emb",
            "p_media",
            "p_text_len",
            "p_media_duration",
            "p_n_topics",
            "a_*",
            "sp_topics",
            "sp_modality",
            "sp_author_city",
        ],
        description="The post tower: what a post has when it is created (content, author), never its id or "
        "its engagement counters, so a new post is embedded and retrievable at once.",
    )
    prior_features: list[str] = Field(
        default_factory=lambda: [
            "p_age_h",
            *(
                f"p_{what}_*"
                for what in ("impressions", "click", "like", "comment", "share", "hide", "report")
            ),
        ],
        description="The post's state when it is scored (age, engagement counters and rates; nothing about "
        "the viewer): a small network turns it into a logit offset added to the towers' score, computed "
        "for the posts the index returns. Empty: no prior.",
    )
    context_features: list[str] = Field(
        default_factory=lambda: ["rel_*", "ua_*", "p_friend_actions_*", "ctx_position"],
        description="Pointwise loss only: what the logged engagement owes to the (viewer, post) relation and "
        "the slot, learned by a training-only tower and left out at retrieval, so that the towers learn what "
        "carries to posts of strangers (the same trick as the ranker's position-bias tower).",
    )
    loss: Literal["softmax", "pointwise"] = Field(
        "pointwise",
        description="pointwise: binary cross-entropy of 'engaged' on every logged impression, the context "
        "tower beside the towers; softmax: in-batch negatives over engaged rows (logQ-corrected), which on "
        "a friends-first log learns the friend graph instead of what carries to strangers' posts (measured "
        "against the oracle over 3 seeds: recall@200 0.13 vs 0.41, bench/RESULTS.md, Retrieval).",
    )
    exposure_correction: bool = Field(
        True,
        description="Correct the softmax for how often the logging policy showed each post, not only for how "
        "often it is an in-batch negative: the score then learns P(engage | shown) instead of the policy's "
        "exposure (friends' newest posts are shown most).",
    )
    positives: list[str] = Field(
        default_factory=lambda: ["click", "like", "comment", "share"],
        description="A row with any of these actions (and no hide or report) is a positive pair.",
    )
    embedding_dim: int = Field(16, ge=2)
    tower_mlp: list[int] = Field(default_factory=lambda: [128], min_length=1)
    out_dim: int = Field(32, ge=2, description="Length of the viewer and post vectors the index holds.")
    temperature: float = Field(0.05, gt=0, description="Softmax temperature on the cosine similarity.")

    @field_validator("positives")
    @classmethod
    def _known_actions(cls, v: list[str]) -> list[str]:
        if bad := sorted(set(v) - set(BINARY_TASKS)):
            raise ValueError(f"unknown actions {bad}; known: {list(BINARY_TASKS)}")
        return v


class RetrieverEvalConfig(StrictConfig):
    """Offline recall of the retriever on the test split (``pipelines.retrieval``)."""

    ks: list[int] = Field(default_factory=lambda: [50, 200, 1000], min_length=1)
    max_queries: int = Field(5000, ge=1, description="Test positives scored (a random sample when more).")
    seed: int = 0


class RetrieverRegistryConfig(StrictConfig):
    """MLflow registry of the retriever and its promotion gate."""

    model_name: str = "feed-retriever"
    gate_k: int = Field(200, ge=1, description="The gate compares recall at this K (one of evaluate.ks).")
    min_gain: float = Field(0.0, description="Required recall gain over the champion, same test split.")


def _retriever_optim() -> OptimConfig:
    return OptimConfig(batch_size=512, epochs=10, id_dropout={}, history_dropout=0.0, patience=2)


class PostIndexConfig(StrictConfig):
    """The registered version's post vectors: every eligible post embedded by a Ray Data job."""

    days: float = Field(
        7.0, gt=0, le=60, description="Public, undeleted posts of the snapshot's last N days (as served)."
    )
    batch_size: int = Field(4096, ge=1, description="Posts per post-tower call.")
    actors: int = Field(1, ge=1, description="Embedding actors (each loads the online snapshot once).")


class RetrieverConfig(StrictConfig):
    """Root of ``configs/retriever.yaml``."""

    experiment: str = "feed-retriever"
    model: RetrieverModelConfig = Field(default_factory=RetrieverModelConfig)
    optim: OptimConfig = Field(default_factory=_retriever_optim)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    evaluate: RetrieverEvalConfig = Field(default_factory=RetrieverEvalConfig)
    registry: RetrieverRegistryConfig = Field(default_factory=RetrieverRegistryConfig)
    post_index: PostIndexConfig = Field(default_factory=PostIndexConfig)

    @model_validator(mode="after")
    def _gate_k_evaluated(self) -> RetrieverConfig:
        if self.registry.gate_k not in self.evaluate.ks:
            raise ValueError(f"registry.gate_k {self.registry.gate_k} must be one of evaluate.ks")
        return self


def load_config(path: Path | str | None, model: type[M], overrides: dict[str, Any] | None = None) -> M:
    """Read YAML at ``path`` (``None``: embedded defaults), apply dotted ``overrides``, validate as ``model``.

    >>> load_config(None, DataConfig, {"synth.users": 50}).synth.users
    50
    """
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            loaded = yaml.safe_load(p.read_text())
        except OSError as e:
            raise ConfigError(f"{p}: cannot read config: {e.strerror}") from e
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from e
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{p}: top level must be a mapping, got {type(loaded).__name__}")
        raw = loaded or {}
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        node = raw
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return validate(model, raw, path or "<defaults>")


def dump_config(cfg: BaseModel) -> str:
    """The resolved config as YAML, for logs and MLflow."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)

"""The feed application's settings: ``applications[0].args`` of ``configs/serve.yaml``, validated here.

``configs/serve.yaml`` is a Ray Serve config file (``serve run`` / ``serve deploy`` read it): replicas,
autoscaling and CPUs per deployment are Serve's own ``deployments:`` section; everything the application
itself needs is :class:`ServeConfig` (unknown keys and wrong types are errors naming the key).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator, model_validator

from models.tasks import DEFAULT_VALUE_WEIGHTS, TASKS
from pipelines.common.config import StrictConfig, validate
from serve.reranking import RerankConfig
from serve.retrieval import RetrievalConfig


class StoreConfig(StrictConfig, frozen=True):
    backend: Literal["embedded", "redis"] = Field(
        "embedded",
        description="embedded: each replica holds D/online/ in memory and reads the others' writes from the "
        "serving log; redis: one copy in redis_url for every replica on every node.",
    )
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="With backend redis.")
    redis_prefix: str = Field("feed", min_length=1, description="Key prefix (several feeds in one Redis).")
    poll_s: float = Field(1.0, gt=0, le=60, description="How often a replica reads the others' writes.")


class ModelSlotConfig(StrictConfig, frozen=True):
    name: str = Field("feed-ranker", description="Registered model name in MLflow.")
    alias: str = Field("champion", description="Alias served to most users.")
    challenger_alias: str = Field("challenger", description="Alias served to the challenger arm.")
    challenger_traffic: float = Field(0.0, ge=0, le=1, description="Stable hash-fraction of users.")
    chronological_traffic: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Stable hash-fraction of users served newest-first with no model: the holdout arm "
        "'chronological' of an online A/B against reverse-chronological.",
    )
    poll_s: float = Field(5.0, gt=0, le=3600, description="How often aliases are re-resolved.")
    tracking_uri: str | None = Field(
        None, description="MLflow URI; default MLFLOW_TRACKING_URI or D/mlflow.db."
    )

    @model_validator(mode="after")
    def _shares(self) -> ModelSlotConfig:
        if self.challenger_traffic + self.chronological_traffic > 1:
            raise ValueError("challenger_traffic + chronological_traffic must be at most 1")
        return self


class RankingConfig(StrictConfig, frozen=True):
    placement: Literal["ingress", "deployment"] = Field(
        "ingress",
        description="ingress: the model runs in each FeedIngress replica (one process hop per request); "
        "deployment: in its own Ranker deployment behind a handle (scales apart, e.g. onto GPUs).",
    )
    max_batch_size: int = Field(16, ge=1, le=256, description="Feed requests scored in one forward.")
    batch_wait_timeout_s: float = Field(
        0.0, ge=0, le=1, description="0: score what is queued at once (requests that arrive meanwhile batch)."
    )
    timeout_s: float = Field(0.5, gt=0, description="Latency budget; over it the feed falls back.")
    torch_threads: int = Field(1, ge=1, le=64)
    max_candidates: int = Field(
        2000,
        ge=1,
        le=20_000,
        description="The ranker scores at most this many candidates; when friends' posts and suggestions "
        "are more, pre-ranking keeps the best by two-tower score (with a registered retriever).",
    )


class AuthConfig(StrictConfig, frozen=True):
    secret_env: str = Field("FEED_JWT_SECRET", description="Environment variable holding the HS256 secret.")
    secret: str | None = Field(None, description="The secret itself (tests, demo); prefer secret_env.")
    issuer: str = "ray-feed"
    leeway_s: int = Field(30, ge=0)
    dev_tokens: bool = Field(
        False,
        description="Demo sign-in: GET /dev/users lists users to try and POST /dev/token mints a token for "
        "any user, without a password. Only for a demo (make demo turns it on); off, both routes are 404.",
    )
    dev_token_ttl_s: int = Field(3600, ge=60, le=86400, description="Lifetime of a /dev/token token.")


class FeedConfig(StrictConfig, frozen=True):
    default_limit: int = Field(20, ge=1)
    max_limit: int = Field(100, ge=1)
    cursor_ttl_s: float = Field(900, gt=0, description="How long a request's ranked list backs its cursor.")
    snippet_chars: int = Field(160, ge=10)
    value_weights: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_VALUE_WEIGHTS))
    max_events_per_request: int = Field(500, ge=1)
    max_body_bytes: int = Field(
        1 << 20, ge=1024, description="A larger request body is 413 before it is parsed (500 events fit)."
    )
    max_event_age_s: float = Field(7 * 86400, gt=0, description="Older events are rejected.")
    max_clock_skew_s: float = Field(300, ge=0, description="Events this far in the future are accepted.")

    @field_validator("value_weights")
    @classmethod
    def _known_tasks(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = set(v) - set(TASKS)
        if unknown:
            raise ValueError(f"unknown tasks {sorted(unknown)}; tasks are {list(TASKS)}")
        return v


class ClockConfig(StrictConfig, frozen=True):
    mode: Literal["snapshot", "wall"] = Field(
        "snapshot",
        description="snapshot: serving time starts at the online snapshot's as_of and advances with the "
        "wall clock (synthetic data); wall: the real time.",
    )
    origin_s: float | None = Field(
        None, description="Wall time at which snapshot time starts; default: when online/ was written."
    )


class ServeConfig(StrictConfig, frozen=True):
    data_dir: Path = Field(Path("data/demo"), description="The data directory (online/, raw/, mlflow.db).")
    store: StoreConfig = StoreConfig()
    retrieval: RetrievalConfig = RetrievalConfig()
    rerank: RerankConfig = RerankConfig()
    ranking: RankingConfig = RankingConfig()
    model: ModelSlotConfig = ModelSlotConfig()
    auth: AuthConfig = AuthConfig()
    feed: FeedConfig = FeedConfig()
    clock: ClockConfig = ClockConfig()


def parse(args: dict[str, Any], where: str = "args") -> ServeConfig:
    """The application's args validated; a :class:`pipelines.common.config.ConfigError` naming every bad
    key otherwise."""
    return validate(ServeConfig, args, where)


def load_serve_yaml(path: Path) -> tuple[dict[str, Any], ServeConfig]:
    """The Serve config file and its application's validated args."""
    doc = yaml.safe_load(path.read_text())
    app = doc["applications"][0]
    return doc, parse(app.get("args") or {}, f"{path}: applications[0].args")

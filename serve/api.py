"""The HTTP API (FastAPI): routes, request and response models, status codes. Hosted by the Serve ingress
(:mod:`serve.app`) or by plain uvicorn (the benchmark), over a :class:`serve.feed.FeedService`.

- ``GET /feed/{user_id}?limit=&cursor=`` (token of ``user_id``): 200 ranked items; 400 limit over the cap
  or a bad cursor; 401; 403; 404 unknown user; 410 expired cursor; 422 bad parameter.
- ``POST /events`` (token of the viewer): 202 all stored; 401; 404; 413 too many; 422 listing every
  problem, nothing stored.
- ``POST /posts`` (token of the author): 201; 401; 404; 422.
- ``GET /healthz``: 200 with the served model versions; 503 while no model is loaded.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from fastapi import BackgroundTasks, FastAPI, Header, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from pipelines.common import schema
from serve.auth import AuthError, TokenAuth
from serve.feed import FeedError, FeedService
from serve.records import ClientEvent, PostDraft


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Item(BaseModel):
    post_id: int
    author_id: int
    created_at: str
    modality: str
    text: str
    score: float
    probabilities: dict[str, float] | None = Field(None, description="Per task; null in a fallback feed.")
    expected_dwell_s: float | None
    why: str = Field(description="A short reason this post is in the feed.")
    tags: list[str]
    position: int
    impression_id: str = Field(description="Send it back with engagement events.")


class ModelInfo(BaseModel):
    name: str
    arm: Literal["champion", "challenger", "chronological"] = Field(
        description="chronological: the holdout arm, newest first, no model (model.chronological_traffic)."
    )
    version: str | None


class FeedResponse(BaseModel):
    user_id: int
    request_id: str
    served_at: str
    items: list[Item]
    next_cursor: str | None
    model: ModelInfo
    fallback: bool = Field(description="True when ranking failed or was too slow: newest first.")
    fallback_reason: str | None


class EventIn(Strict):
    type: Literal["impression", "view", "click", "like", "comment", "share", "hide", "report"]
    post_id: int
    at: dt.datetime | None = Field(None, description="When it happened (UTC); default now.")
    impression_id: str | None = Field(None, max_length=128)
    request_id: str | None = Field(None, max_length=128)
    position: int | None = Field(None, ge=0, le=10_000)
    dwell_ms: int | None = Field(None, ge=0, le=schema.MAX_DWELL_MS)
    event_id: str | None = Field(None, min_length=1, max_length=128, description="Idempotency key.")


class EventsIn(Strict):
    events: list[EventIn] = Field(min_length=1)


class EventsOut(BaseModel):
    accepted: int
    event_ids: list[str]


class PostIn(Strict):
    text: str = Field(max_length=schema.MAX_TEXT_CHARS)
    modality: Literal["text", "image", "video"] = "text"
    topics: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=list, max_length=schema.MAX_TOPICS_PER_POST
    )
    visibility: Literal["public", "friends", "private"] = "friends"
    media_duration_s: float | None = Field(None, ge=0, le=24 * 3600)
    media_vector: list[float] | None = Field(None, max_length=1024)


class PostOut(BaseModel):
    post_id: int
    created_at: str


def create_api(
    service: FeedService, auth: TokenAuth, health: Callable[[], Awaitable[dict[str, Any]]] | None = None
) -> FastAPI:
    """The FastAPI app over ``service``; ``health`` reports the served model versions."""
    api = FastAPI(
        title="ray-feed",
        summary="A personalized home feed: friends' recent posts ranked by a multitask model.",
        version="1",
    )

    @api.exception_handler(AuthError)
    async def _auth_error(_: Request, e: AuthError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
        return JSONResponse({"detail": e.detail}, status_code=e.status, headers=headers)

    @api.exception_handler(FeedError)
    async def _feed_error(_: Request, e: FeedError) -> JSONResponse:
        return JSONResponse({"detail": e.detail}, status_code=e.status)

    @api.get("/feed/{user_id}", response_model=FeedResponse)
    async def feed(
        background: BackgroundTasks,
        response: Response,
        user_id: Annotated[int, Path(ge=0, description="The viewer; must match the token.")],
        limit: Annotated[
            int | None, Query(ge=1, description="Items per page (capped by feed.max_limit).")
        ] = None,
        cursor: Annotated[str | None, Query(max_length=512)] = None,
        authorization: Annotated[str | None, Header()] = None,
    ) -> dict[str, Any]:
        auth.authorize(authorization, user_id)
        page = await service.feed(user_id, limit, cursor)
        background.add_task(service.log_impressions, page.impressions)
        response.headers["Server-Timing"] = ", ".join(f"{k};dur={v:.2f}" for k, v in page.timings_ms.items())
        return page.response()

    @api.post("/events", status_code=202, response_model=EventsOut)
    def events(body: EventsIn, authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        viewer = auth.viewer(authorization)
        accepted = service.events(viewer, [ClientEvent(**e.model_dump()) for e in body.events])
        return dataclasses.asdict(accepted)

    @api.post("/posts", status_code=201, response_model=PostOut)
    def posts(body: PostIn, authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        author = auth.viewer(authorization)
        return dataclasses.asdict(service.create_post(author, PostDraft(**body.model_dump())))

    @api.get("/healthz")
    async def healthz() -> JSONResponse:
        info = await health() if health else {"models": {}}
        ok = bool(info.get("models"))
        return JSONResponse({"status": "ok" if ok else "no model", **info}, status_code=200 if ok else 503)

    return api

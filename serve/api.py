"""The HTTP API (FastAPI): routes, request and response models, status codes. Hosted by the Serve ingress
(:mod:`serve.app`) or by plain uvicorn (the benchmark), over a :class:`serve.feed.FeedService`.

- ``GET /feed/{user_id}?limit=&cursor=`` (token of ``user_id``): 200 ranked items; 400 limit over the cap
  or a bad cursor; 401; 403; 404 unknown user; 410 expired cursor; 422 bad parameter.
- ``POST /events`` (token of the viewer): 202 stored (a re-sent ``event_id`` is acknowledged in
  ``duplicates`` and stored once); 401; 404; 413 too many or too large; 422 listing every problem, nothing
  stored.
- ``POST /posts`` (token of the author): 201; 401; 404; 413; 422.
- ``GET /healthz``: 200 with the served model versions; 503 while no model is loaded.
- ``GET /``: the web page (:mod:`serve.page`), a client of the routes above.
- Only with ``auth.dev_tokens`` (a demo; else 404): ``GET /dev/users`` users to try the feed as;
  ``POST /dev/token`` a token for any user (404 unknown user; 422).

Client input never gets a 5xx. A request to a user route is authenticated from its headers before its body
is read (:class:`AuthFirst`); a body over ``feed.max_body_bytes`` is 413 from its ``Content-Length`` or as
soon as the streamed bytes pass it (FastAPI's ``max_body_size``); a body that does not parse or fit the
models is 422 with each problem's location and message and never the input itself (:func:`problems`).
Strings must be valid Unicode (no lone surrogates), numbers finite and ids int64. What the body means
(posts that exist, impressions of this viewer, times) is checked by :mod:`serve.feed` with the ingest
contract's own rules.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, Any, Literal

from fastapi import BackgroundTasks, FastAPI, Header, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator
from starlette.types import ASGIApp, Receive, Scope, Send

from pipelines.common import schema
from serve.auth import AuthError, TokenAuth
from serve.feed import FeedError, FeedService
from serve.page import add_page, demo_users
from serve.records import ClientEvent, PostDraft

INT64_MAX = 2**63 - 1
#: A 422 body lists problems until this many bytes, each string at most this long.
MAX_PROBLEM_BYTES, MAX_PROBLEM_CHARS = 1024, 100
IDEMPOTENCY = (
    "A key of your choosing per request: sent again (as a load balancer does after a replica died), the "
    "request stores nothing new. Events without event_id get <key>:<index>; a post's id derives from it."
)


def _unicode(value: str) -> str:
    """Valid Unicode only: JSON's ``\\ud800`` escapes decode to lone surrogates no log can store."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("not valid Unicode (a lone surrogate)") from None
    return value


#: A string that can be stored: valid Unicode.
Text = Annotated[str, AfterValidator(_unicode)]
#: An entity id (users, posts): an int64 that is not negative.
EntityId = Annotated[int, Field(ge=0, le=INT64_MAX)]


class Strict(BaseModel):
    """Request bodies: unknown fields are errors, floats must be finite."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Item(BaseModel):
    post_id: int
    author_id: int
    created_at: str
    modality: str
    text: str
    topics: list[str] = Field(description="The post's topics the model knows (its vocabulary's).")
    score: float = Field(description="The value model's score after re-ranking: the feed's order.")
    value: float | None = Field(
        description="The value model's score before re-ranking (feed.value_weights · probabilities); null "
        "in a fallback feed."
    )
    probabilities: dict[str, float] | None = Field(None, description="Per task; null in a fallback feed.")
    expected_dwell_s: float | None
    why: str = Field(description="A short reason this post is in the feed.")
    tags: list[str]
    position: int
    impression_id: str = Field(description="Send it back with engagement events.")
    source: Literal["friends", "suggested"] = Field(
        "friends",
        description="friends: a friend's post; suggested: a stranger's, from the retriever's index.",
    )


class ModelInfo(BaseModel):
    name: str
    arm: Literal["champion", "challenger", "chronological"] = Field(
        description="chronological: the holdout arm, newest first, no model (model.chronological_traffic)."
    )
    version: str | None
    retrieval_arm: Literal["suggestions", "friends_only"] = Field(
        "suggestions",
        description="The user's arm in the retrieval experiment, assigned independently of the model arm: "
        "friends_only is the out-of-network holdout (retrieval.holdout_traffic). An assignment, not what "
        "was served: the chronological arm and fallback feeds carry no suggestions in either.",
    )


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
    post_id: EntityId
    at: dt.datetime | None = Field(
        None, description="When it happened (a time without a zone is UTC); default now."
    )
    impression_id: Text | None = Field(
        None,
        max_length=128,
        description="The feed item's impression_id: it must be an impression of this viewer and post.",
    )
    request_id: Text | None = Field(None, max_length=128)
    position: int | None = Field(None, ge=0, le=10_000)
    dwell_ms: int | None = Field(None, ge=0, le=schema.MAX_DWELL_MS)
    event_id: Text | None = Field(
        None,
        min_length=1,
        max_length=128,
        description="Idempotency key: an event re-sent with the same id is acknowledged and stored once.",
    )

    @field_validator("at")
    @classmethod
    def _utc(cls, v: dt.datetime | None) -> dt.datetime | None:
        """A zone-less time is UTC; one outside years 1970–9998 is an error, not an overflow."""
        if v is None:
            return v
        v = v.replace(tzinfo=dt.UTC) if v.tzinfo is None else v
        if not 1970 <= v.year <= 9998:
            raise ValueError("out of range (years 1970 to 9998)")
        return v.astimezone(dt.UTC)


class EventsIn(Strict):
    events: list[EventIn] = Field(min_length=1)


class EventsOut(BaseModel):
    accepted: int = Field(description="Events stored by this request.")
    event_ids: list[str] = Field(description="Every event's id, in request order (stored or duplicate).")
    duplicates: list[str] = Field(description="Ids already stored before: acknowledged, not stored again.")


class PostIn(Strict):
    text: Text = Field(max_length=schema.MAX_TEXT_CHARS)
    modality: Literal["text", "image", "video"] = "text"
    topics: list[Annotated[Text, Field(min_length=1, max_length=64)]] = Field(
        default_factory=list, max_length=schema.MAX_TOPICS_PER_POST
    )
    visibility: Literal["public", "friends", "private"] = "friends"
    media_duration_s: float | None = Field(
        None, ge=0, le=24 * 3600, description="Required for a video (the contract's rule)."
    )
    media_vector: list[Annotated[float, Field(ge=-schema.FLOAT32_MAX, le=schema.FLOAT32_MAX)]] | None = Field(
        None, max_length=1024
    )


class PostOut(BaseModel):
    post_id: int
    created_at: str


class DevTokenIn(Strict):
    user_id: EntityId


class DevTokenOut(BaseModel):
    token: str
    user_id: int
    expires_in_s: int


def _printable(value: Any) -> str:
    """A short, encodable rendering of a location part or message (input is never echoed whole)."""
    text = str(value).encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= MAX_PROBLEM_CHARS else text[: MAX_PROBLEM_CHARS - 1] + "…"


def problems(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """The 422 body's ``detail``: each problem's location, message and type, without the input, within
    ``MAX_PROBLEM_BYTES`` (a location can be a key the client made up)."""
    out: list[dict[str, Any]] = []
    size = 0
    for e in errors:
        loc = [part if isinstance(part, int) else _printable(part) for part in e.get("loc", ())]
        item = {"loc": loc, "msg": _printable(e.get("msg", "")), "type": _printable(e.get("type", ""))}
        size += len(json.dumps(item).encode())
        if out and size > MAX_PROBLEM_BYTES:
            out.append({"loc": [], "msg": f"and {len(errors) - len(out)} more problem(s)", "type": "more"})
            break
        out.append(item)
    return out


class AuthFirst:
    """ASGI middleware: a request to a user route (``/feed/…``, ``/events``, ``/posts``) needs a valid
    bearer token before anything else happens — a missing, forged or expired one is 401 without its
    body being read or its parameters parsed. Which user the token may act for is the route's business."""

    ROUTES = ("/feed/", "/events", "/posts")

    def __init__(self, app: ASGIApp, auth: TokenAuth) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"].removeprefix(scope.get("root_path", "").rstrip("/"))
            if path.startswith(self.ROUTES):
                header = next((v for k, v in scope["headers"] if k == b"authorization"), None)
                try:
                    self.auth.viewer(header.decode("latin-1") if header is not None else None)
                except AuthError as e:
                    await _auth_response(e)(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def _auth_response(e: AuthError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
    return JSONResponse({"detail": e.detail}, status_code=e.status, headers=headers)


def create_api(
    service: FeedService,
    auth: TokenAuth,
    health: Callable[[], Awaitable[dict[str, Any]]] | None = None,
) -> FastAPI:
    """The FastAPI app over ``service``; ``health`` reports the served model versions."""
    api = FastAPI(
        title="ray-feed",
        summary="A personalized home feed: friends' recent posts ranked by a multitask model.",
        version="1",
        max_body_size=service.cfg.feed.max_body_bytes,
    )
    api.add_middleware(AuthFirst, auth=auth)

    @api.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": problems(e.errors())}, status_code=422)

    @api.exception_handler(AuthError)
    async def _auth_error(_: Request, e: AuthError) -> JSONResponse:
        return _auth_response(e)

    @api.exception_handler(FeedError)
    async def _feed_error(_: Request, e: FeedError) -> JSONResponse:
        return JSONResponse({"detail": e.detail}, status_code=e.status)

    @api.get("/feed/{user_id}", response_model=FeedResponse)
    async def feed(
        background: BackgroundTasks,
        response: Response,
        user_id: Annotated[int, Path(ge=0, le=INT64_MAX, description="The viewer; must match the token.")],
        limit: Annotated[
            int | None, Query(ge=1, le=INT64_MAX, description="Items per page (capped by feed.max_limit).")
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
    def events(
        body: EventsIn,
        authorization: Annotated[str | None, Header()] = None,
        idempotency_key: Annotated[Text | None, Header(max_length=128, description=IDEMPOTENCY)] = None,
    ) -> dict[str, Any]:
        viewer = auth.viewer(authorization)
        events = [ClientEvent(**e.model_dump()) for e in body.events]
        return dataclasses.asdict(service.events(viewer, events, idempotency_key))

    @api.post("/posts", status_code=201, response_model=PostOut)
    def posts(
        body: PostIn,
        authorization: Annotated[str | None, Header()] = None,
        idempotency_key: Annotated[Text | None, Header(max_length=128, description=IDEMPOTENCY)] = None,
    ) -> dict[str, Any]:
        author = auth.viewer(authorization)
        return dataclasses.asdict(
            service.create_post(author, PostDraft(**body.model_dump()), idempotency_key)
        )

    @api.get("/healthz")
    async def healthz() -> JSONResponse:
        info = await health() if health else {"models": {}}
        ok = bool(info.get("models"))
        return JSONResponse({"status": "ok" if ok else "no model", **info}, status_code=200 if ok else 503)

    add_page(api)
    if service.cfg.auth.dev_tokens:
        _add_dev_sign_in(api, service, auth)
    return api


#: How long ``GET /dev/users``'s answer is kept.
DEMO_USERS_TTL_S = 60.0


def _add_dev_sign_in(api: FastAPI, service: FeedService, auth: TokenAuth) -> None:
    """``GET /dev/users`` and ``POST /dev/token``: only where ``auth.dev_tokens`` is on (a demo)."""
    cached: dict[str, Any] = {"at": -DEMO_USERS_TTL_S, "users": []}
    computing = asyncio.Lock()  # one computation at a time; the others wait for its answer
    ttl = service.cfg.auth.dev_token_ttl_s

    @api.get("/dev/users", tags=["demo"], summary="Users to try the feed as (auth.dev_tokens only)")
    async def dev_users() -> dict[str, Any]:
        async with computing:
            if time.monotonic() - cached["at"] > DEMO_USERS_TTL_S:
                cached["users"] = await asyncio.to_thread(demo_users, service)
                cached["at"] = time.monotonic()
        return {"users": cached["users"]}

    @api.post("/dev/token", tags=["demo"], response_model=DevTokenOut, summary="A token for any user (demo)")
    def dev_token(body: DevTokenIn) -> dict[str, Any]:
        if not service.store.has_user(body.user_id):
            raise FeedError(404, f"unknown user {body.user_id}")
        return {"token": auth.mint(body.user_id, ttl_s=ttl), "user_id": body.user_id, "expires_in_s": ttl}

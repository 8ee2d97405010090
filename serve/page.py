"""The feed's web page, served by the same app as the API: ``GET /`` and ``/static/*`` (``serve/static/``).

The page is plain HTML, CSS and one JavaScript module: no build step, no framework, nothing fetched from
elsewhere (its Content-Security-Policy allows this origin only). It is a client of the public API like any
other — ``GET /feed``, ``POST /events``, ``POST /posts`` with a bearer token — so what it shows is what the
API serves, and ``serve/static/app.js`` reads as a reference client.

Signing in: a token pasted into the page, or, when ``auth.dev_tokens`` is on (``make demo`` turns it on;
off by default), a demo user picked from ``GET /dev/users`` (:func:`demo_users`) and a token from
``POST /dev/token`` (both routes in :mod:`serve.api`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles

from serve.feed import FeedService

STATIC = Path(__file__).with_name("static")
#: The page loads its script, style and data from this origin only; user text is never markup.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
#: How many users :func:`demo_users` proposes, and how many recent posts it reads.
DEMO_USERS, DEMO_USERS_POSTS = 12, 5000


def demo_users(service: FeedService, n: int = DEMO_USERS) -> list[dict[str, int]]:
    """Up to ``n`` users with the most posts by friends in the retrieval window: among the most active
    authors of (at most ``DEMO_USERS_POSTS``) recent posts, whose friends are likely active too, those whose
    feeds have the most to rank. Bounded reads: ``10 n`` users' friends and their posts."""
    store, now = service.store, service.clock.now()
    since = now - service.cfg.retrieval.window_days * 86400
    recent = store.recent_posts(since, now)
    if not len(recent):
        return []
    recent = recent[:: -(-len(recent) // DEMO_USERS_POSTS)]  # an even sample, DEMO_USERS_POSTS at most
    authors, counts = np.unique(store.posts(recent, ("author_id",))["author_id"], return_counts=True)
    out = []
    for user in authors[np.argsort(-counts, kind="stable")][: 10 * n].tolist():
        friends, began = store.friends(int(user))
        friends = friends[began < now]
        posts = len(store.posts_by(friends, since, now)) if len(friends) else 0
        out.append({"user_id": int(user), "friends": len(friends), "friends_posts": posts})
    out.sort(key=lambda u: (-u["friends_posts"], u["user_id"]))
    return out[:n]


class _Revalidated(StaticFiles):
    """Static files a browser revalidates (ETag) before each use: a new version's script is never mixed
    with an old page."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = "no-cache"
        return response


def add_page(api: FastAPI) -> None:
    """``GET /`` (the page) and ``/static/*`` (its script and style) on ``api``."""
    security = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff"}

    @api.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        # Behind a route prefix, Starlette redirects <prefix> to <prefix>/: the page's relative URLs (its
        # files, the API) then resolve inside the app.
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache", **security})

    api.mount("/static", _Revalidated(directory=STATIC), name="static")

"""The web page (serve/page.py, serve/static/) in a real browser: Debian's Chromium driven by Playwright,
against the session's deployed feed (tests/serving/conftest.py: ``feed`` with the demo sign-in on,
``degraded`` with it off, as by default).

``make test`` installs Chromium where it can (``apt-get install chromium`` as root); where there is none the
browser tests skip with a loud reason, or fail when ``FEED_REQUIRE_BROWSER=1`` (CI sets it: a CI that
silently skipped them would prove nothing). ``FEED_SCREENSHOTS=docs/img`` also writes the README's
screenshots there.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from serve.page import CSP
from serve.retrieval import RetrievalConfig, retrieve
from serve.store import EmbeddedStore
from tests.serving.conftest import Feed, jsonl_rows

pytestmark = pytest.mark.ray

PAGE_SIZE = 10  # serve/static/app.js
PHONE = {"width": 390, "height": 844}


def chromium() -> str | None:
    """Debian's Chromium binary (the ``chromium`` command is a wrapper script around it)."""
    for path in (os.environ.get("FEED_CHROMIUM"), "/usr/lib/chromium/chromium", shutil.which("chromium")):
        if path and Path(path).exists():
            return path
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    path = chromium()
    problem = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        problem = "the playwright package is missing (make setup-dev installs it)"
    if path is None:
        problem = "no Chromium (apt-get install chromium; make test installs it where it runs as root)"
    if problem:
        message = f"BROWSER TESTS NOT RUN: {problem}"
        if os.environ.get("FEED_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A phone-sized page with touch, in a fresh context (no storage); console errors fail the test."""
    context = browser.new_context(viewport=PHONE, has_touch=True, device_scale_factor=1)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pg.set_default_timeout(30_000)
    yield pg
    context.close()
    assert not [e for e in errors if "Failed to load resource" not in e], errors


class FeedPages:
    """The ``GET /feed`` answers a page received, in order."""

    def __init__(self, page: Any) -> None:
        self.responses: list[Any] = []
        self.bodies: list[dict[str, Any]] = []  # read before a reload makes the body unavailable
        page.on("response", lambda r: self.responses.append(r) if "/feed/" in r.url else None)

    def wait(self, n: int, page: Any, timeout_s: float = 30) -> list[dict[str, Any]]:
        deadline = time.time() + timeout_s
        while len(self.responses) < n:
            assert time.time() < deadline, f"{len(self.responses)} feed pages, waited for {n}"
            page.wait_for_timeout(100)
        self.bodies += [r.json() for r in self.responses[len(self.bodies) : n]]
        return self.bodies[:n]


#: (user, candidates now) pairs.
Sizes = list[tuple[int, int]]


@pytest.fixture(scope="module")
def by_feed_size(store: EmbeddedStore) -> Sizes:
    """(user, candidates now), largest first."""
    users = store.users(np.array(sorted(store.snapshot.users)))["user_id"].tolist()
    sizes = [(len(retrieve(store, u, store.as_of_s + 60, RetrievalConfig()).post_ids), u) for u in users]
    return [(u, n) for n, u in sorted(sizes, reverse=True)]


def sign_in(page: Any, feed: Feed, user: int) -> None:
    """Open the page and sign in as ``user`` with the keyboard: the demo form's user id field."""
    page.goto(feed.base + "/")
    field = page.get_by_label("Or any user id")
    field.fill(str(user))
    field.press("Enter")
    page.get_by_text(f"Signed in as User {user}").wait_for()


def cards(page: Any) -> list[int]:
    ids = page.locator("article.card").evaluate_all("els => els.map(e => e.dataset.postId)")
    return [int(x) for x in ids]


def wait_for_rows(root: Path, match: Callable[[dict], bool], n: int = 1, timeout_s: float = 20) -> list[dict]:
    deadline = time.time() + timeout_s
    while True:
        rows = [r for r in jsonl_rows(root) if match(r)]
        if len(rows) >= n or time.time() > deadline:
            return rows
        time.sleep(0.2)


def screenshot(page: Any, name: str, tmp: Path) -> None:
    """A small PNG of the viewport; into ``FEED_SCREENSHOTS`` too when set (the README's images)."""
    path = tmp / name
    page.screenshot(path=str(path))
    assert 5_000 < path.stat().st_size < 400_000
    out = os.environ.get("FEED_SCREENSHOTS")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(out) / name)


# ------------------------------------------------------------------------------------------ no browser
def test_page_is_served_and_demo_sign_in_is_off_by_default(feed: Feed) -> None:
    page = requests.get(feed.base + "/", timeout=30)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == CSP
    assert requests.get(feed.base + "/static/app.js", timeout=30).status_code == 200
    assert "/dev/token" in requests.get(feed.base + "/openapi.json", timeout=30).json()["paths"]

    # auth.dev_tokens is off by default (the degraded app): no such routes, here or in its schema
    off = feed.base + "/degraded"
    assert requests.get(off + "/", timeout=30).status_code == 200  # the page, with a token to paste
    assert requests.get(off + "/dev/users", timeout=30).status_code == 404
    assert requests.post(off + "/dev/token", json={"user_id": 1}, timeout=30).status_code == 404
    assert requests.get(off + "/healthz", timeout=30).json()["status"] == "no model"  # that app it is
    assert not [p for p in requests.get(off + "/openapi.json", timeout=30).json()["paths"] if "/dev/" in p]


def test_demo_sign_in_mints_tokens_for_known_users_only(feed: Feed, store: EmbeddedStore) -> None:
    users = requests.get(feed.base + "/dev/users", timeout=30).json()["users"]
    assert users
    assert all(store.has_user(u["user_id"]) for u in users)
    assert [u["friends_posts"] for u in users] == sorted((u["friends_posts"] for u in users), reverse=True)
    user = users[0]["user_id"]
    minted = requests.post(feed.base + "/dev/token", json={"user_id": user}, timeout=30).json()
    assert feed.auth.viewer("Bearer " + minted["token"]) == user
    unknown = requests.post(feed.base + "/dev/token", json={"user_id": 10**15}, timeout=30)
    assert unknown.status_code == 404
    assert "unknown user" in unknown.json()["detail"]
    for bad in ({}, {"user_id": -1}, {"user_id": "x"}, {"user_id": 2**64}):
        assert requests.post(feed.base + "/dev/token", json=bad, timeout=30).status_code == 422


# ---------------------------------------------------------------------------------------- in Chromium
def test_sign_in_scroll_like_hide_and_dwell(page: Any, feed: Feed, by_feed_size: Sizes) -> None:
    user, n = by_feed_size[0]
    assert n > 2 * PAGE_SIZE, f"the tiny world's largest feed has {n} posts: too few for 3 pages"
    pages = FeedPages(page)
    started = time.time()
    sign_in(page, feed, user)
    first = pages.wait(1, page)[0]
    page.locator("article.card").first.wait_for()

    # ranked cards: in the feed's order, each with its reason
    shown = cards(page)
    assert shown == [it["post_id"] for it in first["items"]]
    positions = page.locator("article.card").evaluate_all("els => els.map(e => +e.dataset.position)")
    assert positions == sorted(positions)
    assert page.get_by_text("Why am I seeing this?").count() == len(shown)

    # three pages by scrolling, no post twice
    for k in (2, 3):
        page.mouse.wheel(0, 20_000)
        pages.wait(k, page)
    bodies = pages.wait(3, page)
    served = [it["post_id"] for b in bodies for it in b["items"]]
    assert len(served) == len(set(served)) >= 2 * PAGE_SIZE + 1
    page.wait_for_timeout(300)
    assert cards(page) == served

    # like, with the keyboard: the event is stored with the card's impression
    page.mouse.wheel(0, -100_000)
    like_item = bodies[0]["items"][0]
    like = page.locator(f"article[data-post-id='{like_item['post_id']}']").get_by_role("button", name="Like")
    like.focus()
    page.keyboard.press("Enter")
    page.locator(f"article[data-post-id='{like_item['post_id']}'] [aria-pressed=true]").wait_for()
    log = feed.data_dir / "raw" / "engagements"

    def event(item: dict, kind: str) -> Callable[[dict], bool]:
        return lambda r: r["impression_id"] == item["impression_id"] and r["type"] == kind

    liked = wait_for_rows(log, event(like_item, "like"))
    assert liked
    assert (liked[0]["viewer_id"], liked[0]["post_id"]) == (user, like_item["post_id"])

    # hide: gone at once, stored, and not back after a reload (the feed the server ranks excludes it)
    hide_item = bodies[0]["items"][1]
    card = page.locator(f"article[data-post-id='{hide_item['post_id']}']")
    card.get_by_role("button", name="See fewer").click()
    assert card.count() == 0
    assert wait_for_rows(log, event(hide_item, "hide"))

    # dwell: the cards on screen were watched for seconds; their views arrive within a flush (5 s)
    served_ids = {it["impression_id"] for b in bodies for it in b["items"]}

    def viewed(r: dict) -> bool:
        return r["type"] == "view" and r["impression_id"] in served_ids

    # the top cards are on screen again from here on, for seconds
    assert wait_for_rows(log, lambda r: viewed(r) and r["dwell_ms"] >= 1000, timeout_s=15)
    views = wait_for_rows(log, viewed)
    elapsed_ms = (time.time() - started) * 1000
    assert all(v["viewer_id"] == user for v in views)
    per_card: dict[str, int] = {}
    for v in views:  # a card's pieces add up to at most the time it could have been on screen
        per_card[v["impression_id"]] = per_card.get(v["impression_id"], 0) + v["dwell_ms"]
    assert 0 < max(per_card.values()) <= elapsed_ms

    page.reload()
    after = pages.wait(4, page)[3]
    page.locator("article.card").first.wait_for()
    assert hide_item["post_id"] not in [it["post_id"] for it in after["items"]]
    assert hide_item["post_id"] not in cards(page)
    everything, cursor = [], None  # and on no page of a feed ranked now
    while True:
        body = feed.get(user, limit=100, **({"cursor": cursor} if cursor else {})).json()
        everything += [it["post_id"] for it in body["items"]]
        if not (cursor := body["next_cursor"]):
            break
    assert len(everything) >= 2 * PAGE_SIZE
    assert hide_item["post_id"] not in everything


def test_inspector_shows_what_ranked_each_post(
    page: Any, feed: Feed, tmp_path: Path, by_feed_size: Sizes
) -> None:
    user, _ = by_feed_size[1]
    pages = FeedPages(page)
    sign_in(page, feed, user)
    body = pages.wait(1, page)[0]
    page.locator("article.card").first.wait_for()
    screenshot(page, "feed.png", tmp_path)

    inspect = page.locator("article.card").first.locator(".inspect")
    assert not inspect.is_visible()
    toggle = page.get_by_role("button", name="Inspector")
    toggle.click()
    assert toggle.get_attribute("aria-pressed") == "true"
    assert inspect.is_visible()
    info = page.locator(".page-info").first.inner_text()
    model = body["model"]
    assert f"{model['name']} v{model['version']} ({model['arm']})" in info
    assert model["version"] in (feed.champion, feed.challenger)
    for stage in ("retrieval", "ranking", "features", "forward", "rerank", "total"):
        assert f"{stage} " in info, info
    first = body["items"][0]
    card = inspect.inner_text()
    click = first["probabilities"]["click"]
    assert f"P(click)\n{100 * click:.{2 if click < 0.1 else 1}f}%" in card, card
    assert f"{first['value']:.3f}" in card
    assert f"{first['score']:.3f}" in card
    page.get_by_text("Why am I seeing this?").first.click()
    assert page.get_by_text(first["why"]).first.is_visible()
    page.set_viewport_size({"width": PHONE["width"], "height": 1100})  # the first card's inspector too
    screenshot(page, "inspector.png", tmp_path)

    page.keyboard.press("i")  # the shortcut toggles it back
    assert toggle.get_attribute("aria-pressed") == "false"


def test_a_new_post_reaches_a_friend_as_text(
    page: Any, feed: Feed, store: EmbeddedStore, by_feed_size: Sizes
) -> None:
    now = store.as_of_s
    sizes = dict(by_feed_size)

    def readers(author: int) -> list[int]:
        """Friends of ``author`` who see the author's posts (the author is their friend too)."""
        friends, since = store.friends(author)
        return [
            int(f)
            for f, s in zip(friends.tolist(), since.tolist(), strict=True)
            if s < now and author in store.friends(int(f))[0].tolist()
        ]

    author = next(u for u, _ in by_feed_size if readers(u))
    reader = min(readers(author), key=lambda f: sizes.get(f, 0))  # the fewest posts to scroll through
    text = f"Page test {time.time_ns()}: <b>not bold</b> <img src=x onerror=alert(1)>"

    sign_in(page, feed, author)
    page.get_by_role("button", name="Write").click()
    page.get_by_label("What's new?").fill(text)
    page.get_by_label("Topics (comma-separated)").fill("page-test")
    with page.expect_response(lambda r: r.url.endswith("/posts")) as created:
        page.get_by_role("button", name="Post", exact=True).click()
    post_id = created.value.json()["post_id"]
    assert post_id > 2**52  # a new post's id: exact in JavaScript only because the page keeps ids as text
    page.get_by_text(f"Posted (post {post_id})").wait_for()

    page.get_by_role("button", name="Sign out").click()
    sign_in(page, feed, reader)
    deadline = time.time() + 60
    mine = page.locator("article.card").filter(has_text=text[:30])
    while mine.count() == 0:  # scroll the friend's feed until the post shows up
        assert time.time() < deadline, "the friend's new post never appeared"
        if page.locator("#feed-end").is_visible():
            page.get_by_role("button", name="Refresh").click()
        page.mouse.wheel(0, 20_000)
        page.wait_for_timeout(300)
    assert mine.locator(".text").inner_text() == text  # shown as text: no markup was made of it
    assert mine.locator("img, b").count() == 0
    assert mine.get_attribute("data-post-id") == str(post_id)
    mine.get_by_role("button", name="Like").click()  # the friend likes it: the event names the exact post
    mine.locator("[aria-pressed=true]").wait_for()
    liked = wait_for_rows(
        feed.data_dir / "raw" / "engagements",
        lambda r: r["viewer_id"] == reader and r["post_id"] == post_id and r["type"] == "like",
    )
    assert liked


def test_pull_to_refresh_and_labels(page: Any, feed: Feed, by_feed_size: Sizes) -> None:
    user, _ = by_feed_size[2]
    pages = FeedPages(page)
    page.goto(feed.base + "/")
    unlabeled = page.evaluate(
        """() => Array.from(document.querySelectorAll('input, select, textarea'))
                 .filter(e => !e.labels.length).map(e => e.id)"""
    )
    assert unlabeled == []
    sign_in(page, feed, user)
    first = pages.wait(1, page)[0]
    page.locator("article.card").first.wait_for()
    nameless = page.evaluate(
        "() => Array.from(document.querySelectorAll('button')).filter(b => !b.textContent.trim()).length"
    )
    assert nameless == 0

    # a finger drags the page down from the top: a new feed, ranked again
    cdp = page.context.new_cdp_session(page)
    for kind, y in (("touchStart", 200), ("touchMove", 260), ("touchMove", 330), ("touchMove", 380)):
        cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": [{"x": 200, "y": y}]})
    page.get_by_text("Release to refresh").wait_for()
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    second = pages.wait(2, page)[1]
    assert second["request_id"] != first["request_id"]
    page.wait_for_function(  # the new feed on screen, the focus in it
        "id => document.querySelector('article.card')?.dataset.postId === id"
        " && document.getElementById('feed').contains(document.activeElement)",
        arg=str(second["items"][0]["post_id"]),
    )

    # j/k walk the cards with the keyboard
    page.keyboard.press("j")
    page.keyboard.press("j")
    focused = page.evaluate("() => document.activeElement.dataset.postId")
    assert int(focused) == cards(page)[1]

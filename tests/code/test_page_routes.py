"""The page's routes (serve/page.py) on a bare FastAPI app: the page and its files, its security headers,
the redirect that keeps its relative URLs inside a prefixed app. The page in a browser, against the
deployed feed: tests/serving/test_page.py."""

from __future__ import annotations

import re

from fastapi import FastAPI
from fastapi.testclient import TestClient

from serve.page import CSP, STATIC, add_page


def client(root_path: str = "") -> TestClient:
    api = FastAPI()
    add_page(api)
    return TestClient(api, root_path=root_path)


def test_the_page_and_its_files_are_served_with_a_strict_policy() -> None:
    page = client().get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == CSP
    assert "script-src 'self'" in CSP
    assert "'unsafe-inline'" not in CSP
    assets = re.findall(r'(?:src|href)="(static/[^"]+)"', page.text)
    assert len(assets) == 2
    for asset in assets:
        got = client().get("/" + asset)
        assert got.status_code == 200, asset
        assert got.headers["cache-control"] == "no-cache"  # revalidated: never an old script on a new page


def test_the_page_loads_nothing_from_elsewhere() -> None:
    for path in STATIC.iterdir():
        text = path.read_text()
        assert not re.search(r"https?://", text), f"{path.name} refers to another origin"
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in text, f"{path.name}: {sink} (user text must never become markup or code)"


def test_behind_a_prefix_the_page_moves_under_it() -> None:
    """At ``/feed-app`` the page's ``static/app.js`` would resolve to ``/static/app.js``, outside the app."""
    prefixed = client("/feed-app")
    moved = prefixed.get("/feed-app", follow_redirects=False)
    assert moved.status_code in (307, 308)
    assert moved.headers["location"].endswith("/feed-app/")
    assert prefixed.get("/feed-app/").status_code == 200
    assert prefixed.get("/feed-app/static/app.js").status_code == 200

"""The deployed feed over real HTTP: ranked feeds and paging, auth, bad input, the challenger split,
fallback, events and posts reaching the logs and every replica."""

from __future__ import annotations

import json
import time

import jwt
import pytest

from pipelines.common.tracking import CHALLENGER, CHAMPION
from serve.ranking import arm_of
from serve.retrieval import RetrievalConfig, retrieve
from serve.store import EmbeddedStore
from tests.serving.conftest import SECRET, Feed, jsonl_rows, users_with_feeds

pytestmark = pytest.mark.ray


# ---------------------------------------------------------------------------------------------- feed
def test_feed_returns_visible_ranked_items_with_model_and_paging(feed: Feed, store: EmbeddedStore) -> None:
    (user,) = users_with_feeds(store, 1, arm=CHAMPION, minimum=6)
    r = feed.get(user, limit=3)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["user_id"] == user
    assert not body["fallback"]
    assert body["model"] == {
        "name": "feed-ranker",
        "arm": CHAMPION,
        "version": feed.champion,
        "retrieval_arm": "suggestions",
    }
    items = body["items"]
    assert len(items) == 3
    assert [it["position"] for it in items] == [0, 1, 2]
    for it in items:
        assert set(it["probabilities"]) == {"click", "like", "comment", "share", "hide", "skip"}
        assert all(0.0 <= p <= 1.0 for p in it["probabilities"].values())
        assert it["why"]
        assert it["impression_id"].startswith(body["request_id"])
    # Only posts retrieval allows (the same rules over a window covering the whole tiny world).
    allowed = retrieve(store, user, store.as_of_s + 3600, RetrievalConfig(window_days=60)).post_ids
    assert {it["post_id"] for it in items} <= set(allowed.tolist())
    assert "ranking;dur=" in r.headers["server-timing"]
    # The next page continues the same ranked list: no repeats, positions continue.
    nxt = feed.get(user, limit=3, cursor=body["next_cursor"])
    assert nxt.status_code == 200, nxt.text
    page2 = nxt.json()
    assert page2["request_id"] == body["request_id"]
    assert [it["position"] for it in page2["items"]] == list(range(3, 3 + len(page2["items"])))
    assert not {it["post_id"] for it in page2["items"]} & {it["post_id"] for it in items}


def test_openapi_docs_and_health(feed: Feed) -> None:
    spec = feed.session.get(f"{feed.base}/openapi.json", timeout=30).json()
    assert {"/feed/{user_id}", "/events", "/posts", "/healthz"} <= set(spec["paths"])
    health = feed.session.get(f"{feed.base}/healthz", timeout=30)
    assert health.status_code == 200
    assert health.json()["models"] == {CHAMPION: feed.champion, CHALLENGER: feed.challenger}


# ---------------------------------------------------------------------------------------------- auth
def test_auth_missing_forged_expired_and_someone_elses_feed(feed: Feed, store: EmbeddedStore) -> None:
    a, b = users_with_feeds(store, 2)
    url = f"{feed.base}/feed/{a}"
    assert feed.session.get(url, timeout=30).status_code == 401
    forged = jwt.encode(
        {"sub": str(a), "exp": time.time() + 60, "iss": "ray-feed"}, "x" * 40, algorithm="HS256"
    )
    assert feed.session.get(url, headers={"Authorization": f"Bearer {forged}"}, timeout=30).status_code == 401
    expired = jwt.encode(
        {"sub": str(a), "exp": time.time() - 3600, "iss": "ray-feed"}, SECRET, algorithm="HS256"
    )
    r = feed.session.get(url, headers={"Authorization": f"Bearer {expired}"}, timeout=30)
    assert r.status_code == 401
    assert "expired" in r.json()["detail"]
    assert feed.session.get(url, headers={"Authorization": "Basic abc"}, timeout=30).status_code == 401
    assert feed.session.get(url, headers=feed.headers(b), timeout=30).status_code == 403
    cursor = feed.get(a, limit=1).json()["next_cursor"]
    assert feed.get(b, cursor=cursor).status_code == 403  # a cursor is bound to its user


# ---------------------------------------------------------------------------------------- bad input
def test_bad_parameters_are_client_errors_never_5xx(feed: Feed, store: EmbeddedStore) -> None:
    (user,) = users_with_feeds(store, 1)
    assert feed.get(10**12).status_code == 404  # a valid token for a user that does not exist
    assert feed.get(user, limit=0).status_code == 422
    assert feed.get(user, limit="ten").status_code == 422
    r = feed.get(user, limit=10_000)
    assert r.status_code == 400
    assert "maximum" in r.json()["detail"]
    assert feed.get(user, cursor="not-a-cursor").status_code == 400
    good = feed.get(user, limit=1).json()["next_cursor"]
    body, sig = good.rsplit(".", 1)
    assert feed.get(user, cursor=f"{body}.{'0' * len(sig)}").status_code == 400  # tampered
    bad_path = feed.session.get(f"{feed.base}/feed/abc", headers=feed.headers(user), timeout=30)
    assert bad_path.status_code == 422


def test_a_malformed_event_batch_is_rejected_whole(feed: Feed, store: EmbeddedStore) -> None:
    (user,) = users_with_feeds(store, 1)
    items = feed.get(user, limit=2).json()["items"]
    log_dir = feed.data_dir / "raw" / "engagements"
    before = jsonl_rows(log_dir)
    good = {"type": "click", "post_id": items[0]["post_id"], "impression_id": items[0]["impression_id"]}
    cases = [
        [good, {"type": "clap", "post_id": items[0]["post_id"]}],  # unknown type
        [good, {"type": "like"}],  # missing post
        [good, {"type": "view", "post_id": items[0]["post_id"], "dwell_ms": -5}],  # out of range
        [good, {"type": "view", "post_id": items[0]["post_id"]}],  # a view without dwell
        [good, {"type": "like", "post_id": 123456789}],  # unknown post
        [good, {"type": "like", "post_id": items[0]["post_id"], "at": "2001-01-01T00:00:00Z"}],  # too old
        [good, {**good, "extra": 1}],  # unknown field
        [good, good | {"event_id": "x"}, good | {"event_id": "x"}],  # duplicate ids
    ]
    for events in cases:
        r = feed.post("/events", user, {"events": events})
        assert r.status_code == 422, (events, r.status_code, r.text)
        assert r.json()["detail"]
    assert feed.post("/events", user, {"events": []}).status_code == 422
    assert feed.post("/events", user, {"events": [good] * 501}).status_code == 413
    assert jsonl_rows(log_dir) == before  # nothing partially stored


def test_a_post_on_someone_elses_invisible_post_is_rejected(feed: Feed, store: EmbeddedStore) -> None:
    (user,) = users_with_feeds(store, 1)
    posts = store.snapshot.posts
    private = [
        int(p)
        for p, v, a in zip(
            posts, store.snapshot.post_cols["visibility"], store.snapshot.post_cols["author_id"], strict=True
        )
        if v == "private" and a != user
    ]
    assert private
    r = feed.post("/events", user, {"events": [{"type": "like", "post_id": private[0]}]})
    assert r.status_code == 422
    assert "not visible" in json.dumps(r.json())


# ------------------------------------------------------------------------------------------- A/B arms
def test_challenger_split_is_stable_and_logged(feed: Feed, store: EmbeddedStore) -> None:
    users = users_with_feeds(store, 12)
    arms = {}
    for u in users:
        body = feed.get(u, limit=2).json()
        arms[u] = body["model"]["arm"]
        assert body["model"]["arm"] == arm_of(u, 0.5)
        want = feed.champion if arms[u] == CHAMPION else feed.challenger
        assert body["model"]["version"] == want
        assert feed.get(u, limit=2).json()["model"]["arm"] == arms[u]  # stable
    assert set(arms.values()) == {CHAMPION, CHALLENGER}
    time.sleep(1.0)  # impressions are written after the response
    logged = [r for r in jsonl_rows(feed.data_dir / "raw" / "impressions") if r["viewer_id"] in arms]
    assert logged
    for row in logged:
        assert row["arm"] == arms[row["viewer_id"]]
        assert row["model_version"] == (feed.champion if row["arm"] == CHAMPION else feed.challenger)


# ------------------------------------------------------------------------------------------- fallback
def test_feed_falls_back_to_reverse_chronological_when_the_ranker_cannot_rank(
    feed: Feed, store: EmbeddedStore
) -> None:
    (user,) = users_with_feeds(store, 1, minimum=4)
    r = feed.get(user, prefix="/degraded", limit=50)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["fallback"]
    assert body["fallback_reason"] == "ranker_error"
    items = body["items"]
    assert items
    assert all(it["probabilities"] is None for it in items)
    unseen = [it["created_at"] for it in items if "seen" not in it["tags"]]
    assert unseen == sorted(unseen, reverse=True)  # newest first (seen posts after the unseen)
    assert feed.session.get(f"{feed.base}/degraded/healthz", timeout=30).status_code == 503


# ------------------------------------------------------------------------------ writes reach the logs
def test_events_and_served_impressions_are_appended_to_the_raw_logs(feed: Feed, store: EmbeddedStore) -> None:
    (user,) = users_with_feeds(store, 1)
    body = feed.get(user, limit=2).json()
    it = body["items"][0]
    events = [
        {"type": "view", "post_id": it["post_id"], "impression_id": it["impression_id"], "dwell_ms": 5300},
        {
            "type": "like",
            "post_id": it["post_id"],
            "impression_id": it["impression_id"],
            "event_id": "e-like-1",
        },
    ]
    r = feed.post("/events", user, {"events": events})
    assert r.status_code == 202, r.text
    assert r.json()["accepted"] == 2
    rows = {row["event_id"]: row for row in jsonl_rows(feed.data_dir / "raw" / "engagements")}
    like = rows["e-like-1"]
    assert like["viewer_id"] == user
    assert like["post_id"] == it["post_id"]
    assert like["type"] == "like"
    assert like["at"].endswith("+00:00")
    time.sleep(1.0)
    shown = {row["impression_id"] for row in jsonl_rows(feed.data_dir / "raw" / "impressions")}
    assert {i["impression_id"] for i in body["items"]} <= shown


def test_a_hidden_post_never_comes_back(feed: Feed, store: EmbeddedStore) -> None:
    (user,) = users_with_feeds(store, 1, minimum=5, arm=CHAMPION)
    items = feed.get(user, limit=50).json()["items"]
    target = items[0]["post_id"]
    r = feed.post("/events", user, {"events": [{"type": "hide", "post_id": target}]})
    assert r.status_code == 202, r.text
    time.sleep(0.5)
    for prefix in ("", "/degraded"):  # both apps' replicas learn it from the log
        ids = [it["post_id"] for it in feed.get(user, prefix=prefix, limit=100).json()["items"]]
        assert target not in ids, prefix


def test_a_new_post_reaches_friends_feeds_on_every_replica(feed: Feed, store: EmbeddedStore) -> None:
    viewer = users_with_feeds(store, 1, minimum=1)[0]
    friends, _ = store.friends(viewer)
    author = int(friends[0])
    r = feed.post(
        "/posts", author, {"text": "Brand new post about the harbour festival", "visibility": "friends"}
    )
    assert r.status_code == 201, r.text
    post_id = r.json()["post_id"]
    deadline = time.time() + 10
    found = {"": False, "/degraded": False}
    while time.time() < deadline and not all(found.values()):
        for prefix in found:
            ids = [it["post_id"] for it in feed.get(viewer, prefix=prefix, limit=100).json()["items"]]
            found[prefix] = found[prefix] or post_id in ids
        time.sleep(0.3)
    assert all(found.values()), found
    bad = feed.post("/posts", author, {"text": "x", "visibility": "everyone"})
    assert bad.status_code == 422
    assert feed.post("/posts", author, {"text": "x" * 30_000}).status_code == 422


def test_feed_falls_back_while_the_ranker_deployment_is_down_and_recovers(
    feed: Feed, store: EmbeddedStore
) -> None:
    import ray

    (user,) = users_with_feeds(store, 1, arm=CHAMPION)
    assert not feed.get(user).json()["fallback"]
    replicas = [
        a
        for a in ray.util.list_named_actors(all_namespaces=True)
        if "#Ranker#" in a["name"]  # SERVE_REPLICA::feed#Ranker#<id>; the degraded app has none
    ]
    assert replicas, ray.util.list_named_actors(all_namespaces=True)
    for a in replicas:
        ray.kill(ray.get_actor(a["name"], namespace=a["namespace"]), no_restart=True)
    # ray.kill is asynchronous, and Serve may start a replacement quickly: the feed is read until the
    # outage shows (every answer meanwhile a 200), not just once right after the kill.
    deadline = time.time() + 30
    while True:
        r = feed.get(user)
        assert r.status_code == 200, r.text
        body = r.json()
        if body["fallback"] or time.time() > deadline:
            break
        time.sleep(0.05)
    assert body["fallback"]
    assert body["fallback_reason"] in {"timeout", "ranker_error"}
    assert body["items"]
    deadline = time.time() + 90  # Serve replaces the dead replica; ranked feeds come back
    while time.time() < deadline and feed.get(user).json()["fallback"]:
        time.sleep(1.0)
    assert not feed.get(user).json()["fallback"]

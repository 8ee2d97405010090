"""The feed's HTTP API against hostile and broken clients, in one process (FastAPI over a FeedService on
the tiny world, no Serve): auth before the body, no 5xx for any input, short error bodies, cursors
checked, the ingest contract's rules at the door, no writing another user's labels, idempotent event ids,
and a property-based fuzzer (Schemathesis from the app's OpenAPI) asserting all of it over thousands of
generated requests."""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import hmac
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import numpy as np
import pytest
from starlette.testclient import TestClient

from serve.api import create_api
from serve.auth import TokenAuth
from serve.config import parse
from serve.feed import Clock, FeedService
from serve.log import LogTailer, ServingLog
from serve.metrics import FeedMetrics
from serve.records import ScoreRequest, Scores
from serve.retrieval import RetrievalConfig, retrieve
from serve.store import EmbeddedStore

pytestmark = pytest.mark.ray

SECRET = "hardening-tests-0123456789abcdefghijkl"
AUTH = TokenAuth(SECRET)
JSON = {"content-type": "application/json"}


async def _score(req: ScoreRequest) -> Scores:
    n = len(req.post_ids)
    probs = {t: np.full(n, 0.1, np.float32) for t in ("click", "like", "comment", "share", "hide", "skip")}
    probs["dwell"] = np.full(n, 2000.0, np.float32)
    return Scores(probs=probs, signals={}, arm=req.arm, version="7")


async def _health() -> dict[str, Any]:
    return {"models": {"champion": "7"}}


def _service(data_dir: Path, store: EmbeddedStore | None = None) -> FeedService:
    cfg = parse({"data_dir": str(data_dir), "auth": {"secret": SECRET}})
    store = store or EmbeddedStore.load(data_dir)
    return FeedService(
        cfg,
        store,
        ServingLog(data_dir, "test"),
        _score,
        Clock("snapshot", store.as_of_s, None),
        FeedMetrics(False),
        encode_text=lambda texts: np.zeros((len(texts), 8), np.float32),
    )


@dataclass
class Api:
    client: TestClient
    service: FeedService
    data_dir: Path
    viewer: int  # a user with a feed
    other: int  # another user, friends with posts too

    def headers(self, user: int, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {AUTH.mint(user)}", **extra}

    def feed(self, user: int, **params: Any) -> Any:
        return self.client.get(f"/feed/{user}", headers=self.headers(user), params=params)

    def post(self, path: str, user: int, body: Any) -> Any:
        return self.client.post(path, headers=self.headers(user), json=body)

    def raw(self, path: str, body: bytes, headers: dict[str, str]) -> Any:
        return self.client.post(path, content=body, headers={**JSON, **headers})

    def stored(self) -> tuple[int, ...]:
        """Bytes of every serving-log file, once what was submitted is on disk."""
        self.service.log.flush()
        return tuple(p.stat().st_size for p in sorted((self.data_dir / "raw").rglob("*.jsonl")))


@pytest.fixture
def api(built_world: Path, tmp_path: Path) -> Iterator[Api]:
    shutil.copytree(built_world / "online", tmp_path / "online")
    shutil.copytree(built_world / "features", tmp_path / "features")
    svc = _service(tmp_path)
    store = svc.store
    assert isinstance(store, EmbeddedStore)
    now = store.as_of_s + 60
    users = [
        int(u)
        for u in store.snapshot.users.tolist()
        if len(retrieve(store, int(u), now, RetrievalConfig()).post_ids) >= 4
    ]
    with TestClient(create_api(svc, AUTH, _health), raise_server_exceptions=False) as client:
        yield Api(client, svc, tmp_path, users[0], users[1])
    svc.log.close()


def _short_client_error(r: Any, status: int | tuple[int, ...]) -> None:
    assert r.status_code in ((status,) if isinstance(status, int) else status), (r.status_code, r.text[:300])
    assert len(r.content) < 2048, f"a {len(r.content)}-byte error body"


# -------------------------------------------------------------------------------- auth before the body
def test_anonymous_or_forged_requests_are_401_before_their_body_is_parsed(api: Api) -> None:
    forged = jwt.encode({"sub": str(api.viewer), "exp": 2**40, "iss": "ray-feed"}, "f" * 40, "HS256")
    bodies = {
        "/events": b'{"events":[{"type":"click","post_id":1,"event_id":"\\ud800"}]}',
        "/posts": b'{"text":"x","media_duration_s":NaN}',
    }
    for path, body in bodies.items():
        for headers in ({}, {"Authorization": f"Bearer {forged}"}, {"Authorization": "Bearer"}):
            r = api.raw(path, body, headers)
            _short_client_error(r, 401)
            assert r.headers["www-authenticate"] == "Bearer"
    # a huge anonymous body gets a short answer (401, or 413 from its Content-Length) and is not echoed
    _short_client_error(api.raw("/events", b"x" * (8 << 20), {}), (401, 413))


def test_bodies_over_the_cap_are_413_from_length_and_from_the_streamed_bytes(api: Api) -> None:
    big = b'{"events":["' + b"x" * (32 << 20) + b'"]}'
    _short_client_error(api.raw("/events", big, api.headers(api.viewer)), 413)

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer
        yield b'{"events":["'
        for _ in range(64):
            yield b"x" * (1 << 16)
        yield b'"]}'

    r = api.client.post("/events", content=chunks(), headers={**JSON, **api.headers(api.viewer)})
    _short_client_error(r, 413)


# ------------------------------------------------------------------------------ no 5xx, short answers
@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/events", b'{"events":[{"type":"click","post_id":9223372036854775808}]}'),
        ("/events", b'{"events":[{"type":"click","post_id":-9223372036854775809}]}'),
        ("/events", b'{"events":[{"type":"click","post_id":1,"event_id":"\\ud800"}]}'),
        ("/events", b'{"events":[{"type":"click","post_id":1,"at":"0001-01-01T00:00:00+14:00"}]}'),
        ("/events", b'{"events":[{"type":"\\ud800","post_id":1,"\\udfff":1}]}'),
        ("/events", b'{"events":' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
        ("/events", b"not json"),
        ("/events", '{"events":[{"type":"click","post_id":1,"impression_id":"a:\u00e9:\u00e9"}]}'.encode()),
        ("/posts", b'{"text":"\\ud800"}'),
        ("/posts", b'{"text":"x","media_duration_s":NaN}'),
        ("/posts", b'{"text":"x","media_vector":[Infinity]}'),
        ("/posts", b'{"text":"x","media_vector":[1e400]}'),
        ("/posts", b'{"text":"x","topics":["\\ud800"]}'),
    ],
)
def test_bad_bodies_are_short_client_errors(api: Api, path: str, body: bytes) -> None:
    before = api.stored()
    r = api.raw(path, body, api.headers(api.viewer))
    _short_client_error(r, (400, 422))
    assert api.stored() == before


def test_every_422_names_the_field_without_echoing_the_input(api: Api) -> None:
    text = "y" * 19_000 + "\ud800"
    r = api.raw("/posts", json.dumps({"text": text, "extra": "z" * 5000}).encode(), api.headers(api.viewer))
    _short_client_error(r, 422)
    assert {tuple(p["loc"]) for p in r.json()["detail"]} == {("body", "text"), ("body", "extra")}
    assert "yyyy" not in r.text
    assert "zzzz" not in r.text


def test_a_422_stays_short_however_many_made_up_keys(api: Api) -> None:
    keys = {f"{i}" + "\U0001f600" * 300: 1 for i in range(25)}
    r = api.raw("/posts", json.dumps({"text": "x", **keys}).encode(), api.headers(api.viewer))
    _short_client_error(r, 422)
    assert r.json()["detail"][-1]["type"] == "more"


def test_ids_past_int64_in_the_path_or_query_are_422(api: Api) -> None:
    headers = api.headers(api.viewer)
    _short_client_error(api.client.get(f"/feed/{2**64}", headers=headers), 422)
    _short_client_error(api.client.get(f"/feed/{api.viewer}?limit={10**30}", headers=headers), 422)


def _forge_cursor(service: FeedService, payload: Any) -> str:
    """A cursor signed with the feed's key (as someone who knows the secret could): only the checks of
    its content stand between it and the feed."""
    body = base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")
    sig = hmac.new(service._cursor_key, body.encode(), hashlib.sha256).hexdigest()[:32]
    return f"{body}.{sig}"


def test_malformed_cursors_are_400_and_cursors_always_move_forward(api: Api) -> None:
    first = api.feed(api.viewer, limit=2).json()
    rid = first["request_id"]
    for payload in (
        [api.viewer, rid, "x"],
        [api.viewer, rid, 1e300],
        [api.viewer, [rid], 2],
        [api.viewer, rid, -3],
        [api.viewer, rid, True],
        [api.viewer, rid, 10**9],
        [api.viewer, rid],
        {"a": 1},
        "x",
    ):
        _short_client_error(api.feed(api.viewer, cursor=_forge_cursor(api.service, payload)), 400)
    for cursor in ("x", "x.y", ".", "\u00e9.\u00e9", "a" * 500):
        _short_client_error(api.feed(api.viewer, cursor=cursor), 400)
    _short_client_error(api.feed(api.viewer, cursor=_forge_cursor(api.service, "1e400")), 400)
    # following next_cursor ends: every page moves forward and the last has none
    seen, cursor, pages = [], first["next_cursor"], 0
    while cursor is not None and pages < 1000:
        page = api.feed(api.viewer, limit=2, cursor=cursor).json()
        seen += [it["position"] for it in page["items"]]
        cursor, pages = page["next_cursor"], pages + 1
    assert cursor is None
    assert seen == list(range(2, 2 + len(seen)))


# ------------------------------------------------------------------- the contract's rules at the door
def _served(api: Api, user: int, n: int = 3) -> list[dict[str, Any]]:
    page = api.feed(user, limit=n).json()
    items: list[dict[str, Any]] = page["items"]
    assert len(items) >= 2
    return items


def test_events_the_ingest_contract_would_quarantine_are_422_and_store_nothing(api: Api) -> None:
    items = _served(api, api.viewer)
    it = items[0]
    created = dt_iso(api.service.store.posts(np.array([it["post_id"]]))["created_s"][0] - 3600)
    good = {"type": "click", "post_id": it["post_id"], "impression_id": it["impression_id"]}
    before = api.stored()
    cases = {
        "unknown impression": ({**good, "impression_id": "nope"}, "impression_id"),
        "before the post": ({**good, "at": created}, "at"),
        "a view without dwell": ({"type": "view", "post_id": it["post_id"]}, "dwell_ms"),
        "unknown post": ({"type": "like", "post_id": 123456789}, "post_id"),
    }
    for name, (event, field) in cases.items():
        r = api.post("/events", api.viewer, {"events": [good, event]})
        _short_client_error(r, 422)
        errors = r.json()["detail"]["errors"]
        assert {e["field"] for e in errors} == {field}, (name, errors)
        assert {e["index"] for e in errors} == {1}
    assert api.stored() == before
    for post, field in (
        ({"text": "x", "modality": "video"}, "media_duration_s"),
        ({"text": "x", "media_vector": [float("nan")]}, "media_vector"),
    ):
        r = api.raw("/posts", json.dumps(post).encode(), api.headers(api.viewer))  # NaN: Python's JSON
        _short_client_error(r, 422)
        assert field in r.text
    assert api.stored() == before
    assert (
        api.post("/posts", api.viewer, {"text": "ok", "modality": "video", "media_duration_s": 3}).status_code
        == 201
    )


def dt_iso(seconds: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat()


def test_no_one_writes_another_users_labels(api: Api) -> None:
    mine = _served(api, api.viewer)
    theirs = _served(api, api.other)
    before = api.stored()
    # another user's impression, cited by this viewer (with that user's post, or this viewer's)
    steal = _about(theirs[0])
    r = api.post("/events", api.viewer, {"events": [steal]})
    _short_client_error(r, 422)
    assert r.json()["detail"]["errors"][0]["field"] == "impression_id"
    # this viewer's impression of a different post
    swap = {"type": "like", "post_id": mine[1]["post_id"], "impression_id": mine[0]["impression_id"]}
    _short_client_error(api.post("/events", api.viewer, {"events": [swap]}), 422)
    # a reported impression must be one the feed served to this viewer
    report = {
        "type": "impression",
        "post_id": theirs[0]["post_id"],
        "impression_id": theirs[0]["impression_id"],
    }
    _short_client_error(
        api.post("/events", api.viewer, {"events": [{**report, "request_id": "r", "position": 0}]}), 422
    )
    assert api.stored() == before
    own = _about(mine[0])
    assert api.post("/events", api.viewer, {"events": [own]}).status_code == 202


# -------------------------------------------------------------------------------------- idempotency
def _about(item: dict[str, Any], kind: str = "like", **extra: Any) -> dict[str, Any]:
    """An event of ``kind`` about a served ``item``, citing its impression."""
    return {"type": kind, "post_id": item["post_id"], "impression_id": item["impression_id"], **extra}


def _engagement_lines(data_dir: Path, event_id: str) -> int:
    return sum(
        1
        for p in (data_dir / "raw" / "engagements").rglob("*.jsonl")
        for line in p.read_text().splitlines()
        if json.loads(line)["event_id"] == event_id
    )


def test_a_resent_event_id_is_acknowledged_and_stored_once_across_restarts(api: Api) -> None:
    it = _served(api, api.viewer)[0]
    event = _about(it, event_id="e-1")
    answers = [api.post("/events", api.viewer, {"events": [event]}) for _ in range(3)]
    assert [r.status_code for r in answers] == [202, 202, 202]
    assert [r.json()["duplicates"] for r in answers] == [[], ["e-1"], ["e-1"]]
    assert [r.json()["accepted"] for r in answers] == [1, 0, 0]
    assert _engagement_lines(api.data_dir, "e-1") == 1
    # a new replica (or a restart) replays the log since the snapshot: it knows the id too
    store = EmbeddedStore.load(api.data_dir)
    store.apply(LogTailer(api.data_dir, since_ms=int(store.as_of_s * 1000)).poll())
    again = _service(api.data_dir, store)
    out = again.events(api.viewer, [_client_event(event)])
    assert (out.accepted, out.duplicates) == (0, ["e-1"])
    assert _engagement_lines(api.data_dir, "e-1") == 1


def test_event_ids_are_per_viewer_one_cannot_shadow_anothers(api: Api) -> None:
    mine, theirs = _served(api, api.viewer)[0], _served(api, api.other)[0]
    for user, it in ((api.viewer, mine), (api.other, theirs)):
        event = _about(it, event_id="x")
        r = api.post("/events", user, {"events": [event]})
        assert (r.status_code, r.json()["accepted"], r.json()["duplicates"]) == (202, 1, [])
    assert _engagement_lines(api.data_dir, "x") == 2


def test_an_idempotency_key_makes_a_replayed_write_store_nothing_new(api: Api) -> None:
    it = _served(api, api.viewer)[0]
    body = {"events": [{"type": "click", "post_id": it["post_id"], "impression_id": it["impression_id"]}]}
    headers = api.headers(api.viewer, **{"Idempotency-Key": "req-1"})
    answers = [api.client.post("/events", json=body, headers=headers).json() for _ in range(2)]
    assert [a["accepted"] for a in answers] == [1, 0]
    assert answers[0]["event_ids"] == answers[1]["event_ids"] == ["req-1:0"]
    post = {"text": "once", "modality": "text"}
    created = [api.client.post("/posts", json=post, headers=headers) for _ in range(2)]
    assert [r.status_code for r in created] == [201, 201]
    assert created[0].json()["post_id"] == created[1].json()["post_id"]
    api.service.log.flush()
    lines = [p for p in (api.data_dir / "raw" / "posts").rglob("*.jsonl") for _ in p.read_text().splitlines()]
    assert len(lines) == 1


def test_a_reported_impression_of_a_served_item_is_a_duplicate(api: Api) -> None:
    it = _served(api, api.viewer)[0]
    before = api.stored()
    report = {"type": "impression", "post_id": it["post_id"], "impression_id": it["impression_id"]}
    r = api.post("/events", api.viewer, {"events": [{**report, "request_id": "r", "position": 0}]})
    assert (r.status_code, r.json()["accepted"]) == (202, 0)
    assert api.stored() == before


def test_concurrent_resends_store_once(api: Api) -> None:
    it = _served(api, api.viewer)[0]
    event = _about(it, event_id="c-1")

    async def burst() -> list[Any]:
        loop = asyncio.get_running_loop()
        calls = [
            loop.run_in_executor(None, api.service.events, api.viewer, [_client_event(event)])
            for _ in range(8)
        ]
        return list(await asyncio.gather(*calls))

    answers = asyncio.run(burst())
    assert sum(a.accepted for a in answers) == 1
    assert _engagement_lines(api.data_dir, "c-1") == 1


def _client_event(event: dict[str, Any]) -> Any:
    from serve.records import ClientEvent

    return ClientEvent(**event)


# --------------------------------------------------------------------------------------------- fuzzing
FUZZ_REQUESTS = 2000


def test_fuzzed_requests_get_no_5xx_and_rejected_ones_store_nothing(api: Api) -> None:
    """Schemathesis generates requests from the app's own OpenAPI (valid and invalid by the schema) and
    Hypothesis mixes in real user, post and impression ids and four kinds of caller (no token, forged,
    expired, the user's own): no answer is a 5xx, no error body is long, and a rejected request leaves
    every serving-log file as it was."""
    import schemathesis
    from hypothesis import HealthCheck, given, seed, settings
    from hypothesis import strategies as st
    from schemathesis.generation.modes import GenerationMode

    schema = schemathesis.openapi.from_asgi("/openapi.json", api.client.app)
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    cases = st.one_of(
        [
            op.as_strategy(mode)
            for op in operations
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
        ]
        + [
            ops.as_strategy(path_parameters={"user_id": api.viewer})
            for ops in operations
            if "{user_id}" in ops.path
        ]
    )
    items = _served(api, api.viewer, 5) + _served(api, api.other, 5)
    posts = [it["post_id"] for it in items]
    impressions = [it["impression_id"] for it in items]
    expired = jwt.encode({"sub": str(api.viewer), "exp": 1, "iss": "ray-feed"}, SECRET, "HS256")
    forged = jwt.encode({"sub": str(api.viewer), "exp": 2**40, "iss": "ray-feed"}, "f" * 40, "HS256")
    callers = {"none": {}, "forged": {"Authorization": f"Bearer {forged}"}}
    callers["expired"] = {"Authorization": f"Bearer {expired}"}
    callers["self"] = api.headers(api.viewer)
    seen: collections.Counter[tuple[str, str, int]] = collections.Counter()

    @seed(20261130)
    @settings(
        max_examples=FUZZ_REQUESTS,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[p for p in __import__("hypothesis").Phase if p.name != "shrink"],
    )
    @given(case=cases, caller=st.sampled_from(sorted(callers)), data=st.data())
    def run(case: Any, caller: str, data: Any) -> None:
        body = case.body
        if isinstance(body, dict) and isinstance(body.get("events"), list):  # real ids, mixed and matched
            for j, e in enumerate(body["events"]):
                if isinstance(e, dict) and data.draw(st.integers(0, 3)) > 0:  # most: a whole valid batch
                    post = data.draw(st.sampled_from(range(len(posts))))  # is reached often enough
                    imp = data.draw(st.sampled_from([post, post, post, None, (post + 1) % len(posts)]))
                    kind = data.draw(st.sampled_from(["click", "like", "hide", "view", e.get("type")]))
                    body["events"][j] = {
                        "type": kind,
                        "post_id": posts[post],
                        "impression_id": impressions[imp] if imp is not None else None,
                        **({"dwell_ms": data.draw(st.integers(-5, 10**7))} if kind == "view" else {}),
                        **({"event_id": e["event_id"]} if "event_id" in e else {}),
                    }
        before = api.stored()
        r = case.call(headers=callers[caller])
        seen[(case.operation.label, caller, r.status_code)] += 1
        assert r.status_code < 500, (case.as_curl_command(), r.status_code, r.text[:500])
        if r.status_code >= 400:
            assert len(r.content) < 4096, (case.as_curl_command(), len(r.content))
            assert api.stored() == before, case.as_curl_command()

    run()
    assert sum(seen.values()) >= FUZZ_REQUESTS
    statuses = {status for (_, _, status) in seen}
    assert {200, 201, 202, 401, 422} <= statuses, seen  # the fuzzer reached past auth and validation

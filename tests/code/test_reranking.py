"""Re-ranking policies: each one alone on tiny hand-made slates, then the whole chain as a property."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from serve.reranking import (
    AuthorDiversity,
    Dedup,
    Exploration,
    Fatigue,
    Freshness,
    Policy,
    RerankConfig,
    RerankContext,
    SeenDemotion,
    Slate,
    rerank,
)

NOW = 1_800_000_000.0
HOUR = 3600.0


def _slate(
    scores: Sequence[float],
    *,
    authors: Sequence[int] | None = None,
    age_h: Sequence[float] | None = None,
    hashes: Sequence[int] | None = None,
    seen: Sequence[bool] | None = None,
) -> Slate:
    """Posts 1..N with the given scores; by default distinct authors, a day old, distinct texts, unseen."""
    n = len(scores)
    return Slate(
        post_id=np.arange(1, n + 1),
        author_id=np.array(authors if authors is not None else range(100, 100 + n)),
        created_s=NOW - HOUR * np.array(age_h if age_h is not None else [24.0] * n),
        text_hash=np.array(hashes if hashes is not None else range(1000, 1000 + n)),
        score=np.array(scores, dtype=np.float64),
        seen=np.array(seen if seen is not None else [False] * n, dtype=bool),
    )


def _ctx(hidden: dict[int, int] | None = None, seed: int = 0, limit: int = 10) -> RerankContext:
    return RerankContext(now_s=NOW, hidden_authors=hidden or {}, seed=seed, limit=limit)


def _ids(slate: Slate) -> list[int]:
    return [int(p) for p in slate.post_id]


def test_slate_take_is_consistent_and_keeps_reasons() -> None:
    s = _slate([3.0, 2.0, 1.0], authors=[7, 8, 9], seen=[False, True, False])
    s.reasons[1] = ("x",)
    t = s.take(np.array([2, 1]))
    assert _ids(t) == [3, 2]
    assert t.author_id.tolist() == [9, 8]
    assert t.score.tolist() == [1.0, 2.0]
    assert t.seen.tolist() == [False, True]
    assert t.reasons == [(), ("x",)]
    t.reasons[1] = (*t.reasons[1], "y")  # tuples: a tag added to one slate never shows up in another
    assert s.reasons[1] == ("x",)
    assert len(t) == 2
    with pytest.raises(ValueError, match="length"):
        Slate(
            post_id=np.arange(2),
            author_id=np.arange(3),
            created_s=np.zeros(2),
            text_hash=np.zeros(2),
            score=np.zeros(2),
            seen=np.zeros(2, dtype=bool),
        )


def test_freshness_prefers_newer_of_equal_scores_and_halves_per_half_life() -> None:
    out = Freshness(weight=0.3, half_life_h=6.0).apply(_slate([1.0, 1.0], age_h=[30.0, 1.0]), _ctx())
    assert _ids(out) == [2, 1]
    assert out.reasons == [("fresh",), ()]

    pol = Freshness(weight=0.4, half_life_h=5.0)
    out = pol.apply(_slate([0.0, 0.0, 0.0], age_h=[0.0, 5.0, 10.0]), _ctx())
    assert out.score == pytest.approx([0.4, 0.2, 0.1])
    # a post from the future gets the full bonus, not more
    future = pol.apply(_slate([-2.0], age_h=[-3.0]), _ctx())
    assert future.score == pytest.approx([-1.6])


def test_fatigue_demotes_hidden_author_and_caps_at_max_hides() -> None:
    slate = _slate([1.0, 1.0, 0.5], authors=[7, 8, 9])
    out = Fatigue(penalty=1.0, max_hides=3).apply(slate, _ctx({7: 1}))
    assert _ids(out) == [2, 3, 1]
    assert out.reasons == [(), (), ("fatigue",)]
    assert out.score.tolist() == [1.0, 0.5, 0.0]

    capped = Fatigue(penalty=0.5, max_hides=3).apply(slate, _ctx({7: 10, 9: 2, 555: 4}))
    assert dict(zip(_ids(capped), capped.score.tolist(), strict=True)) == {1: -0.5, 2: 1.0, 3: -0.5}
    assert Fatigue().apply(slate, _ctx()).score.tolist() == [1.0, 1.0, 0.5]


def test_seen_exclude_drops_and_demote_keeps_unseen_first_in_order() -> None:
    slate = _slate([5.0, 4.0, 3.0, 2.0, 1.0], seen=[True, False, True, False, False])
    assert _ids(SeenDemotion(mode="exclude").apply(slate, _ctx())) == [2, 4, 5]
    out = SeenDemotion(mode="demote").apply(slate, _ctx())
    assert _ids(out) == [2, 4, 5, 1, 3]
    assert out.reasons == [(), (), (), ("seen",), ("seen",)]
    # a longer slate, where an unstable sort on the seen flag would shuffle within the blocks
    flags = np.random.default_rng(1).random(40) < 0.5
    long = SeenDemotion().apply(_slate(list(np.linspace(1.0, 0.0, 40)), seen=list(flags)), _ctx())
    assert _ids(long) == [i + 1 for i in np.flatnonzero(~flags)] + [i + 1 for i in np.flatnonzero(flags)]


def test_dedup_keeps_best_duplicate_and_never_merges_empty_text() -> None:
    slate = _slate([1.0, 3.0, 2.0, 0.5, 0.4], hashes=[42, 42, 0, 0, 42])
    out = Dedup().apply(slate, _ctx())
    assert _ids(out) == [2, 3, 4]
    # ties: the earlier one wins
    assert _ids(Dedup().apply(_slate([1.0, 1.0], hashes=[9, 9]), _ctx())) == [1]


@pytest.mark.parametrize(("decay", "expected"), [(0.5, [1, 4, 2, 3]), (0.0, [1, 2, 3, 4])])
def test_diversity_moves_other_author_up_only_with_decay(decay: float, expected: list[int]) -> None:
    slate = _slate([1.0, 0.95, 0.9, 0.8], authors=[1, 1, 1, 2])
    assert _ids(AuthorDiversity(decay=decay).apply(slate, _ctx())) == expected


def test_diversity_never_breaks_seen_partition() -> None:
    cfg = RerankConfig(freshness=Freshness(enabled=False))
    slate = _slate(
        [3.0, 2.9, 2.8, 2.7, 2.5, 2.4],
        authors=[1, 1, 1, 1, 2, 3],
        seen=[False, False, False, False, True, True],
    )
    out = rerank(slate, _ctx(), cfg)
    assert out.seen.tolist() == [False] * 4 + [True] * 2
    assert _ids(out)[4:] == [5, 6]
    # an unpartitioned slate (seen demotion off) is diversified as a whole
    mixed = _slate([3.0, 2.9, 2.0], authors=[1, 2, 1], seen=[False, True, False])
    assert _ids(AuthorDiversity().apply(mixed, _ctx())) == [1, 2, 3]


def _exploration_slate(n: int = 20) -> Slate:
    return _slate(list(np.linspace(2.0, 0.0, n)))


def test_exploration_is_reproducible_and_only_brings_items_from_below_the_cut() -> None:
    slate, limit = _exploration_slate(), 8
    pol = Exploration(epsilon=0.5, start=2)
    a, b = pol.apply(slate, _ctx(seed=7, limit=limit)), pol.apply(slate, _ctx(seed=7, limit=limit))
    assert _ids(a) == _ids(b)
    assert sorted(_ids(a)) == _ids(slate)  # a permutation: nothing duplicated or lost
    explored = [i for i, r in enumerate(a.reasons) if "exploration" in r]
    assert explored
    for i in range(len(a)):
        moved = int(a.post_id[i]) != int(slate.post_id[i])
        if i in explored:
            assert 2 <= i < limit
            assert int(a.post_id[i]) > limit  # came from index >= limit
        elif i < limit:
            assert not moved
    seeds = {tuple(_ids(pol.apply(slate, _ctx(seed=s, limit=limit)))) for s in range(10)}
    assert len(seeds) > 1


def test_exploration_edge_cases() -> None:
    slate = _exploration_slate()
    assert _ids(Exploration(epsilon=0.0).apply(slate, _ctx(limit=8))) == _ids(slate)
    everything = Exploration(epsilon=1.0, start=0).apply(slate, _ctx(limit=8))
    assert all(r == ("exploration",) for r in everything.reasons[:8])
    assert set(_ids(everything)[:8]) <= set(range(9, 21))
    # more slots than items below the cut: swaps stop when the pool is empty
    short = Exploration(epsilon=1.0, start=0).apply(slate, _ctx(limit=17))
    assert sorted(_ids(short)) == _ids(slate)
    assert sum(r == ("exploration",) for r in short.reasons) == 3
    # nothing below the cut, or a seen item below it: nothing to explore
    assert _ids(Exploration(epsilon=1.0).apply(slate, _ctx(limit=50))) == _ids(slate)
    seen_tail = _slate([3, 2, 1, 0, -1.0], seen=[False, False, False, True, True])
    assert _ids(Exploration(epsilon=1.0, start=0).apply(seen_tail, _ctx(limit=3))) == [1, 2, 3, 4, 5]


@pytest.mark.parametrize(
    "policy",
    [
        Freshness(enabled=False),
        Fatigue(enabled=False),
        SeenDemotion(enabled=False, mode="exclude"),
        Dedup(enabled=False),
        AuthorDiversity(enabled=False),
        Exploration(enabled=False, epsilon=1.0, start=0),
    ],
)
def test_disabled_policy_is_identity(policy: Policy) -> None:
    slate = _slate(
        [0.1, 0.9, 0.5, 0.7, 0.3],
        authors=[1, 1, 1, 2, 3],
        age_h=[0.0, 50.0, 1.0, 90.0, 2.0],
        hashes=[5, 5, 0, 6, 6],
        seen=[True, False, True, False, False],
    )
    out = policy.apply(slate, _ctx({1: 3}, limit=2))
    assert _ids(out) == _ids(slate)
    assert out.score.tolist() == slate.score.tolist()
    assert out.reasons == slate.reasons


def test_all_disabled_rerank_is_identity_and_defaults_change_order() -> None:
    slate = _slate([1.0, 0.9, 0.8], authors=[1, 1, 2], seen=[True, False, False])
    off = RerankConfig.model_validate({name: {"enabled": False} for name in RerankConfig.model_fields})
    assert _ids(rerank(slate, _ctx(), off)) == [1, 2, 3]
    assert _ids(rerank(slate, _ctx(), RerankConfig())) == [2, 3, 1]


def test_config_from_yaml_shape_and_policy_order() -> None:
    cfg = RerankConfig.model_validate(
        {"seen": {"mode": "exclude"}, "exploration": {"epsilon": 0.1, "start": 5}, "diversity": {"decay": 0}}
    )
    assert cfg.seen.mode == "exclude"
    assert [type(p).__name__ for p in cfg.policies()] == [
        "Freshness",
        "Fatigue",
        "SeenDemotion",
        "Dedup",
        "AuthorDiversity",
        "Exploration",
        "SuggestedCap",
    ]


@pytest.mark.parametrize(
    "raw",
    [
        {"freshnes": {}},
        {"freshness": {"wieght": 1.0}},
        {"freshness": {"weight": -0.1}},
        {"freshness": {"half_life_h": 0}},
        {"fatigue": {"penalty": -1}},
        {"fatigue": {"max_hides": 0}},
        {"seen": {"mode": "hide"}},
        {"dedup": {"by": "text"}},
        {"diversity": {"decay": -0.5}},
        {"exploration": {"epsilon": 1.5}},
        {"exploration": {"epsilon": -0.1}},
        {"exploration": {"start": -1}},
    ],
)
def test_config_rejects_unknown_keys_and_out_of_range_values(raw: dict[str, dict[str, object]]) -> None:
    with pytest.raises(ValidationError):
        RerankConfig.model_validate(raw)


def test_policies_are_frozen() -> None:
    with pytest.raises(ValidationError):
        Freshness().weight = 2.0  # type: ignore[misc]


@st.composite
def _slates(draw: st.DrawFn) -> Slate:
    n = draw(st.integers(0, 60))
    ints = st.lists(st.integers(1, 6), min_size=n, max_size=n)
    return _slate(
        draw(st.lists(st.floats(-5, 5), min_size=n, max_size=n)),
        authors=draw(ints),
        age_h=draw(st.lists(st.floats(-2, 100), min_size=n, max_size=n)),
        hashes=[h - 1 for h in draw(ints)],  # 0 (no text) .. 5
        seen=draw(st.lists(st.booleans(), min_size=n, max_size=n)),
    )


@settings(max_examples=50, deadline=None)
@given(
    slate=_slates(),
    mode=st.sampled_from(["demote", "exclude"]),
    epsilon=st.floats(0, 1),
    limit=st.integers(0, 70),
    seed=st.integers(0, 2**32),
    hidden=st.dictionaries(st.integers(1, 6), st.integers(0, 9)),
)
def test_rerank_returns_subset_permutation_without_duplicates(
    slate: Slate, mode: str, epsilon: float, limit: int, seed: int, hidden: dict[int, int]
) -> None:
    cfg = RerankConfig.model_validate({"seen": {"mode": mode}, "exploration": {"epsilon": epsilon}})
    out = rerank(slate, _ctx(hidden, seed=seed, limit=limit), cfg)
    ids = _ids(out)
    assert len(ids) == len(set(ids))
    assert set(ids) <= set(_ids(slate))
    assert len(out.reasons) == len(out) == len(out.score) == len(out.seen)
    # no two kept items share a non-empty text; no seen item is kept when excluded, or before an unseen one
    texts = [int(h) for h in out.text_hash if h != 0]
    assert len(texts) == len(set(texts))
    if mode == "exclude":
        assert not out.seen.any()
    assert np.all(out.seen[:-1] <= out.seen[1:])
    # every post either kept or removed as a duplicate / an excluded seen post
    dropped = set(_ids(slate)) - set(ids)
    for pid in dropped:
        i = pid - 1
        assert slate.text_hash[i] != 0 or (mode == "exclude" and slate.seen[i])


def _reference_diversity(score: np.ndarray, author: np.ndarray, decay: float) -> list[int]:
    """The O(N^2) definition: repeatedly place the remaining item with the best effective score."""
    placed: dict[int, int] = {}
    remaining = list(range(len(score)))
    out = []
    while remaining:
        best = max(remaining, key=lambda i: (float(score[i]) - decay * placed.get(int(author[i]), 0), -i))
        out.append(best)
        remaining.remove(best)
        placed[int(author[best])] = placed.get(int(author[best]), 0) + 1
    return out


@pytest.mark.parametrize("decay", [0.0, 0.05, 0.5])
def test_diversity_matches_quadratic_reference(decay: float) -> None:
    rng = np.random.default_rng(3)
    n = 300
    score = np.round(rng.normal(size=n), 1)  # rounded: plenty of ties to exercise the tie-break
    author = rng.integers(0, 25, size=n)
    slate = _slate(list(score), authors=list(author))
    out = AuthorDiversity(decay=decay, horizon=n).apply(slate, _ctx())
    assert [int(p) - 1 for p in out.post_id] == _reference_diversity(score, author, decay)
    # With a shorter horizon the head is the same and the tail is in score order.
    short = AuthorDiversity(decay=decay, horizon=50).apply(slate, _ctx())
    assert [int(p) - 1 for p in short.post_id[:50]] == _reference_diversity(score, author, decay)[:50]
    tail = short.score[50:]
    assert np.all(tail[:-1] >= tail[1:])
    assert sorted(_ids(short)) == sorted(_ids(slate))


def test_diversity_runs_on_a_large_slate() -> None:
    rng = np.random.default_rng(0)
    n = 2000
    slate = _slate(list(rng.normal(size=n)), authors=list(rng.integers(0, 200, size=n)))
    out = AuthorDiversity(decay=0.3).apply(slate, _ctx())
    assert sorted(_ids(out)) == _ids(slate)
    first = out.author_id[:200]
    assert len(set(first.tolist())) > 150  # the top of the page is spread over many authors


def test_suggested_items_stay_within_their_share_of_every_prefix() -> None:
    from serve.reranking import SuggestedCap

    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(1, 40))
        slate = Slate(
            post_id=np.arange(n),
            author_id=np.arange(n),
            created_s=np.zeros(n),
            text_hash=np.zeros(n),
            score=-np.arange(n, dtype=float),
            seen=np.zeros(n, bool),
            suggested=rng.random(n) < 0.7,
        )
        share = float(rng.choice([0.0, 0.25, 0.5, 1.0]))
        out = SuggestedCap(max_share=share).apply(slate, _ctx())
        assert sorted(out.post_id.tolist()) == list(range(n))  # nothing lost
        placed = np.cumsum(out.suggested)
        fits = np.ceil(share * np.arange(1, n + 1) - 1e-9)
        # Every prefix within the share, until only suggested items are left (they go last, in order).
        tail = np.flatnonzero(~out.suggested)
        end = tail[-1] + 1 if len(tail) else 0
        assert (placed[:end] <= fits[:end]).all()
        assert all(("suggested" in r) == bool(s) for r, s in zip(out.reasons, out.suggested, strict=True))
        friends = out.post_id[~out.suggested]
        assert friends.tolist() == sorted(friends.tolist())  # friends' posts keep their order

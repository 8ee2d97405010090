"""Re-ranking: the feed's last stage, small YAML-configurable policies applied to the ranked candidates.

The ranker scores each candidate alone; re-ranking turns those scores into a page. In order, :func:`rerank`
applies :class:`Freshness` (an additive bonus that halves every ``half_life_h``), :class:`Fatigue` ("see
fewer" after the viewer hid or reported an author), :class:`SeenDemotion` (already shown items go last or
go away), :class:`Dedup` (one post per identical text), :class:`AuthorDiversity` (a greedy order that
penalises an author's k-th item by ``decay * k``), :class:`Exploration` (epsilon-greedy swaps of items
from below the cut into the page) and :class:`SuggestedCap` (out-of-network items at most a share of the
page, tagged). Scores are in value-model units and may be negative, so every
adjustment is additive. Each policy is a frozen pydantic model with ``enabled``; a disabled one is the
identity. The caller takes the first ``ctx.limit`` items of the result.

Example::

    >>> import numpy as np
    >>> now = 1_000_000.0
    >>> slate = Slate(
    ...     post_id=np.array([1, 2, 3, 4]), author_id=np.array([7, 7, 8, 9]),
    ...     created_s=np.array([now - 86400, now - 86400, now, now - 86400]),
    ...     text_hash=np.array([11, 12, 13, 11]), score=np.array([2.0, 1.9, 1.5, 1.8]),
    ...     seen=np.zeros(4, dtype=bool),
    ... )
    >>> ctx = RerankContext(now_s=now, hidden_authors={}, seed=0, limit=3)
    >>> out = rerank(slate, ctx, RerankConfig())
    >>> out.post_id.tolist()    # 4 repeats 1's text; 2 pays 0.5 as author 7's second item; 3 is fresh
    [1, 3, 2]
    >>> out.reasons
    [(), ('fresh',), ()]
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

import numpy as np
from pydantic import Field

from pipelines.common.config import StrictConfig


@dataclass
class Slate:
    """Candidates of one feed request after ranking, one entry per candidate (arrays of equal length N)."""

    post_id: np.ndarray  # int64
    author_id: np.ndarray  # int64
    created_s: np.ndarray  # float64, epoch seconds
    text_hash: np.ndarray  # int64, hash of the normalized text; 0 = no text (never a duplicate)
    score: np.ndarray  # float64, value-model score: higher is better, may be negative
    seen: np.ndarray  # bool, already shown to this viewer
    # Tags added by policies, one immutable tuple per candidate (shared freely between slates); empty → ().
    reasons: list[tuple[str, ...]] = field(default_factory=list)
    # Out-of-network (retrieved by the two-tower index, not from friends); empty → none.
    suggested: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))

    def __post_init__(self) -> None:
        self.post_id = np.asarray(self.post_id, dtype=np.int64)
        self.author_id = np.asarray(self.author_id, dtype=np.int64)
        self.created_s = np.asarray(self.created_s, dtype=np.float64)
        self.text_hash = np.asarray(self.text_hash, dtype=np.int64)
        self.score = np.asarray(self.score, dtype=np.float64)
        self.seen = np.asarray(self.seen, dtype=bool)
        n = len(self.post_id)
        if not self.reasons:
            self.reasons = [()] * n
        self.suggested = np.asarray(self.suggested, dtype=bool)
        if len(self.suggested) == 0:
            self.suggested = np.zeros(n, bool)
        arrays = (self.author_id, self.created_s, self.text_hash, self.score, self.seen, self.suggested)
        lengths = {len(a) for a in arrays}
        if lengths | {len(self.reasons)} != {n}:
            raise ValueError(f"Slate fields must all have length {n}")

    def __len__(self) -> int:
        return len(self.post_id)

    def take(self, idx: np.ndarray) -> Slate:
        """The candidates at ``idx``, in that order (every field consistently)."""
        idx = np.asarray(idx, dtype=np.int64)
        return Slate(
            post_id=self.post_id[idx],
            author_id=self.author_id[idx],
            created_s=self.created_s[idx],
            text_hash=self.text_hash[idx],
            score=self.score[idx],
            seen=self.seen[idx],
            reasons=list(map(self.reasons.__getitem__, idx.tolist())),
            suggested=self.suggested[idx],
        )


@dataclass
class RerankContext:
    """Per-request inputs of the policies."""

    now_s: float
    hidden_authors: dict[int, int]
    seed: int
    limit: int


class Policy(Protocol):
    """One re-ranking step."""

    @property
    def enabled(self) -> bool: ...

    def apply(self, slate: Slate, ctx: RerankContext) -> Slate: ...


def _tag(reasons: list[tuple[str, ...]], mask: np.ndarray, tag: str) -> list[tuple[str, ...]]:
    """``reasons`` with ``tag`` added where ``mask``: a new list touching only the tagged entries (``reasons``
    itself when nothing is tagged; lists are never changed in place, so slates may share one)."""
    hit = np.flatnonzero(mask).tolist()
    if not hit:
        return reasons
    out = list(reasons)
    for i in hit:
        out[i] = (*out[i], tag)
    return out


def _by_score(slate: Slate) -> Slate:
    """Stable sort by descending score (ties keep their current order)."""
    return slate.take(np.argsort(-slate.score, kind="stable"))


class _Base(StrictConfig, frozen=True):
    enabled: bool = True

    def apply(self, slate: Slate, ctx: RerankContext) -> Slate:
        """The re-ranked slate; the input unchanged when the policy is disabled or the slate is empty."""
        if not self.enabled or len(slate) == 0:
            return slate
        return self._apply(slate, ctx)

    def _apply(self, slate: Slate, ctx: RerankContext) -> Slate:
        raise NotImplementedError


class Freshness(_Base):
    """``score += weight * 0.5 ** (age_h / half_life_h)``, then re-sort; tag ``fresh`` while younger than
    one half-life."""

    weight: float = Field(0.3, ge=0)
    half_life_h: float = Field(6.0, gt=0)

    def _apply(self, slate: Slate, ctx: RerankContext) -> Slate:
        age_h = np.maximum(ctx.now_s - slate.created_s, 0.0) / 3600.0
        bonus = self.weight * 0.5 ** (age_h / self.half_life_h)
        fresh = bonus > self.weight / 2
        return _by_score(
            replace(slate, score=slate.score + bonus, reasons=_tag(slate.reasons, fresh, "fresh"))
        )


class Fatigue(_Base):
    """``score -= penalty * min(hides of the author, max_hides)``, then re-sort; tag ``fatigue``."""

    penalty: float = Field(1.0, ge=0)
    max_hides: int = Field(3, ge=1)

    def _apply(self, slate: Slate, ctx: RerankContext) -> Slate:
        if not ctx.hidden_authors:
            return slate
        keys = np.array(sorted(ctx.hidden_authors), dtype=np.int64)
        counts = np.array([ctx.hidden_authors[int(k)] for k in keys], dtype=np.float64)
        pos = np.minimum(np.searchsorted(keys, slate.author_id), len(keys) - 1)
        hides = np.where(keys[pos] == slate.author_id, np.minimum(counts[pos], self.max_hides), 0.0)
        hit = hides > 0
        score = slate.score - self.penalty * hides
        return _by_score(replace(slate, score=score, reasons=_tag(slate.reasons, hit, "fatigue")))


class SeenDemotion(_Base):
    """Seen items are dropped (``exclude``) or moved after every unseen one, order kept (``demote``)."""

    mode: Literal["demote", "exclude"] = "demote"

    def _apply(self, slate: Slate, ctx: RerankContext) -> Slate:
        unseen, seen = np.flatnonzero(~slate.seen), np.flatnonzero(slate.seen)
        if self.mode == "exclude":
            return slate.take(unseen)
        out = slate.take(np.concatenate([unseen, seen]))
        out.reasons = _tag(out.reasons, out.seen, "seen")
        return out


class Dedup(_Base):
    """Among candidates with the same non-zero ``text_hash`` keep the highest-scored (earliest on ties)."""

    def _apply(self, slate: Slate, ctx: RerankContext) -> Slate:
        order = np.argsort(-slate.score, kind="stable")
        _, first = np.unique(slate.text_hash[order], return_index=True)
        keep = slate.text_hash == 0
        keep[order[first]] = True
        return slate.take(np.flatnonzero(keep))


class AuthorDiversity(_Base):
    """Greedy order by ``score - decay * k`` (k = the author's items already placed), ties by position.

    Runs separately on the unseen then the seen block when the slate is partitioned, so it never undoes
    :class:`SeenDemotion`. An author's items are consumed in descending score order and their effective
    scores only fall, so the greedy equals one vectorized sort (O(N log N), no Python loop). Only the first
    ``horizon`` slots follow it (what feeds are read to); the rest follow in score order.
    """

    decay: float = Field(0.5, ge=0)
    horizon: int = Field(200, ge=1, description="Slots placed by the greedy; the rest by score.")

    def _apply(self, slate: Slate, ctx: RerankContext) -> Slate:
        seen = slate.seen
        if np.all(seen[:-1] <= seen[1:]):  # partitioned: unseen block, then seen block
            blocks = [np.flatnonzero(~seen), np.flatnonzero(seen)]
        else:
            blocks = [np.arange(len(slate))]
        order = [b[self._greedy(slate.score[b], slate.author_id[b])] for b in blocks if len(b)]
        return slate.take(np.concatenate(order))

    def _greedy(self, score: np.ndarray, author: np.ndarray) -> np.ndarray:
        n = len(score)
        by_author = np.lexsort((np.arange(n), -score, author))  # author, then score desc, then position
        grouped = author[by_author]
        starts = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]])
        k = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))  # rank within the author
        effective = np.empty(n)
        effective[by_author] = score[by_author] - self.decay * k
        # Each author's effective scores fall with k, so the greedy (always place the best head) is the
        # k-way merge of sorted runs: one sort by (effective desc, position).
        order = np.lexsort((np.arange(n), -effective))
        placed = min(n, self.horizon)
        if placed == n:
            return order
        left = np.sort(order[placed:])
        return np.concatenate([order[:placed], left[np.argsort(-score[left], kind="stable")]])


class Exploration(_Base):
    """With probability ``epsilon`` per slot in ``[start, limit)``, swap in a random unseen item from below
    the cut (without replacement; ``default_rng(ctx.seed)``, so reproducible); tag ``exploration``.

    Only unseen items are drawn, so a demoted seen item never comes back above the cut.
    """

    epsilon: float = Field(0.0, ge=0, le=1)
    start: int = Field(3, ge=0)

    def _apply(self, slate: Slate, ctx: RerankContext) -> Slate:
        cut = max(ctx.limit, 0)
        pool = (np.flatnonzero(~slate.seen[cut:]) + cut).tolist()
        end = min(cut, len(slate))
        if self.epsilon == 0 or end <= self.start or not pool:
            return slate
        rng = np.random.default_rng(ctx.seed)
        slots = np.flatnonzero(rng.random(end - self.start) < self.epsilon) + self.start
        perm = np.arange(len(slate))
        swapped = np.zeros(len(slate), dtype=bool)
        for slot in slots[: len(pool)]:
            j = pool.pop(int(rng.integers(len(pool))))
            perm[slot], perm[j] = perm[j], perm[slot]
            swapped[slot] = True
        out = slate.take(perm)
        out.reasons = _tag(out.reasons, swapped, "exploration")
        return out


class SuggestedCap(_Base):
    """Out-of-network items ("Suggested for you"), tagged ``suggested``, fill at most
    ``ceil(max_share * L)`` of every first-L slots within the first ``horizon`` (one over the share waits
    for the next slot it fits); the rest keep their order.

    >>> sl = Slate(post_id=np.arange(4), author_id=np.arange(4), created_s=np.zeros(4),
    ...            text_hash=np.zeros(4), score=np.array([4.0, 3, 2, 1]), seen=np.zeros(4, bool),
    ...            suggested=np.array([True, True, False, False]))
    >>> out = SuggestedCap(max_share=0.5).apply(sl, RerankContext(0, {}, 0, 4))
    >>> out.post_id.tolist(), out.reasons[0], out.reasons[1]
    ([0, 2, 1, 3], ('suggested',), ())
    """

    max_share: float = Field(
        0.5, ge=0, le=1, description="At most ceil(max_share * L) suggestions in the first L slots."
    )
    horizon: int = Field(200, ge=1)

    def _apply(self, slate: Slate, ctx: RerankContext) -> Slate:
        if not slate.suggested.any():
            return slate
        n = len(slate)
        head = min(n, self.horizon)
        order: list[int] = []
        waiting: list[int] = []
        placed = 0  # suggested items in ``order``
        for i in range(head):
            (waiting if slate.suggested[i] else order).append(i)
            # The next slot may hold a suggested item while they stay within the share of the prefix.
            while waiting and placed + 1 <= math.ceil(self.max_share * (len(order) + 1) - 1e-9):
                order.append(waiting.pop(0))
                placed += 1
        tail = [*waiting, *range(head, n)]  # suggested items that never fit the share, then the rest
        out = slate.take(np.array(order + tail, np.int64))
        out.reasons = _tag(out.reasons, out.suggested, "suggested")
        return out


class RerankConfig(StrictConfig, frozen=True):
    """The ``rerank`` section of the serving YAML: one entry per policy, applied in field order."""

    freshness: Freshness = Freshness()
    fatigue: Fatigue = Fatigue()
    seen: SeenDemotion = SeenDemotion()
    dedup: Dedup = Dedup()
    diversity: AuthorDiversity = AuthorDiversity()
    exploration: Exploration = Exploration()
    suggested: SuggestedCap = SuggestedCap()

    def policies(self) -> list[Policy]:
        """The policies in application order."""
        return [
            self.freshness,
            self.fatigue,
            self.seen,
            self.dedup,
            self.diversity,
            self.exploration,
            self.suggested,
        ]


def rerank(slate: Slate, ctx: RerankContext, cfg: RerankConfig) -> Slate:
    """Apply every policy of ``cfg`` in order; the caller takes the first ``ctx.limit`` of the result."""
    for policy in cfg.policies():
        slate = policy.apply(slate, ctx)
    return slate

"""A client of the feed (the simulated users) retries a shed request after its Retry-After, and only that."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipelines.simulate.users import shed_retry


@dataclass
class Answer:
    status_code: int
    headers: dict[str, str] = field(default_factory=dict)


def test_a_shed_request_is_retried_after_retry_after_until_it_is_answered() -> None:
    answers = iter([Answer(503, {"Retry-After": "0"}), Answer(503, {"Retry-After": "0"}), Answer(200)])
    calls: list[int] = []

    def call() -> Answer:
        calls.append(1)
        return next(answers)

    assert shed_retry(call).status_code == 200
    assert len(calls) == 3


def test_other_answers_are_returned_as_they_are() -> None:
    for answer in (Answer(503), Answer(500), Answer(422), Answer(202)):  # a 503 without Retry-After too
        calls: list[int] = []

        def call(a: Answer = answer, seen: list[int] = calls) -> Answer:
            seen.append(1)
            return a

        assert shed_retry(call) is answer
        assert len(calls) == 1


def test_it_gives_up_after_its_attempts() -> None:
    calls: list[int] = []

    def call() -> Answer:
        calls.append(1)
        return Answer(503, {"Retry-After": "0"})

    assert shed_retry(call, attempts=3).status_code == 503
    assert len(calls) == 3

"""The agent's one retry policy: what is retried (by error type), how long it waits (full jitter,
capped), and the budget of a retried call."""

from __future__ import annotations

import asyncio
import random

import pytest
from mloc_agent.retries import Backoff, retryable, retryable_registration, with_retries
from mloc_shared.errors import (
    BadRequest,
    Conflict,
    LeaseLost,
    MlocError,
    NotFound,
    ProtocolMismatch,
    TransportFault,
    Unauthorized,
    Unavailable,
    ValidationFailed,
    error_from_body,
)


@pytest.mark.parametrize(("error", "retried"), [
    (TransportFault("ConnectionResetError"), True),
    (Unavailable("database locked"), True),
    (error_from_body(502, {}), True),
    (MlocError("internal"), True),
    (BadRequest("x"), False),
    (Unauthorized("x"), False),
    (NotFound("x"), False),
    (ValidationFailed("x"), False),
    (Conflict("x"), False),
    (error_from_body(409, {"error": {"code": "lease_lost", "message": "gone"}}), False),
    (ProtocolMismatch("x"), False),
    (ValueError("not from the client"), False),
])
def test_faults_and_5xx_are_retried_other_answers_are_definitive(error: Exception, retried: bool) -> None:
    assert retryable(error) is retried


def test_registration_also_waits_out_a_name_still_held() -> None:
    assert retryable_registration(Conflict("an agent named x is connected right now"))
    assert retryable_registration(TransportFault("refused"))
    assert retryable_registration(error_from_body(429, {"error": {"code": "rate_limited"}}))  # later, not never
    assert not retryable(error_from_body(429, {}))  # only registration waits a rate limit out
    assert not retryable_registration(ProtocolMismatch("too old"))
    assert not retryable_registration(Unauthorized("bad join token"))


def test_a_lost_lease_is_a_conflict_in_the_tree() -> None:
    lost = error_from_body(409, {"error": {"code": "lease_lost"}})
    assert isinstance(lost, LeaseLost) and isinstance(lost, Conflict)
    assert isinstance(TransportFault("x"), MlocError)


class Highest(random.Random):
    """Always the top of the jitter range: the ceilings themselves."""

    def uniform(self, a: float, b: float) -> float:
        return b


def test_waits_double_up_to_the_cap_and_start_over_after_a_success() -> None:
    backoff = Backoff(0.5, 30.0, rng=Highest())
    assert [backoff.next_s() for _ in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    backoff.reset()
    assert backoff.next_s() == 0.5


def test_waits_are_fully_jittered_below_their_ceiling() -> None:
    backoff = Backoff(0.2, 10.0, rng=random.Random(7))
    waits = [backoff.next_s() for _ in range(200)]
    assert all(0 <= w <= min(10.0, 0.2 * 2**i) for i, w in enumerate(waits))
    assert min(waits[10:]) < 2 < max(waits[10:])  # spread over the whole range, not bunched at the top
    huge = Backoff(1.0, 5.0)
    huge.tries = 10_000
    assert 0 <= huge.next_s() <= 5.0


def test_a_retried_call_returns_once_it_succeeds() -> None:
    calls = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise TransportFault("connection reset")
        return "ok"

    assert asyncio.run(with_retries(flaky, 60, "flaky")) == "ok"
    assert len(calls) == 3


def test_a_definitive_answer_is_not_retried() -> None:
    calls = []

    async def refused() -> None:
        calls.append(1)
        raise LeaseLost("gone")

    with pytest.raises(LeaseLost):
        asyncio.run(with_retries(refused, 60, "refused"))
    assert len(calls) == 1


def test_retries_stop_when_the_budget_is_spent() -> None:
    now = [0.0]
    calls = []

    async def down() -> None:
        calls.append(1)
        now[0] += 40.0  # each try takes 40 s of the budget (a connect timeout)
        raise Unavailable("down")

    with pytest.raises(Unavailable):
        asyncio.run(with_retries(down, 100, "down", clock=lambda: now[0]))
    assert len(calls) == 3  # tries start at 0, 40 and 80 s; at 120 s the budget is spent

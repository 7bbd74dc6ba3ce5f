"""Fixtures of the fault suite: the scale, a seeded random source, a NAT network, and a report that
prints what each scenario did (live with ``-s``, and in a summary section at the end of the run)."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator

import pytest

from tests.chaos import scale as scales

SUMMARY: list[str] = []


class Report:
    """What a scenario did and the counts it checked, one line each."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.started = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def __call__(self, message: str) -> None:
        line = f"[{self.name}] {message}"
        print(line, flush=True)
        SUMMARY.append(line)


@pytest.fixture
def scale() -> scales.Scale:
    return scales.current()


@pytest.fixture
def report(request: pytest.FixtureRequest, scale: scales.Scale) -> Iterator[Report]:
    rep = Report(request.node.name)
    rep(f"scale {scale.name} (MLOC_CHAOS_SCALE)")
    yield rep
    failed = getattr(request.node, "chaos_failed", False)
    rep(f"{'FAILED' if failed else 'passed'} after {rep.elapsed():.1f}s")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    outcome = yield
    if outcome.get_result().failed:
        item.chaos_failed = True  # type: ignore[attr-defined]


@pytest.fixture
def rng(report: Report) -> random.Random:
    """Random kill moments, reproducible with MLOC_CHAOS_SEED."""
    seed = int(os.environ.get("MLOC_CHAOS_SEED") or random.SystemRandom().randrange(1 << 31))
    report(f"seed {seed} (MLOC_CHAOS_SEED={seed} replays the same random choices)")
    return random.Random(seed)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if SUMMARY:
        terminalreporter.section("chaos: what each scenario did and checked")
        for line in SUMMARY:
            terminalreporter.write_line(line)

"""What a test needs from the machine, and what happens when it is not there.

Under `make test` (MLOC_TEST_STRICT=1, after tests/setup/ has installed everything) a missing
prerequisite is a failure: a quiet skip would let a green run hide whole suites. Run by hand,
without that variable, the same tests skip with the reason.
"""

from __future__ import annotations

import os

import pytest

STRICT = os.environ.get("MLOC_TEST_STRICT") == "1"


def missing(reason: str) -> None:
    """Skip the test, or fail it under make test, because ``reason`` is not met on this machine."""
    if STRICT:
        pytest.fail(f"{reason} (make test sets this up: tests/setup/system-packages.sh)", pytrace=False)
    pytest.skip(reason)

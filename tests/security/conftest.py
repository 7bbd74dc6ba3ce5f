"""The attack tests' coordinator starts as a real first start does (it writes its own admin.token);
``@pytest.mark.coordinator(...)`` passes settings to it (extra_env, lease_ttl_s, poll_hold_s, ...)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Coordinator
from tests.ml.conftest import file_server, offline  # noqa: F401  (fixtures: Hub access off, a local HTTP server)
from tests.security.users import admin_from_file


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "coordinator(**settings): settings of the attack tests' coordinator")


@pytest.fixture
def coordinator(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Coordinator]:
    marker = request.node.get_closest_marker("coordinator")
    coord = admin_from_file(tmp_path, **(marker.kwargs if marker else {}))
    try:
        yield coord
    finally:
        coord.stop()

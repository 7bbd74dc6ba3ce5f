"""Authentication decided on the coordinator's injected clock, in-process (app.open_state on a real
SQLite file, a ManualClock): token expiry checked on every use, and registration's rules."""

from __future__ import annotations

import pytest
from mloc_server.state import AppState
from mloc_shared.errors import Unauthorized

from tests.test_leasing_clock import clock_of, settings, st  # noqa: F401  (fixtures)

pytestmark = pytest.mark.timeout(10)
REMOTE = "203.0.113.9"  # not loopback: only the token counts


async def test_a_user_token_is_refused_from_the_moment_it_expires(st: AppState) -> None:  # noqa: F811
    _, secret = await st.auth.create_token("user", user="temp", ttl_s=30)
    header = f"Bearer {secret}"
    assert st.auth.user(header, REMOTE, False).user == "temp"
    clock_of(st).advance(29.9)
    assert st.auth.user(header, REMOTE, False).user == "temp"  # the cache was loaded before: still checked
    clock_of(st).advance(0.2)
    with pytest.raises(Unauthorized, match="expired"):
        st.auth.user(header, REMOTE, False)
    await st.auth.load()  # a reload leaves it out as well
    with pytest.raises(Unauthorized):
        st.auth.user(header, REMOTE, False)


async def test_a_token_without_ttl_outlives_any_clock(st: AppState) -> None:  # noqa: F811
    _, secret = await st.auth.create_token("user", user="kept")
    clock_of(st).advance(10 * 365 * 86400)
    assert st.auth.user(f"Bearer {secret}", REMOTE, False).user == "kept"

"""Authentication decided on the coordinator's injected clock, in-process (app.open_state on a real
SQLite file, a ManualClock): token expiry checked on every use, and registration's rules (a join
token makes new identities only; refused attempts are rate-limited per address)."""

from __future__ import annotations

import pytest
from mloc_server.clock import ManualClock
from mloc_server.services.throttle import RefusalThrottle
from mloc_server.state import AppState
from mloc_shared.errors import Conflict, Forbidden, TooManyRequests, Unauthorized
from mloc_shared.protocol import Inventory, RegisterRequest, RegisterResponse

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


# -- registration ---------------------------------------------------------------------------------

def request(name: str) -> RegisterRequest:
    return RegisterRequest(agent_version="test", name=name, inventory=Inventory(hostname=name), task_types=["command"])


async def join(st: AppState, name: str, token: str, address: str = REMOTE) -> RegisterResponse:  # noqa: F811
    return await st.registration.admit(request(name), authorization=None, join_token=token, address=address)


async def again(st: AppState, name: str, bearer: str) -> RegisterResponse:  # noqa: F811
    return await st.registration.admit(request(name), authorization=f"Bearer {bearer}", join_token=None,
                                       address=REMOTE)


async def uses(st: AppState, token_id: str) -> int:  # noqa: F811
    (row,) = [t for t in (await st.auth.tokens()).tokens if t.id == token_id]
    return row.uses


async def test_a_known_name_is_refused_to_a_join_token_without_using_it(st: AppState) -> None:  # noqa: F811
    token_id, token = await st.auth.create_token("join", max_uses=2)
    first = await join(st, "box", token)
    st.agents.authenticate(f"Bearer {first.credential}")  # it polled: someone holds this identity
    for _ in range(3):
        with pytest.raises(Conflict):
            await join(st, "box", token)
    assert await uses(st, token_id) == 1
    assert (await join(st, "other-box", token)).agent_id != first.agent_id  # the second use is still there
    # its own credential re-registers it: same id, same credential (a retry after a lost answer is harmless)
    same = await again(st, "box", first.credential)
    assert (same.agent_id, same.credential) == (first.agent_id, first.credential)


async def test_an_identity_that_never_used_its_credential_is_replaced_by_a_new_one(st: AppState) -> None:  # noqa: F811
    _, token = await st.auth.create_token("join")
    lost = await join(st, "box", token)  # as if this answer never reached the agent
    retried = await join(st, "box", token)
    assert retried.agent_id != lost.agent_id  # a new identity, never the known one's id
    with pytest.raises(Unauthorized):
        st.agents.authenticate(f"Bearer {lost.credential}")
    assert [a.id for a in st.fleet.agents.values() if a.name == "box"] == [retried.agent_id]
    assert [a.id for a in await st.db.all_agents()] == [retried.agent_id]


async def test_an_admin_token_re_registers_a_known_agent_and_a_user_token_cannot(st: AppState) -> None:  # noqa: F811
    _, token = await st.auth.create_token("join")
    _, admin = await st.auth.create_token("user", user="ops", role="admin")
    _, user = await st.auth.create_token("user", user="alice")
    first = await join(st, "box", token)
    st.agents.authenticate(f"Bearer {first.credential}")
    with pytest.raises(Forbidden):
        await again(st, "box", user)
    by_admin = await again(st, "box", admin)
    assert by_admin.agent_id == first.agent_id and by_admin.credential != first.credential
    with pytest.raises(Unauthorized):
        st.agents.authenticate(f"Bearer {first.credential}")


async def test_refused_registrations_from_one_address_are_rate_limited(st: AppState) -> None:  # noqa: F811
    _, token = await st.auth.create_token("join")
    for i in range(10):  # the burst: guesses answer 401
        with pytest.raises(Unauthorized):
            await join(st, f"guess-{i}", f"mloc_join_guess{i}")
    with pytest.raises(TooManyRequests) as limited:
        await join(st, "guess-10", "mloc_join_guess10")
    assert 1 <= limited.value.retry_after_s <= 6
    with pytest.raises(TooManyRequests):  # the right token too, from this address, until it refills
        await join(st, "honest", token)
    assert (await join(st, "elsewhere", token, address="198.51.100.7")).agent_id  # other addresses are not held up
    clock_of(st).advance(limited.value.retry_after_s)
    assert (await join(st, "honest", token)).agent_id
    for i in range(20):  # registrations that succeed are never counted
        await join(st, f"fleet-{i}", token, address="192.0.2.1")


def test_the_refusal_counts_stay_bounded_in_memory() -> None:
    clock = ManualClock()
    throttle = RefusalThrottle(clock, burst=2, per_minute=6, max_addresses=3)
    for i in range(3):
        throttle.refused(f"192.0.2.{i}")
    clock.advance(10)  # 192.0.2.0-2 have refilled: as good as new
    throttle.refused("192.0.2.9")
    throttle.refused("192.0.2.9")
    with pytest.raises(TooManyRequests):
        throttle.check("192.0.2.9")  # the burst of 2 is used up
    for i in range(10, 20):  # many new addresses, none refilled: the oldest goes each time
        throttle.refused(f"192.0.2.{i}")
    assert len(throttle) <= 3

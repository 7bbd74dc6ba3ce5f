"""Who may register what (docs/security.md, "Registration"). A join token makes new identities only:

- an agent presenting its own credential (``Authorization: Bearer <credential>``) keeps its id, its
  leases and that credential (a restart, a new inventory; a retry after a lost answer is harmless);
- an admin token re-registers the agent of that name: its id and leases stay, with a new credential;
- a join token registers a name nobody holds. A known name answers 409 and changes nothing (the
  token's use is not counted), unless that identity never used its credential and holds nothing:
  then its registration's answer was lost, or nobody has it, and a new identity with its own id
  replaces it. A join token never yields a known identity's id, a credential for it, or its leases.

Refused attempts (401, 403, 409) are counted per client address (services/throttle.py).
"""

from __future__ import annotations

import asyncio

from mloc_shared.errors import Conflict, Forbidden, Unauthorized
from mloc_shared.protocol import RegisterRequest, RegisterResponse

from mloc_server.clock import Clock
from mloc_server.services.agents import Agents, stored_agent
from mloc_server.services.auth import Auth, hash_secret
from mloc_server.services.fleet import AgentState
from mloc_server.services.throttle import RefusalThrottle
from mloc_server.store import Store, StoreTx


class Registration:
    def __init__(self, db: Store, agents: Agents, auth: Auth, clock: Clock, refusals_per_min: int = 10) -> None:
        self.db = db
        self.agents = agents
        self.auth = auth
        self.clock = clock
        self.throttle = RefusalThrottle(clock, burst=refusals_per_min, per_minute=refusals_per_min)
        self._one_at_a_time = asyncio.Lock()  # a name is checked and taken in one step

    async def admit(self, req: RegisterRequest, *, authorization: str | None, join_token: str | None,
                    address: str | None) -> RegisterResponse:
        own = self.agents.by_credential(authorization)
        if own is not None:  # never throttled: a credential cannot be guessed, and this agent is known
            own.credential_used = True
            return await self.agents.register(req, own, credential=Auth.bearer(authorization))
        self.throttle.check(address)
        try:
            async with self._one_at_a_time:
                if authorization:
                    return await self._by_admin(req, authorization)
                return await self._join(req, join_token)
        except (Unauthorized, Forbidden, Conflict):
            self.throttle.refused(address)
            raise

    async def _by_admin(self, req: RegisterRequest, authorization: str) -> RegisterResponse:
        try:
            principal = self.auth.user(authorization, None, False)
        except Unauthorized:
            raise Unauthorized("unknown agent credential; register again with the join token") from None
        if not principal.is_admin:
            raise Forbidden("registering with a token needs an admin token (or the agent's own credential)")
        return await self.agents.register(req, self.agents.fleet.agent_named(req.name))

    async def _join(self, req: RegisterRequest, join_token: str | None) -> RegisterResponse:
        if not join_token:
            raise Unauthorized("registration needs a join token (MLOC_JOIN_TOKEN)")
        known = self.agents.fleet.agent_named(req.name)
        taken = known is not None and not _unclaimed(known)
        replaced = known if known is not None and not taken else None
        agent, credential = self.agents.identity(req)  # always a new identity, with its own id
        row = stored_agent(agent)
        digest, now = hash_secret(join_token), self.clock.time()

        def write(tx: StoreTx) -> None:
            if not tx.use_join_token(digest, now):
                raise Unauthorized("the join token is not valid (unknown, revoked, expired or used up)")
            if taken:  # raised inside the transaction: the use just counted is undone with it
                raise Conflict(
                    f"an agent named {req.name!r} is already registered; a join token only makes new agents",
                    field="name", hint="restart that agent with its data dir (agent.json holds its credential), "
                                       "or give this one another name (MLOC_AGENT_NAME)")
            if replaced is not None:
                tx.delete_agent(replaced.id)
            tx.save_agent(row)

        await self.db.write(write)
        return self.agents.admitted(agent, credential, replaced)


def _unclaimed(agent: AgentState) -> bool:
    """An identity nobody is known to hold: it never used its credential, leases nothing, is not polling."""
    return not agent.credential_used and not agent.leases and agent.waiter is None

"""Who is calling: user API tokens, join tokens, agent credentials, and the opt-in loopback allowance.

Every secret is random (``secrets``), stored only as SHA-256 (the secrets are 256-bit random, so
a fast hash is enough: there is nothing to brute-force) and compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import uuid
from dataclasses import dataclass
from pathlib import Path

from mloc_shared.errors import Forbidden, Unauthorized

from mloc_server.clock import Clock
from mloc_server.schemas import TokenInfo, TokenList
from mloc_server.store import Store
from mloc_server.store.records import StoredToken

log = logging.getLogger(__name__)
LOOPBACK = frozenset({"127.0.0.1", "::1", "::ffff:127.0.0.1"})
# a request that came through a proxy is never local, whichever of these the proxy sets
PROXY_HEADERS = ("X-Forwarded-For", "Forwarded", "X-Real-IP")


def new_secret(kind: str) -> str:
    return f"mloc_{kind}_{secrets.token_urlsafe(32)}"


def hash_secret(secret: str) -> str:
    # header values arrive decoded with surrogateescape: a token we never issued must hash (and then not
    # match), not crash the request
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def same_hash(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


@dataclass(frozen=True)
class Principal:
    user: str
    role: str  # admin | user
    team: str = ""  # the token's team: its tasks count against it (fair share, quotas)

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


LOOPBACK_PRINCIPAL = Principal(user="local", role="admin")


@dataclass(frozen=True)
class _UserToken:
    principal: Principal
    expires_at: float | None  # wall clock; None: until revoked


class Auth:
    def __init__(self, db: Store, loopback_admin: bool, clock: Clock) -> None:
        self.db = db
        self.loopback_admin = loopback_admin
        self.clock = clock
        self._users: dict[str, _UserToken] = {}

    async def load(self) -> None:
        """Cache the valid user tokens: checking a request's token is a dict lookup, not a query. The
        cache keeps each token's expiry, checked on every use (a load is not awaited to expire one)."""
        tokens = await self.db.active_user_tokens(self.clock.time())
        self._users = {t.token_hash: _UserToken(Principal(t.user, t.role, t.team or ""), t.expires_at)
                       for t in tokens}

    @staticmethod
    def bearer(header: str | None) -> str | None:
        if not header:
            return None
        scheme, _, value = header.partition(" ")
        return value.strip() if scheme.lower() == "bearer" and value.strip() else None

    def user(self, authorization: str | None, remote: str | None, forwarded: bool) -> Principal:
        """The user behind a request; token-less loopback callers are admins only where the deployment
        opted in (MLOC_LOOPBACK_ADMIN=true): otherwise any process on the host, and any task URL an agent
        on the host fetches, would be an admin."""
        token = self.bearer(authorization)
        if token is None:
            if self.loopback_admin and remote in LOOPBACK and not forwarded:
                return LOOPBACK_PRINCIPAL
            raise Unauthorized("this API needs a token: send 'Authorization: Bearer <token>'",
                               hint="on the coordinator's host the admin token is in <data_dir>/admin.token "
                                    "(the mloc CLI reads it itself); an admin makes user tokens with: "
                                    "mloc token create --user NAME")
        digest = hash_secret(token)
        known = self._users.get(digest)
        if known is None:
            raise Unauthorized("the token is not valid (unknown, revoked or expired)")
        if known.expires_at is not None and self.clock.time() >= known.expires_at:
            self._users.pop(digest, None)
            raise Unauthorized("the token is not valid: it expired",
                               hint="ask an admin for a new one (mloc token create --user NAME)")
        return known.principal

    async def create_token(
        self, kind: str, *, user: str = "", role: str = "user", ttl_s: float | None = None,
        max_uses: int | None = None, note: str = "", secret: str | None = None, team: str = "",
    ) -> tuple[str, str]:
        """Create a user or join token; returns (token id, secret). Only the hash is stored."""
        if kind not in ("user", "join"):
            raise ValueError(kind)
        if role not in ("admin", "user"):
            raise Forbidden(f"unknown role {role!r}; use admin or user", field="role")
        secret = secret or new_secret(kind)
        token_id = uuid.uuid4().hex[:12]
        now = self.clock.time()
        token = StoredToken(
            id=token_id, kind=kind, token_hash=hash_secret(secret), user=user, role=role, created_at=now,
            expires_at=now + ttl_s if ttl_s else None, max_uses=max_uses, uses=0, revoked=False, note=note,
            team=team or None,
        )
        await self.db.write(lambda tx: tx.insert_token(token))
        if kind == "user":
            self._users[token.token_hash] = _UserToken(Principal(user, role, team), token.expires_at)
        return token_id, secret

    async def tokens(self) -> TokenList:
        """Every token, oldest first, without the hashes of their secrets."""
        return TokenList(tokens=[TokenInfo.of(t) for t in await self.db.list_tokens()])

    async def revoke(self, token_id: str) -> bool:
        ok = await self.db.write(lambda tx: tx.revoke_token(token_id))
        await self.load()
        return ok

    async def ensure_known(self, kind: str, secret: str, **kwargs) -> None:
        """Make sure a configured secret (MLOC_JOIN_TOKEN, MLOC_ADMIN_TOKEN) is a valid token."""
        if await self.db.token_by_hash(hash_secret(secret)) is None:
            await self.create_token(kind, secret=secret, note="from settings", **kwargs)

    async def bootstrap_secret(self, kind: str, path: Path, **kwargs) -> str:
        """First start: create a token, keep it in a 0600 file so restarts reuse it."""
        if path.exists():
            secret = path.read_text().strip()
            await self.ensure_known(kind, secret, **kwargs)
            return secret
        _, secret = await self.create_token(kind, note="created at first start", **kwargs)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secret + "\n")
        return secret

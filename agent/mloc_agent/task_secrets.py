"""A task's secrets on the agent: fetched for the lease, put only in the child's environment, and
masked wherever the task's own output travels (log chunks, its progress, the error and result of its
completion).

The lease names the secrets (``spec.secrets`` with redacted values); the values come from the
coordinator on a lease-scoped call, so they are never in a poll answer, the spec file handed to
the task host, or the agent's own log.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from mloc_shared.protocol import Lease, SecretsRequest

from mloc_agent.client import CoordinatorClient
from mloc_agent.retries import with_retries

MASK = "***"


async def fetch_secrets(client: CoordinatorClient, lease: Lease) -> dict[str, str]:
    """The values of the secrets the lease's spec names ({} when it names none)."""
    names = sorted((lease.spec.get("secrets") or {}).keys())
    if not names:
        return {}
    resp = await with_retries(lambda: client.secrets(lease.task_id, SecretsRequest(epoch=lease.epoch)), 60.0,
                              f"fetching the secrets of task {lease.task_id}")
    missing = [n for n in names if n not in resp.secrets]
    if missing:
        raise RuntimeError(f"the coordinator has no value for secret(s) {', '.join(missing)}")
    return {n: resp.secrets[n] for n in names}


class Redactor:
    """Masks secret values in text that arrives in chunks, even when a value straddles two chunks.

    Per stream it holds back the shortest tail that could still grow into a secret, so ordinary
    output passes through at once and nothing is held once a line cannot match.
    """

    def __init__(self) -> None:
        self._secrets: list[str] = []
        self._held: dict[str, str] = {}

    def add(self, values: Iterable[str]) -> None:
        merged = set(self._secrets) | {v for v in values if v}
        self._secrets = sorted(merged, key=len, reverse=True)  # longest first: one may contain another

    def mask(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def mask_value(self, value: Any) -> Any:
        """``value`` with every string in it masked, mapping keys included (a progress message, metric
        names, a result): walked, not masked as JSON text, where an escaped secret would not match."""
        if not self._secrets:
            return value
        if isinstance(value, str):
            return self.mask(value)
        if isinstance(value, dict):
            return {self.mask_value(k): self.mask_value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.mask_value(v) for v in value]
        return value

    def feed(self, stream: str, text: str, final: bool = False) -> str:
        if not self._secrets:
            return text
        buf = self.mask(self._held.pop(stream, "") + text)
        if final:
            return buf
        keep = 0
        for secret in self._secrets:
            for k in range(min(len(secret) - 1, len(buf)), keep, -1):
                if buf.endswith(secret[:k]):
                    keep = k
                    break
        if keep:
            self._held[stream] = buf[-keep:]
            return buf[:-keep]
        return buf

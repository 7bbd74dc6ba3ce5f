"""Task secrets (``secrets: {HF_TOKEN: ...}`` in a spec): they reach only the task's process.

- At submit the values are taken out of the spec; the stored spec (what the API shows, what the
  lease carries) keeps only the names, each with the value ``<redacted>``.
- The values are stored apart from the task row, encrypted with Fernet (AES-128-CBC + HMAC) under
  a key in ``data_dir/secrets.key`` (0600): a copy of the database alone reveals nothing.
- The agent holding the lease fetches them with its credential and the lease's epoch, puts them in
  the child's environment only, and masks them in the task's log chunks.
- They are deleted when the task reaches a final state (retries still need them until then).
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from mloc_shared.errors import Unavailable

from mloc_server.services.fleet import AgentState
from mloc_server.services.leasing import Leasing
from mloc_server.store import Store, StoreTx

log = logging.getLogger(__name__)
REDACTED = "<redacted>"


def split_secrets(wire: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """(the spec to store, with secret values redacted; the secret values). Empty secrets vanish."""
    secrets = wire.pop("secrets", None) or {}
    if secrets:
        wire["secrets"] = dict.fromkeys(sorted(secrets), REDACTED)
    return wire, dict(secrets)


def load_key(path: Path) -> bytes:
    """The Fernet key, created (0600) on first use."""
    if path.exists():
        return path.read_bytes().strip()
    key = Fernet.generate_key()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_bytes(key + b"\n")
    return key


class TaskSecrets:
    def __init__(self, db: Store, leasing: Leasing, key_path: Path) -> None:
        self.leasing = leasing
        self.db = db
        self._fernet = Fernet(load_key(key_path))
        self._held: set[str] = set()  # tasks with stored secrets: only these cost a delete at the end
        self._pending_delete: set[str] = set()
        self._background: set[asyncio.Task[None]] = set()
        leasing.on_task_final.append(self._task_final)

    async def load(self) -> None:
        """Forget the secrets of tasks that ended while the coordinator was down."""
        ended = []
        for task_id, state in await self.db.tasks_with_secrets():
            if state in ("blocked", "queued", "running"):  # blocked: waits on other tasks, runs later
                self._held.add(task_id)
            else:
                ended.append(task_id)
        if ended:
            await self.db.write(lambda tx: tx.delete_secrets(ended))

    def seal(self, secrets: dict[str, str]) -> str:
        return self._fernet.encrypt(json.dumps(secrets).encode()).decode()

    def insert(self, tx: StoreTx, task_id: str, sealed: str, now: float) -> None:
        """Store sealed secrets inside the submit's own transaction (called on the writer thread)."""
        tx.insert_secrets(task_id, sealed, now)

    def stored(self, task_id: str) -> None:
        self._held.add(task_id)

    async def for_lease(self, agent: AgentState, task_id: str, epoch: int) -> dict[str, str]:
        """The values, for the agent that holds the lease at this epoch only (else 409)."""
        self.leasing.own_lease(agent, task_id, epoch)
        sealed = await self.db.secrets_ciphertext(task_id)
        if sealed is None:
            return {}
        try:
            return json.loads(self._fernet.decrypt(sealed.encode()))
        except InvalidToken:
            log.error("task %s: its secrets do not decrypt with %s (was the key replaced?)", task_id, "secrets.key")
            raise Unavailable("the task's secrets cannot be decrypted on the coordinator") from None

    def _task_final(self, task_id: str, _state: str) -> None:
        if task_id not in self._held:
            return
        self._held.discard(task_id)
        self._pending_delete.add(task_id)
        if len(self._pending_delete) == 1:  # one delete in flight gathers the ids that end meanwhile
            task = asyncio.get_running_loop().create_task(self._delete_pending())
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _delete_pending(self) -> None:
        await asyncio.sleep(0)
        ids, self._pending_delete = list(self._pending_delete), set()
        try:
            await self.db.write(lambda tx: tx.delete_secrets(ids))
        except Exception:
            log.exception("could not delete the secrets of %d finished task(s); retried at next start", len(ids))

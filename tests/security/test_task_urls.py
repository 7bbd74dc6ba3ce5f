"""Issue 11, item 4 (the agent's side): an agent refuses a task's URL that resolves to loopback,
link-local or private addresses, or to the coordinator itself, unless its config allows private URLs
(MLOC_ALLOW_PRIVATE_URLS=true). Here the coordinator shares the agent's host and has opted into the
loopback-admin allowance, so only the agent's check stands between a user and admin-only answers."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.harness import FINAL, Coordinator
from tests.security.specs import rag_task
from tests.security.users import create_token, submit, user_client, user_view

pytestmark = pytest.mark.ml


@pytest.mark.coordinator(extra_env={"MLOC_LOOPBACK_ADMIN": "true"})
def test_a_task_url_cannot_reach_the_coordinators_admin_api(coordinator: Coordinator, start_agent) -> None:
    start_agent("fetcher")
    note = f"admin-only-{uuid.uuid4().hex}"
    create_token(coordinator, kind="user", user="carol", note=note)  # shows only in the admin's token list
    bob = user_client(coordinator, "bob")
    task = submit(bob, rag_task(documents=[f"{coordinator.url}/api/v1/tokens"]))
    done = coordinator.wait_state(task["id"], FINAL, timeout=240)
    assert note not in user_view(bob, task["id"]), "a task's URL fetched the coordinator's admin-only token list"
    assert done["state"] == "failed", done
    bob.close()


def test_a_task_url_naming_a_private_host_is_refused_unless_the_agent_allows_it(
        coordinator: Coordinator, start_agent, file_server: tuple[Path, str]) -> None:
    root, base = file_server
    secret = f"intranet page {uuid.uuid4().hex}"
    (root / "internal.txt").write_text(secret)
    url = base.replace("127.0.0.1", "localhost") + "/internal.txt"  # a name that resolves to loopback
    bob = user_client(coordinator, "bob")

    strict = start_agent("strict")
    refused = submit(bob, rag_task(documents=[url]))
    done = coordinator.wait_state(refused["id"], FINAL, timeout=240)
    assert secret not in user_view(bob, refused["id"]), f"an agent with default settings fetched {url}"
    assert done["state"] == "failed" and "MLOC_ALLOW_PRIVATE_URLS" in (done.get("error") or ""), done
    strict.stop()

    start_agent("lenient", extra_env={"MLOC_ALLOW_PRIVATE_URLS": "true"})
    allowed = submit(bob, rag_task(documents=[url]))
    done = coordinator.wait_state(allowed["id"], FINAL, timeout=240)
    assert done["state"] == "succeeded" and secret in user_view(bob, allowed["id"]), done.get("error")
    bob.close()

"""Issue 11, item 3: a RAG collection belongs to the user who filled it. Another user of the same agent
who names it (or its directory), with no documents of their own, gets none of its text."""

from __future__ import annotations

import uuid

import pytest

from tests.harness import FINAL, Coordinator
from tests.security.specs import rag_task
from tests.security.users import submit, user_client, user_view

pytestmark = pytest.mark.ml
DIARY = f"The launch code for project heron is {uuid.uuid4().hex}."


def test_another_user_cannot_read_a_collection_by_its_name_or_directory(coordinator: Coordinator,
                                                                         start_agent) -> None:
    agent = start_agent("rag-shared")
    (agent.data_dir / "datasets").mkdir(exist_ok=True)
    diary = agent.data_dir / "datasets" / "diary.txt"  # inside the agent's allowed data folder
    diary.write_text(DIARY)
    alice, bob = user_client(coordinator, "alice"), user_client(coordinator, "bob")

    filled = submit(alice, rag_task(collection="diary", documents=[str(diary)]))
    mine = coordinator.wait_state(filled["id"], FINAL, timeout=240)
    assert mine["state"] == "succeeded", mine.get("error")
    assert DIARY in user_view(alice, filled["id"])

    by_name = submit(bob, rag_task(collection="diary"))
    coordinator.wait_state(by_name["id"], FINAL, timeout=240)
    assert DIARY not in user_view(bob, by_name["id"]), "bob read alice's collection by naming it"
    by_directory = submit(bob, rag_task(collection="diary", persist_directory=mine["result"]["persist_directory"]))
    coordinator.wait_state(by_directory["id"], FINAL, timeout=240)
    assert DIARY not in user_view(bob, by_directory["id"]), "bob read alice's collection through its directory"

    again = submit(alice, rag_task(collection="diary"))  # her collection persists, for her
    done = coordinator.wait_state(again["id"], FINAL, timeout=240)
    assert done["state"] == "succeeded" and DIARY in user_view(alice, again["id"]), done.get("error")
    alice.close()
    bob.close()

"""Issue 11, item 5: paths a task names (RAG documents and globs, dataset paths) stay inside the roots
the agent's config allows: ``<data_dir>/datasets`` and ``<data_dir>/models``, plus MLOC_TASK_PATH_ROOTS
(os.pathsep-separated). Never the agent's own state or credential; symlinks are followed to where they
really lead. Here the coordinator shares the agent's host, as the issue's report had it."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from tests.harness import FINAL, Coordinator, wait_for
from tests.security.specs import rag_task
from tests.security.users import submit, user_client, user_view

pytestmark = pytest.mark.ml


def test_task_paths_outside_the_agents_roots_fail_the_task(coordinator: Coordinator, start_agent,
                                                           tmp_path: Path) -> None:
    shared = tmp_path / "shared-docs"  # an extra root the agent's config names
    shared.mkdir()
    agent = start_agent("paths", extra_env={"MLOC_TASK_PATH_ROOTS": str(shared)})
    datasets = agent.data_dir / "datasets"
    datasets.mkdir(exist_ok=True)
    coord_dir = coordinator.data_dir
    (datasets / "notes.txt").symlink_to(agent.data_dir / "agent.json")  # inside a root, leads outside it
    state = wait_for(lambda: (agent.data_dir / "agent.json").exists() and agent.data_dir / "agent.json", 10,
                     "the agent to save its credential")
    credential = json.loads(state.read_text())["credential"]
    secrets = {"admin token": coordinator.admin_token, "agent credential": credential,
               "secrets.key": (coord_dir / "secrets.key").read_text().strip(),
               "blob.key": (coord_dir / "blob.key").read_text().strip()}
    admin_file = str(coord_dir / "admin.token")
    attacks = {  # each attempt's spec (a collection each: what one ingests, no other retrieves) and the
        # paths its error may name
        "glob": (rag_task(collection="glob", documents=[f"{coord_dir}/*.token", f"{coord_dir}/*.key"]),
                 [f"{coord_dir}/*.token", admin_file]),
        "own state": (rag_task(collection="state", documents=[str(agent.data_dir / "agent.json")]),
                      [str(agent.data_dir / "agent.json")]),
        "symlink": (rag_task(collection="link", documents=[str(datasets / "notes.txt")]),
                    [str(datasets / "notes.txt"), str(agent.data_dir / "agent.json")]),
        "dataset.path": ({**rag_task(collection="dataset"), "dataset": {"path": admin_file}}, [admin_file]),
    }
    bob = user_client(coordinator, "bob")
    tasks = {what: submit(bob, spec) for what, (spec, _) in attacks.items()}

    finished = {what: coordinator.wait_state(t["id"], FINAL, timeout=240) for what, t in tasks.items()}
    views = {what: user_view(bob, task["id"]) for what, task in tasks.items()}
    leaks = {what: [name for name, value in secrets.items() if value in seen] for what, seen in views.items()}
    leaked = {what: names for what, names in leaks.items() if names}
    assert not leaked, f"task paths handed bob what only the agent's host holds: {leaked}"
    for what, done in finished.items():
        error = done.get("error") or ""
        assert done["state"] == "failed" and done["attempts"] == 1, (what, done)
        assert "MLOC_TASK_PATH_ROOTS" in error and any(p in error for p in attacks[what][1]), (
            f"{what}: the error should name the path and the setting MLOC_TASK_PATH_ROOTS: {error!r}")

    # inside the roots, documents are read as before
    marker = uuid.uuid4().hex
    (datasets / "inside.txt").write_text(f"The datasets folder holds {marker}.")
    (shared / "extra.txt").write_text(f"The extra root holds {marker[::-1]}.")
    inside = [str(datasets / "inside.txt"), str(shared / "*.txt")]
    ok = submit(bob, rag_task(collection="inside", documents=inside, retrieval_k=2))
    done = coordinator.wait_state(ok["id"], FINAL, timeout=240)
    seen = user_view(bob, ok["id"])
    assert done["state"] == "succeeded" and marker in seen and marker[::-1] in seen, done.get("error")
    bob.close()

"""Where a user's RAG collections live on an agent (modules/rag/collections.py): a folder per owner,
and ``persist_directory`` never leads out of it."""

from __future__ import annotations

from pathlib import Path

import pytest
from mloc_agent.modules.errors import TaskInputError
from mloc_agent.modules.rag.collections import owner_folder_name, persist_dir


@pytest.mark.parametrize("owner, folder", [("alice", "alice"), ("bob.smith-2", "bob.smith-2"), (None, "_unowned"),
                                           ("", "_unowned")])
def test_a_plain_owner_name_is_its_folder(owner: str | None, folder: str) -> None:
    assert owner_folder_name(owner) == folder


@pytest.mark.parametrize("owner", ["../alice", "a/b", ".", "..", "_unowned", "x" * 65, "ünïcode"])
def test_any_other_owner_name_is_hashed_and_never_a_plain_name(owner: str) -> None:
    folder = owner_folder_name(owner)
    assert folder.startswith("_") and len(folder) == 33 and "/" not in folder
    assert folder != owner_folder_name(owner + "x")


def test_persist_directory_stays_inside_the_owners_folder(tmp_path: Path) -> None:
    alice = (tmp_path / "vectors" / "alice").resolve()
    assert persist_dir(None, tmp_path, "alice") == alice
    assert persist_dir("handbook", tmp_path, "alice") == alice / "handbook"
    assert persist_dir(str(alice / "handbook"), tmp_path, "alice") == alice / "handbook"  # as a result names it
    for leaving in ("../bob", str(tmp_path / "vectors" / "bob"), str(tmp_path / "vectors"), "/srv/shared", "a/../.."):
        with pytest.raises(TaskInputError, match="persist_directory"):
            persist_dir(leaving, tmp_path, "alice")


def test_a_symlink_inside_the_owners_folder_cannot_lead_out(tmp_path: Path) -> None:
    (tmp_path / "vectors" / "alice").mkdir(parents=True)
    (tmp_path / "vectors" / "bob").mkdir()
    (tmp_path / "vectors" / "alice" / "to-bob").symlink_to(tmp_path / "vectors" / "bob")
    with pytest.raises(TaskInputError):
        persist_dir("to-bob", tmp_path, "alice")

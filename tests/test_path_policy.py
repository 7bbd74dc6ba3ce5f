"""The agent's rule for paths a task names (modules/sources/path_policy.py), on a real folder tree with
symlinks: roots, the agent's own data dir, globs and folders checked file by file."""

from __future__ import annotations

from pathlib import Path

import pytest
from mloc_agent.modules.errors import PathRefused
from mloc_agent.modules.sources.path_policy import PathPolicy, default_roots, is_path_like


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, PathPolicy]:
    """An agent data dir (credential, datasets/), an extra root and a folder outside every root."""
    data = tmp_path / "agent"
    (data / "datasets").mkdir(parents=True)
    (data / "work").mkdir()
    (data / "agent.json").write_text('{"credential": "c"}')
    (data / "datasets" / "notes.txt").write_text("notes")
    (data / "datasets" / "to-credential.txt").symlink_to(data / "agent.json")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("s")
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "doc.md").write_text("d")
    (tmp_path / "shared" / "escape.md").symlink_to(tmp_path / "outside" / "secret.txt")
    return tmp_path, PathPolicy(tuple(default_roots(data, [tmp_path / "shared"])), data)


def test_paths_inside_the_roots_are_read_resolved(tree: tuple[Path, PathPolicy]) -> None:
    root, policy = tree
    assert policy.check(root / "agent" / "datasets" / "notes.txt", "dataset.path") == \
        (root / "agent" / "datasets" / "notes.txt").resolve()
    assert policy.check(str(root / "shared" / "doc.md"), "documents") == (root / "shared" / "doc.md").resolve()
    assert policy.check(root / "shared" / "missing.txt", "documents").name == "missing.txt"  # absent, but inside


@pytest.mark.parametrize("name", ["outside/secret.txt", "agent/agent.json", "agent/work", "agent",
                                  "agent/datasets/to-credential.txt", "shared/escape.md",
                                  "agent/datasets/../agent.json", "outside/not-there"])
def test_paths_that_lead_outside_the_roots_are_refused_naming_the_path_and_the_setting(
        tree: tuple[Path, PathPolicy], name: str) -> None:
    root, policy = tree
    with pytest.raises(PathRefused, match="MLOC_TASK_PATH_ROOTS") as refused:
        policy.check(root / name, "hyperparameters.documents")
    assert str(root / name) in str(refused.value) and "hyperparameters.documents" in str(refused.value)


def test_a_root_that_holds_the_agents_data_dir_still_keeps_its_state_out(tmp_path: Path) -> None:
    data = tmp_path / "agent"
    (data / "models").mkdir(parents=True)
    (data / "agent.json").write_text("{}")
    careless = PathPolicy((tmp_path,), data)  # MLOC_TASK_PATH_ROOTS names the parent of the data dir
    with pytest.raises(PathRefused, match="agent's own data"):
        careless.check(data / "agent.json", "dataset.path")
    careless.check(data / "models", "model.source.identifier")


def test_a_glob_is_refused_before_it_is_expanded_and_each_match_is_checked(tree: tuple[Path, PathPolicy]) -> None:
    root, policy = tree
    with pytest.raises(PathRefused, match=r"outside/\*\.txt"):
        policy.glob(f"{root}/outside/*.txt", "documents")
    with pytest.raises(PathRefused, match=r"escape\.md"):  # the fixed part is a root, one match leads out
        policy.glob(f"{root}/shared/*.md", "documents")
    assert policy.glob(f"{root}/agent/datasets/n*.txt", "documents") == [
        (root / "agent" / "datasets" / "notes.txt").resolve()]
    with pytest.raises(PathRefused):
        policy.glob("*.txt", "documents")  # relative: the task's workdir, no root


def test_a_folders_files_are_checked_one_by_one(tree: tuple[Path, PathPolicy]) -> None:
    root, policy = tree
    with pytest.raises(PathRefused, match=r"to-credential\.txt"):
        policy.files_in(root / "agent" / "datasets", "dataset.path")


def test_nothing_is_readable_outside_an_agent(tmp_path: Path) -> None:
    with pytest.raises(PathRefused, match="readable here: none"):
        PathPolicy().check(tmp_path, "dataset.path")


@pytest.mark.parametrize(("name", "path_like"), [("/models/llama", True), ("~/m", True), ("./m", True),
                                                 ("gpt2", False), ("org/model", False)])
def test_model_names_that_are_paths(name: str, path_like: bool) -> None:
    assert is_path_like(name) is path_like


@pytest.mark.parametrize("name", ["admin.token", "secrets.key", "id_rsa", "cert.pem", ".env"])
def test_a_document_of_an_unknown_type_is_never_read_as_text(tmp_path: Path, name: str) -> None:
    from mloc_agent.modules.errors import TaskInputError
    from mloc_agent.modules.sources.documents import read_file

    (tmp_path / name).write_text("a-secret-value")
    with pytest.raises(TaskInputError, match="not a document type"):
        read_file(tmp_path / name, name)
    (tmp_path / "notes.md").write_text("# notes")
    assert read_file(tmp_path / "notes.md", "notes.md")[0].text == "# notes"

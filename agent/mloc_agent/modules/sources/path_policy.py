"""Which files a task may make its agent read: the one check every task-named path passes first.

The agent reads what a spec names (RAG documents and globs, ``dataset.path``, ``questions_file``,
``prompts_file``, local models) as its own OS user, and what it reads can come back to the user in
answers, generations or errors. So a path must resolve, symlinks followed, inside a root the
agent's operator allows: ``<data dir>/datasets``, ``<data dir>/models`` and the folders in
``MLOC_TASK_PATH_ROOTS``. Inside the agent's data dir only those two folders are readable, whatever
a root says: its credential (``agent.json``), other tasks' work dirs and users' RAG collections
live there. A glob's fixed part is checked before it is expanded, then every match; a folder's
files are checked one by one. Paths the agent itself filled for the task (downloads, other tasks'
fetched outputs) are not task-named and are not checked here. Stdlib only: the vLLM runtime
imports it too.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mloc_agent.modules.errors import PathRefused

SETTING = "MLOC_TASK_PATH_ROOTS"
DATA_DIR_ROOTS = ("datasets", "models")  # the only folders of the agent's data dir a task may read
_WILDCARDS = "*?["


def default_roots(data_dir: Path, extra: Iterable[Path] = ()) -> list[Path]:
    """The roots an agent allows: its ``datasets`` and ``models`` folders, then ``MLOC_TASK_PATH_ROOTS``."""
    return [data_dir / name for name in DATA_DIR_ROOTS] + list(extra)


def is_path_like(name: str) -> bool:
    """A model name that is a path, not a hub id: absolute, or starting with ``~`` or ``.``."""
    return name.startswith(("/", "~", "."))


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _inside(path: Path, root: Path) -> bool:
    return os.path.commonpath([path, root]) == str(root)


@dataclass(frozen=True)
class PathPolicy:
    """The agent's rule for task paths, from its settings (TaskContext.from_env builds it)."""

    roots: tuple[Path, ...] = ()  # none outside an agent: every task path is refused
    agent_data_dir: Path | None = None

    def allows(self, real: Path) -> bool:
        """Whether a resolved path lies inside a root, and not in the agent's own data."""
        return not self._in_agent_data(real) and any(_inside(real, _real(root)) for root in self.roots)

    def _in_agent_data(self, real: Path) -> bool:
        if self.agent_data_dir is None:
            return False
        data = _real(self.agent_data_dir)
        return _inside(real, data) and not any(_inside(real, data / name) for name in DATA_DIR_ROOTS)

    def check(self, ref: str | Path, field: str) -> Path:
        """``ref`` resolved (``~`` expanded, symlinks followed): the path to read. PathRefused when it
        leads outside the roots, whether it exists or not (a refusal says nothing of what is there)."""
        real = _real(Path(ref).expanduser())
        if not self.allows(real):
            raise self._refusal(str(ref), real, field)
        return real

    def glob(self, pattern: str, field: str) -> list[Path]:
        """The files a glob matches, each one resolved and checked; its fixed part is checked first."""
        expanded = os.path.expanduser(pattern)
        fixed: list[str] = []
        for part in Path(expanded).parts:
            if any(c in part for c in _WILDCARDS):
                break
            fixed.append(part)
        base = Path(*fixed) if fixed else Path(".")
        if not self.allows(_real(base)):
            raise self._refusal(pattern, _real(base), field)
        matches = sorted(Path(p) for p in glob.glob(expanded, recursive=True) if Path(p).is_file())
        return [self._checked_match(match, pattern, field) for match in matches]

    def files_in(self, folder: Path, field: str) -> list[Path]:
        """Every file under a (checked) folder, recursively, in name order, each one checked."""
        return [self._checked_match(p, str(folder), field) for p in sorted(folder.rglob("*")) if p.is_file()]

    def name_or_path(self, name: str, field: str) -> str:
        """A model or embedding name as given when it is a hub id, else the checked path."""
        return str(self.check(name, field)) if is_path_like(name) else name

    def _checked_match(self, match: Path, given: str, field: str) -> Path:
        real = _real(match)
        if not self.allows(real):
            raise self._refusal(f"{match} (from {given})", real, field)
        return real

    def _refusal(self, shown: str, real: Path, field: str) -> PathRefused:
        """One line (cut at 500 characters): the path and the setting first, the roots last."""
        if self._in_agent_data(real):
            where = (f"is the agent's own data (of its data dir, tasks read only datasets/ and models/, whatever "
                     f"{SETTING} says)")
        else:
            where = f"is outside the folders this agent lets tasks read (datasets/, models/ and {SETTING})"
        given = shown.split(" (from ")[0]
        leads = "" if given == str(real) or any(c in given for c in _WILDCARDS) else f"; it leads to {real}"
        roots = ", ".join(str(r) for r in self.roots) or "none"
        return PathRefused(f"{field}: {shown} {where}{leads}; readable here: {roots}")

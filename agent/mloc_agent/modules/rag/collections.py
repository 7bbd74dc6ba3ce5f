"""Where a user's RAG collections live on an agent: ``<agent data dir>/vectors/<owner>/``.

Collections persist between tasks, so they must belong to the user who filled them: every user of
an agent gets a folder of their own (one Chroma database), and ``persist_directory`` is taken
inside it. A collection name or a directory another user names reaches only their own folder.
Stdlib only: the agent's main process imports the module that imports this.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from mloc_agent.modules.errors import TaskInputError

VECTORS = "vectors"
UNOWNED = "_unowned"  # tasks from a coordinator that does not say whose they are (older than the owner field)
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def owner_folder_name(owner: str | None) -> str:
    """A folder name per owner, never the same for two owners: a plain name as it is, any other name
    (slashes, dots only, long) as ``_`` and its hash (a plain name never starts with ``_``)."""
    if not owner:
        return UNOWNED
    if _PLAIN_NAME.fullmatch(owner):
        return owner
    return "_" + hashlib.sha256(owner.encode()).hexdigest()[:32]


def owner_root(base: Path, owner: str | None) -> Path:
    """The owner's folder under ``base`` (the agent's data dir, or the workdir outside an agent)."""
    return base / VECTORS / owner_folder_name(owner)


def persist_dir(setting: str | None, base: Path, owner: str | None) -> Path:
    """``persist_directory`` inside the owner's folder: relative to it, or absolute and inside it (as a
    task's result names it). Anything that leads out of it, ``..`` or a symlink, is refused."""
    root = Path(os.path.realpath(owner_root(base, owner)))
    if setting is None:
        return root
    given = Path(setting).expanduser()
    path = Path(os.path.realpath(given if given.is_absolute() else root / given))
    if os.path.commonpath([path, root]) != str(root):
        raise TaskInputError(f"hyperparameters.persist_directory: {setting} is outside this user's collections "
                             f"folder on the agent ({root}); give a path relative to it")
    return path

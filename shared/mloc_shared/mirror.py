"""The model and dataset mirror: hub snapshots kept in the coordinator's artifact store (docs/models.md).

Both sides use this module: the CLI and the coordinator check names here, the coordinator and the
agent find the hub ids a spec reads with ``hub_references``, and the wire models of the push (user
API) and of a lease's mirrored copies (agent API) live here.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator

from mloc_shared.errors import ValidationFailed
from mloc_shared.protocol import PartUrl, UploadedPart, WireModel

Kind = Literal["model", "dataset"]
Mode = Literal["fallback", "first", "off"]
MODES: tuple[str, ...] = ("fallback", "first", "off")
MAX_FILES = 10_000
ENV_VARIABLE = "MLOC_MIRRORED"  # the task's map {"model:<id>": folder, "dataset:<id>": folder}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?$", re.ASCII)
_REVISION = re.compile(r"^[\w.-][\w./-]{0,99}$", re.ASCII)
_BAD_PATH_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")


def check_hub_id(hub_id: str, field: str = "hub_id") -> str:
    """A Hugging Face repo id (``org/name`` or ``name``): letters, digits, ``-``, ``_``, ``.``."""
    if not _HUB_ID.match(hub_id) or ".." in hub_id or hub_id.endswith((".", "-")):
        raise ValidationFailed(f"{field}: {hub_id!r} is not a hub id; use the form org/name (letters, digits, "
                               "'-', '_', '.')", field=field)
    return hub_id


def check_revision(revision: str, field: str = "revision") -> str:
    """A branch, tag or commit: no '..', no leading or trailing '/'."""
    if not _REVISION.match(revision) or ".." in revision or revision.endswith("/") or "//" in revision:
        raise ValidationFailed(f"{field}: {revision!r} is not a revision; use a branch, tag or commit such as main",
                               field=field)
    return revision


def check_file_path(path: str, field: str = "files.path") -> str:
    """A file of a snapshot: a relative path of plain segments, so it can never leave its folder."""
    if not path or len(path) > 512 or _BAD_PATH_CHARS.search(path) or path.startswith("/") \
            or any(seg in ("", ".", "..") for seg in path.split("/")) or not _encodable(path):
        raise ValidationFailed(f"{field}: {path!r} must be a relative path without '.', '..', empty segments, "
                               "backslashes or control characters", field=field)
    return path


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:  # an unpaired surrogate: no file system or store can name it
        return False
    return True


def storage_prefix(kind: str, hub_id: str, revision: str) -> str:
    """Where a snapshot's files live in the artifact store."""
    return f"mirror/{kind}s/{hub_id}/{revision}/"


def _is_hub_id(name: Any) -> bool:
    return isinstance(name, str) and not name.startswith(("/", "~", ".")) and bool(_HUB_ID.match(name))


def hub_references(spec: dict[str, Any]) -> list[tuple[Kind, str, str | None]]:
    """(kind, hub id, revision or None) of what a spec reads from the hub: ``model.source`` of type
    huggingface (also ``model.tokenizer``/``model.base`` given as hub ids) and ``dataset.hub``."""
    refs: list[tuple[Kind, str, str | None]] = []
    model = spec.get("model") if isinstance(spec.get("model"), dict) else {}
    source = model.get("source") if isinstance(model.get("source"), dict) else {}
    if source.get("type", "huggingface") == "huggingface" and _is_hub_id(source.get("identifier")):
        revision = source.get("revision")
        refs.append(("model", source["identifier"], revision if isinstance(revision, str) else None))
    for key in ("tokenizer", "base"):
        if _is_hub_id(model.get(key)):
            refs.append(("model", model[key], None))
    dataset = spec.get("dataset") if isinstance(spec.get("dataset"), dict) else {}
    if _is_hub_id(dataset.get("hub")):
        revision = dataset.get("revision")
        refs.append(("dataset", dataset["hub"], revision if isinstance(revision, str) else None))
    unique: list[tuple[Kind, str, str | None]] = []
    for ref in refs:
        if ref not in unique:
            unique.append(ref)
    return unique


# -- the push (user API) --------------------------------------------------------------------------

class MirrorFile(WireModel):
    path: str
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    @field_validator("path")
    @classmethod
    def _plain(cls, value: str) -> str:
        try:
            return check_file_path(value)
        except ValidationFailed as exc:
            raise ValueError(exc.message) from None


class PushRequest(WireModel):
    """CLI -> coordinator: a snapshot's files, to be given upload URLs."""

    kind: Kind = "model"
    hub_id: str
    revision: str = "main"
    files: list[MirrorFile] = Field(min_length=1, max_length=MAX_FILES)


class PlannedFile(WireModel):
    """How to upload one file: a single PUT to ``url``, or parts then their ETags in the commit."""

    path: str
    url: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    part_size: int | None = None
    parts: list[PartUrl] | None = None


class PushPlan(WireModel):
    push_id: str
    files: list[PlannedFile]


class CommittedFile(WireModel):
    path: str
    parts: list[UploadedPart] | None = None


class PushCommit(WireModel):
    """CLI -> coordinator: every file is uploaded; the parts' ETags of those that went up in parts."""

    files: list[CommittedFile] = Field(default_factory=list)


class MirrorEntry(WireModel):
    """One mirrored snapshot, as ``GET /api/v1/mirror`` lists it."""

    kind: Kind
    hub_id: str
    revision: str
    files: list[MirrorFile]
    bytes: int
    created_at: float
    pushed_by: str
    held_by: list[str] = Field(default_factory=list)  # agents that hold it (cache-aware placement fills this)


class MirrorListing(WireModel):
    mode: Mode
    mirrored: list[MirrorEntry]


# -- a lease's mirrored copies (agent API) ----------------------------------------------------------

class MirrorRequest(WireModel):
    """Agent -> coordinator: the mirrored copies of the hub ids this lease's spec reads."""

    epoch: int


class MirroredFile(WireModel):
    path: str
    size: int
    sha256: str
    url: str


class MirroredSnapshot(WireModel):
    kind: Kind
    hub_id: str
    revision: str
    files: list[MirroredFile]


class MirrorResponse(WireModel):
    mode: Mode
    snapshots: list[MirroredSnapshot] = Field(default_factory=list)

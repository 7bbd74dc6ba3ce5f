"""``mloc models``: push a model or dataset snapshot into the coordinator's mirror, and list the mirror."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from mloc_shared.cli.options import CONFIG

app = typer.Typer(help="The model and dataset mirror (docs/models.md): push once, train anywhere.",
                  no_args_is_help=True)
console = Console()


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return str(n)


@app.command("push")
def push(ref: str = typer.Argument(..., metavar="ID_OR_DIR", help="a hub id (fetched here) or a local folder"),
         dataset: bool = typer.Option(False, "--dataset", help="a dataset repo, not a model"),
         as_id: str | None = typer.Option(None, "--as", help="the hub id a local folder stands for (org/name)"),
         revision: str | None = typer.Option(None, "--revision", help="branch, tag or commit (default main)"),
         config: Path | None = CONFIG) -> None:
    """Store a snapshot in the coordinator's artifact store, for agents that cannot reach the hub."""
    from mloc_shared.cli.main import _call, _client
    from mloc_shared.mirror_push import push_folder, resolve_source

    kind = "dataset" if dataset else "model"
    folder, hub_id, rev = _call(resolve_source, ref, kind, as_id, revision)
    console.print(f"pushing {kind} {hub_id}@{rev} from {folder}")
    entry = _call(push_folder, _client(config), folder, kind, hub_id, rev,
                  lambda f: console.print(f"  {f.path}  {_size(f.size)}"))
    console.print(f"mirrored {entry['kind']} {entry['hub_id']}@{entry['revision']}: {len(entry['files'])} files, "
                  f"{_size(entry['bytes'])}")


@app.command("list")
def list_mirror(config: Path | None = CONFIG) -> None:
    """What the mirror holds (and, where agents report them, which agents hold what)."""
    from mloc_shared.cli.main import _call, _client

    data = _call(_client(config).get, "/api/v1/mirror")
    table = Table("kind", "id", "revision", "size", "files", "pushed", "by", "held by")
    for m in data["mirrored"]:
        table.add_row(m["kind"], m["hub_id"], m["revision"], _size(m["bytes"]), str(len(m["files"])),
                      time.strftime("%Y-%m-%d %H:%M", time.localtime(m["created_at"])), m["pushed_by"],
                      ", ".join(m.get("held_by") or []))
    console.print(table)
    console.print(f"mirror mode: {data['mode']} (MLOC_MODEL_MIRROR on the coordinator)")

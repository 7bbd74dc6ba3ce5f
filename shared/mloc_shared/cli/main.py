"""The ``mloc`` command: start a coordinator or an agent, and drive the API.

Settings come from flags, ``MLOC_*`` variables and a YAML file (``--config`` or MLOC_CONFIG).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from mloc_shared.api_client import ApiClient
from mloc_shared.cli import models as models_cli
from mloc_shared.cli import nodes
from mloc_shared.cli import pipelines as pipeline_cli
from mloc_shared.cli.options import CONFIG
from mloc_shared.comparison import format_table
from mloc_shared.errors import MlocError
from mloc_shared.protocol import FINAL_STATES
from mloc_shared.settings import ClientSettings, load_settings

app = typer.Typer(help="MLOC: run LLM work on a fleet of GPU boxes behind NAT.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
token_app = typer.Typer(help="Manage API and join tokens (admin).", no_args_is_help=True)
app.add_typer(token_app, name="token")
app.add_typer(models_cli.app, name="models")
console = Console()
err = Console(stderr=True)

ConfigOpt = CONFIG


def _client(config: Path | None = None) -> ApiClient:
    s = load_settings(ClientSettings, config)
    return ApiClient(s.coordinator_url, s.api_token(), s.ca_bundle)


def _fail(exc: MlocError) -> None:
    where = f" (field {exc.field})" if exc.field else ""
    line = f" (line {exc.line})" if exc.line and f"line {exc.line}" not in exc.message else ""
    err.print(f"[red]error:[/red] {exc.message}{where}{line}")
    if exc.hint:
        err.print(f"[yellow]hint:[/yellow] {exc.hint}")
    raise typer.Exit(2)


def _call(fn, *args, **kwargs) -> Any:
    import httpx

    try:
        return fn(*args, **kwargs)
    except MlocError as exc:
        _fail(exc)
    except httpx.TransportError as exc:
        err.print(f"[red]error:[/red] cannot reach the coordinator: {exc}")
        err.print("[yellow]hint:[/yellow] set MLOC_COORDINATOR_URL (default http://127.0.0.1:8000)")
        raise typer.Exit(3) from None


@app.command(add_help_option=False, context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def start(
    ctx: typer.Context,
    node_type: str | None = typer.Option(None, "--node-type", "-t", envvar="MLOC_NODE_TYPE", show_envvar=False,
                                         help="orchestrator (coordinator) or worker (agent); MLOC_NODE_TYPE"),
) -> None:
    """Start a coordinator (--node-type orchestrator) or an agent (--node-type worker).

    Each node type's flags belong to the package that provides it: see mloc start --node-type NAME --help.
    """
    if node_type is None and "--help" in ctx.args:
        _start_help(ctx)
        return
    kind = nodes.canonical(node_type or "WORKER")
    try:
        command = nodes.command(kind)
    except nodes.NodeTypeUnavailable as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    try:
        command.main(ctx.args, prog_name=f"{ctx.command_path} --node-type {kind}")
    except MlocError as exc:
        _fail(exc)


def _start_help(ctx: typer.Context) -> None:
    """``mloc start --help``: this command's help, then which node types this box can start."""
    console.print(ctx.get_help())
    table = Table("node type", "provided by", "installed here", title="node types")
    for name in nodes.names():
        known = nodes.KNOWN.get(name)
        table.add_row(name, known.package if known else "", "yes" if nodes.installed(name) else "no")
    console.print(table)


def _progress_text(task: dict[str, Any]) -> str:
    p = task.get("progress") or {}
    bits = []
    if p.get("loss") is not None:
        bits.append(f"loss {p['loss']:.4g}")
    if p.get("tokens_per_s"):
        bits.append(f"{p['tokens_per_s']:.0f} tok/s")
    if p.get("message"):
        bits.append(str(p["message"]))
    return " ".join(bits)


def _wait(client: ApiClient, task_id: str, follow: bool) -> dict[str, Any]:
    """Show a progress bar (and logs when following) until the task is final."""
    if follow:
        for text in _call(client.follow_logs, task_id):
            sys.stdout.write(text)
            sys.stdout.flush()
        return _call(client.get, f"/api/v1/tasks/{task_id}")
    with Progress(TextColumn("[bold]{task.fields[state]:<9}"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
                  TimeRemainingColumn(), TextColumn("{task.fields[extra]}"), console=err) as bar:
        row = bar.add_task("task", total=100, state="queued", extra="")
        while True:
            task = _call(client.get, f"/api/v1/tasks/{task_id}")
            p = task.get("progress") or {}
            pct = p.get("percent")
            if pct is None and p.get("step") is not None and p.get("total"):
                pct = 100.0 * p["step"] / p["total"]
            extra = _progress_text(task) or (task.get("pending_reason") or "")[:60]
            bar.update(row, completed=pct or (100 if task["state"] == "succeeded" else 0),
                       state=task["state"], extra=extra)
            if task["state"] in FINAL_STATES:
                return task
            time.sleep(0.5)


@app.command()
def submit(
    file: Path = typer.Argument(..., exists=True, readable=True, help="task YAML or JSON"),
    wait: bool = typer.Option(False, "--wait", "-w", help="show progress until the task ends"),
    follow: bool = typer.Option(False, "--follow", "-f", help="stream logs until the task ends"),
    idempotency_key: str | None = typer.Option(None, help="makes a retried submit safe"),
    config: Path | None = ConfigOpt,
) -> None:
    """Submit a task file (sent unchanged: line breaks and all), a pipeline file or a sweep."""
    client = _client(config)
    body = file.read_bytes()
    if pipeline_cli.is_multi_file(body):
        _submit_pipeline(client, body, wait or follow)
        return
    task = _call(client.submit, body, idempotency_key)
    console.print(f"submitted [bold]{task['id']}[/bold] ({task['task_type']}) state={task['state']}")
    for warning in task.get("warnings", []):
        err.print(f"[yellow]note:[/yellow] {warning}")
    if wait or follow:
        task = _wait(client, task["id"], follow)
        colour = "green" if task["state"] == "succeeded" else "red"
        console.print(f"task {task['id']} [{colour}]{task['state']}[/{colour}]"
                      + (f": {task['error']}" if task.get("error") else ""))
        if task["state"] != "succeeded":
            raise typer.Exit(1)


def _submit_pipeline(client: ApiClient, body: bytes, follow: bool) -> None:
    record = _call(pipeline_cli.submit, client, body)
    console.print(f"submitted {record['kind']} [bold]{record['id']}[/bold] ({len(record['steps'])} tasks) "
                  f"state={record['state']}")
    if not follow:
        console.print(pipeline_cli.table(record))
        return
    record = pipeline_cli.follow(client, record["id"], console, _call)
    console.print(pipeline_cli.table(record))
    if record["state"] != "succeeded":
        raise typer.Exit(1)


@app.command("pipelines")
def list_pipelines(page: int = typer.Option(1), page_size: int = typer.Option(20),
                   config: Path | None = ConfigOpt) -> None:
    """List pipelines and sweeps, newest first."""
    data = _call(_client(config).get, "/api/v1/pipelines", page=page, page_size=page_size)
    table = Table("id", "name", "kind", "user", "state", "tasks by state")
    for p in data["pipelines"]:
        table.add_row(p["id"], p["name"], p["kind"], p["user"], p["state"],
                      ", ".join(f"{k} {v}" for k, v in sorted(p["counts"].items())))
    console.print(table)
    console.print(f"page {data['page']}/{max(1, data['pages'])}, {data['total']} pipeline(s)")


@app.command("pipeline")
def show_pipeline(pipeline_id: str, follow: bool = typer.Option(False, "--follow", "-f",
                                                                  help="show step changes until all end"),
                  cancel_all: bool = typer.Option(False, "--cancel", help="cancel every unfinished step"),
                  config: Path | None = ConfigOpt) -> None:
    """One pipeline or sweep: each step's state, values and final metrics."""
    client = _client(config)
    if cancel_all:
        done = _call(client.post, f"/api/v1/pipelines/{pipeline_id}/cancel")
        console.print(f"pipeline {pipeline_id}: cancelled {len(done['cancelled'])}, "
                      f"stopping {len(done['cancelling'])}")
        return
    record = (pipeline_cli.follow(client, pipeline_id, console, _call) if follow
              else _call(client.get, f"/api/v1/pipelines/{pipeline_id}"))
    console.print(pipeline_cli.table(record))


@app.command("tasks")
def list_tasks(
    state: str | None = typer.Option(None, help="blocked, queued, running, succeeded, failed, cancelled"),
    user: str | None = typer.Option(None),
    task_type: str | None = typer.Option(None, "--type"),
    page: int = typer.Option(1),
    page_size: int = typer.Option(20),
    config: Path | None = ConfigOpt,
) -> None:
    """List tasks, newest first."""
    data = _call(_client(config).get, "/api/v1/tasks", state=state, user=user, task_type=task_type, page=page,
                 page_size=page_size)
    table = Table("id", "name", "type", "user", "state", "progress", "attempts", "agent / reason")
    for t in data["tasks"]:
        p = t.get("progress") or {}
        prog = f"{p['percent']:.0f}%" if p.get("percent") is not None else ""
        where = (t.get("lease") or {}).get("agent") or t.get("agent") or (t.get("pending_reason") or "")[:50]
        table.add_row(t["id"], t["name"], t["task_type"], t["user"], t["state"], prog,
                      f"{t['attempts']}/{t['max_attempts']}", where or "")
    console.print(table)
    console.print(f"page {data['page']}/{max(1, data['pages'])}, {data['total']} task(s)")


@app.command("queue")
def queue(limit: int = typer.Option(200, help="how many places to show"), config: Path | None = ConfigOpt) -> None:
    """The queue in the order tasks will start, each with why it is next or waits."""
    data = _call(_client(config).get, "/api/v1/queue", limit=limit)
    table = Table("#", "id", "user", "class", "prio", "GPUs", "waiting", "reason")
    now = time.time()
    for t in data["tasks"]:
        who = t["user"] + (f" ({t['team']})" if t.get("team") else "")
        table.add_row(str(t["position"]), t["id"], who, t["priority_class"], str(t["priority"]), str(t["gpus"]),
                      f"{now - t['queued_at']:.0f}s", t["reason"])
    console.print(table)
    blocked = f", {data['blocked']} blocked on other tasks" if data.get("blocked") else ""
    console.print(f"{data['total']} task(s) queued{blocked}")


@app.command()
def priority(task_id: str, priority_class: str = typer.Argument(..., metavar="CLASS", help="e.g. low, normal, high"),
             value: int | None = typer.Option(None, "--priority", help="also set the numeric priority"),
             config: Path | None = ConfigOpt) -> None:
    """Change a queued or running task's priority class (admin): a queued one moves in the queue at once."""
    body = {"priority_class": priority_class, **({"priority": value} if value is not None else {})}
    data = _call(_client(config).patch, f"/api/v1/tasks/{task_id}", json=body)
    extra = "" if data.get("preemptible") is None else f", preemptible: {'yes' if data['preemptible'] else 'no'}"
    console.print(f"task {task_id} ({data['state']}): class {data['priority_class']}, priority {data['priority']}"
                  + extra)


@app.command()
def show(task_id: str, config: Path | None = ConfigOpt) -> None:
    """Show one task as JSON."""
    console.print_json(data=_call(_client(config).get, f"/api/v1/tasks/{task_id}"))


@app.command()
def logs(task_id: str, follow: bool = typer.Option(False, "--follow", "-f"), config: Path | None = ConfigOpt) -> None:
    """Print a task's logs; -f follows them until the task ends."""
    client = _client(config)
    if follow:
        for text in _call(client.follow_logs, task_id):
            sys.stdout.write(text)
            sys.stdout.flush()
        return
    cursor: dict[str, int] = {"after_attempt": 0, "after_seq": -1}
    while True:
        data = _call(client.get, f"/api/v1/tasks/{task_id}/logs", **cursor)
        for chunk in data["chunks"]:
            sys.stdout.write(chunk["data"])
        if not data["chunks"]:
            return
        cursor = data["next"]


@app.command()
def compare(task_ids: list[str] = typer.Argument(..., metavar="ID...", help="the tasks to compare"),
            as_json: bool = typer.Option(False, "--json", help="the comparison as JSON"),
            config: Path | None = ConfigOpt) -> None:
    """Compare tasks: their final metrics and the hyperparameters that differ, one row each (the status
    page's /compare?ids=… table)."""
    data = _call(_client(config).get, "/api/v1/compare", ids=",".join(task_ids))
    if as_json:
        print(json.dumps(data, indent=2))
    else:
        print(format_table(data))


@app.command()
def cancel(task_id: str, config: Path | None = ConfigOpt) -> None:
    """Cancel a task (a running one gets SIGTERM, then SIGKILL after a grace)."""
    result = _call(_client(config).post, f"/api/v1/tasks/{task_id}/cancel")
    console.print(f"task {task_id}: {result['state']}")


@app.command("agents")
def agents(config: Path | None = ConfigOpt) -> None:
    """List agents with their GPUs and leases."""
    data = _call(_client(config).get, "/api/v1/workers")
    table = Table("name", "state", "labels", "GPUs", "leases", "models", "disk free", "last seen")
    for a in data["workers"]:
        gpus = ", ".join(f"{g['name']} {g['memory_total_mb'] / 1024:.0f}G"
                         + (" (declared)" if g.get("declared") else "") for g in a["gpus"])
        gpus = gpus or "CPU only"
        labels = ",".join(f"{k}={v}" for k, v in a["labels"].items())
        free = a.get("disk_free_bytes")
        table.add_row(a["name"], a["state"] + (" (draining)" if a["draining"] else ""), labels, gpus,
                      str(len(a["leases"])), f"{a.get('model_count', 0)} ({_size(a.get('model_bytes', 0))})",
                      _size(free) if free is not None else "-", f"{time.time() - a['last_seen']:.0f}s ago")
    console.print(table)


def _size(n: float) -> str:
    """Bytes for a table: 512 B, 3.4 MB, 12.0 GB."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _seconds(text: str) -> float:
    """``120``, ``120s``, ``2m``, ``1h`` -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    raw = text.strip().lower()
    try:
        return float(raw[:-1]) * units[raw[-1]] if raw and raw[-1] in units else float(raw)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a duration (e.g. 120, 120s, 2m)") from None


@app.command()
def drain(name: str, undo: bool = typer.Option(False, "--undo", help="take work again"),
          deadline: str = typer.Option("0", "--deadline",
                                       help="the box goes in this long (120s, 2m): running tasks checkpoint now "
                                            "and resume elsewhere; 0: they finish here"),
          config: Path | None = ConfigOpt) -> None:
    """Stop giving an agent new tasks (its running tasks finish, or checkpoint within --deadline); --undo
    reverses it."""
    action = "undrain" if undo else "drain"
    seconds = _seconds(deadline)
    body = {"deadline_s": seconds} if seconds > 0 and not undo else None
    agent = _call(_client(config).post, f"/api/v1/agents/{name}/{action}", json=body)
    note = f" (running tasks checkpoint within {seconds:g}s)" if body else ""
    console.print(f"agent {agent['name']}: {agent['state']}{note}")


@app.command()
def stats(user: str | None = typer.Option(None), start_date: str | None = typer.Option(None),
          end_date: str | None = typer.Option(None), config: Path | None = ConfigOpt) -> None:
    """Usage: tasks by state and type, GPU-hours, queue wait."""
    data = _call(_client(config).get, "/api/v1/stats", user=user, start_date=start_date, end_date=end_date)
    table = Table("user", "tasks", "GPU-hours", "avg queue wait (s)")
    for u in data["users"]:
        table.add_row(u["user"], str(u["tasks"]), f"{u['gpu_hours']:.3f}", str(u["avg_queue_wait_s"]))
    console.print(table)
    console.print("by state: " + ", ".join(f"{k}={v}" for k, v in data["tasks_by_state"].items()))
    console.print("by type: " + ", ".join(f"{k}={v}" for k, v in data["tasks_by_type"].items()))
    console.print(f"total GPU-hours: {data['gpu_hours']:.3f}")


@app.command()
def artifacts(task_id: str, download: str | None = typer.Option(None, help="name of one to download"),
              output: Path | None = typer.Option(None, "-o"), config: Path | None = ConfigOpt) -> None:
    """List a task's artifacts, or download one."""
    client = _client(config)
    if download:
        dest = output or Path(Path(download).name)
        size = _call(client.download, task_id, download, str(dest))
        console.print(f"saved {dest} ({size} bytes)")
        return
    data = _call(client.get, f"/api/v1/tasks/{task_id}/artifacts")
    table = Table("name", "kind", "step", "size", "attempt")
    for a in data["artifacts"]:
        table.add_row(a["name"], a["kind"], str(a["step"] or ""), str(a["size"]), str(a["attempt"]))
    console.print(table)


@app.command()
def demo(workdir: str | None = typer.Option(None, help="folder for the demo's data (default: a temp dir)")) -> None:
    """Start a coordinator and a local agent, run a sample task (and a tiny fine-tune), stop both."""
    from mloc_shared.cli.demo import run

    raise typer.Exit(run(workdir))


@token_app.command("create")
def token_create(user: str = typer.Option("", help="user name (user tokens)"),
                 role: str = typer.Option("user", help="user or admin"),
                 join: bool = typer.Option(False, "--join", help="an agent join token instead"),
                 ttl: float | None = typer.Option(None, help="expires after this many seconds"),
                 max_uses: int | None = typer.Option(None, help="join tokens: how many registrations"),
                 team: str = typer.Option("", help="user tokens: the team its tasks count against (fair share)"),
                 config: Path | None = ConfigOpt) -> None:
    """Create a token; its secret is shown once."""
    body = {"kind": "join" if join else "user", "user": user, "role": role, "ttl_s": ttl, "max_uses": max_uses,
            "team": team}
    data = _call(_client(config).post, "/api/v1/tokens", json=body)
    console.print(f"id {data['id']}  token {data['token']}")


@token_app.command("list")
def token_list(config: Path | None = ConfigOpt) -> None:
    data = _call(_client(config).get, "/api/v1/tokens")
    table = Table("id", "kind", "user", "team", "role", "uses", "expires", "revoked")
    for t in data["tokens"]:
        table.add_row(t["id"], t["kind"], t["user"], t.get("team") or "", t["role"],
                      f"{t['uses']}/{t['max_uses'] or '∞'}",
                      time.strftime("%Y-%m-%d %H:%M", time.localtime(t["expires_at"])) if t["expires_at"] else "",
                      "yes" if t["revoked"] else "")
    console.print(table)


@token_app.command("revoke")
def token_revoke(token_id: str, config: Path | None = ConfigOpt) -> None:
    _call(_client(config).delete, f"/api/v1/tokens/{token_id}")
    console.print(f"token {token_id} revoked")


if __name__ == "__main__":
    app()

"""Ordinary users for the attack tests: tokens made through the admin API (as ``mloc token create`` does),
and everything such a user can read about a task, gathered into one text to search for leaked values."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from tests.harness import Coordinator


def create_token(coord: Coordinator, **body: Any) -> dict[str, Any]:
    """POST /api/v1/tokens as the admin; the answer holds the secret (``token``) and the token ``id``."""
    resp = coord.http.post("/api/v1/tokens", json=body)
    assert resp.status_code == 201, resp.text
    return resp.json()


def client_for(coord: Coordinator, token: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=coord.url, headers=headers, timeout=30)


def user_client(coord: Coordinator, name: str) -> httpx.Client:
    """A client holding a fresh token of the ordinary (non-admin) user ``name``."""
    return client_for(coord, create_token(coord, kind="user", user=name, role="user")["token"])


def submit(client: httpx.Client, spec: dict[str, Any]) -> dict[str, Any]:
    resp = client.post("/api/v1/tasks", content=json.dumps(spec))
    assert resp.status_code in (200, 201), resp.text
    return resp.json()


def user_view(client: httpx.Client, task_id: str) -> str:
    """The task, its logs and every artifact's bytes, as this client sees them (one text to search)."""
    parts = [client.get(f"/api/v1/tasks/{task_id}").text, client.get(f"/api/v1/tasks/{task_id}/logs").text]
    listing = client.get(f"/api/v1/tasks/{task_id}/artifacts")
    if listing.status_code == 200:
        for artifact in listing.json()["artifacts"]:
            body = client.get(f"/api/v1/tasks/{task_id}/artifacts/{artifact['name']}", follow_redirects=True)
            parts.append(body.content.decode("utf-8", "replace"))
    return "\n".join(parts)


def admin_from_file(root: Path, **kwargs: Any) -> Coordinator:
    """A coordinator started without MLOC_ADMIN_TOKEN, as a real first start is: it writes
    ``<data_dir>/admin.token``, and the test's admin client reads the token from there."""
    coord = Coordinator(root, **kwargs)
    del coord.env["MLOC_ADMIN_TOKEN"]
    coord.start()
    coord.admin_token = (coord.data_dir / "admin.token").read_text().strip()
    coord.http.headers["Authorization"] = f"Bearer {coord.admin_token}"
    return coord

"""Issue 11, item 4 (the coordinator's side): a request from 127.0.0.1 without a token is not an admin
unless the deployment opts in (MLOC_LOOPBACK_ADMIN=true); a proxy header, X-Real-IP included, never
makes a request local; and the ``mloc`` CLI on the coordinator's host still works, reading
``<data_dir>/admin.token`` (the README's commands keep working there)."""

from __future__ import annotations

import re
import subprocess

import httpx
import pytest

from tests.harness import MLOC, Coordinator, base_env

ADMIN_ONLY = "/api/v1/tokens"


def test_loopback_is_not_admin_by_default_but_the_cli_on_the_host_reads_admin_token(
        coordinator: Coordinator) -> None:
    anonymous = httpx.Client(base_url=coordinator.url, timeout=30)
    assert anonymous.get("/health").status_code == 200  # the README's first curl needs no token
    for method, path in (("GET", ADMIN_ONLY), ("GET", "/api/v1/workers"), ("GET", "/api/v1/tasks"),
                         ("POST", "/api/v1/tasks")):
        resp = anonymous.request(method, path, json={"taskType": "command", "command": "true"})
        assert resp.status_code == 401, (
            f"{method} {path} from 127.0.0.1 without a token answered {resp.status_code}: loopback is still admin "
            "by default (any local process, or a task's URL fetched by an agent on this host, is an admin)")
    anonymous.close()

    # the CLI on the coordinator's host: no MLOC_TOKEN, the coordinator's data dir -> it uses admin.token
    env = base_env(MLOC_COORDINATOR_URL=coordinator.url, MLOC_DATA_DIR=str(coordinator.data_dir))
    env.pop("MLOC_TOKEN", None)
    made = subprocess.run([*MLOC, "token", "create", "--user", "bob"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert made.returncode == 0, made.stdout + made.stderr
    secret = re.search(r"mloc_user_[A-Za-z0-9_-]+", made.stdout).group(0)
    with httpx.Client(base_url=coordinator.url, timeout=30, headers={"Authorization": f"Bearer {secret}"}) as bob:
        assert bob.get("/api/v1/tasks").status_code == 200


@pytest.mark.coordinator(extra_env={"MLOC_LOOPBACK_ADMIN": "true"})
def test_a_proxied_request_is_never_local_even_with_only_x_real_ip(coordinator: Coordinator) -> None:
    with httpx.Client(base_url=coordinator.url, timeout=30) as anonymous:
        for header in ({"X-Real-IP": "203.0.113.9"}, {"X-Forwarded-For": "203.0.113.9"},
                       {"Forwarded": "for=203.0.113.9"}):
            resp = anonymous.get(ADMIN_ONLY, headers=header)
            assert resp.status_code == 401, (
                f"a request through a proxy ({header}) was treated as local, and so as admin: {resp.status_code}")
        assert anonymous.get(ADMIN_ONLY).status_code == 200  # the opt-in allowance itself still works

"""Issue 11, item 2: a user token created with a TTL stops working when it expires, on its next use
(not when the coordinator next reloads its token cache)."""

from __future__ import annotations

import time

from tests.harness import Coordinator
from tests.security.users import client_for, create_token


def test_an_expired_user_token_is_refused_on_its_next_use(coordinator: Coordinator) -> None:
    token = create_token(coordinator, kind="user", user="temp", ttl_s=2)
    (row,) = [t for t in coordinator.http.get("/api/v1/tokens").json()["tokens"] if t["id"] == token["id"]]
    with client_for(coordinator, token["token"]) as temp:
        assert temp.get("/api/v1/tasks").status_code == 200  # valid before it expires
        time.sleep(max(0.0, row["expires_at"] - time.time()) + 0.3)  # real time: the coordinator's own clock
        late = temp.get("/api/v1/tasks")
        assert late.status_code == 401, f"a token used {time.time() - row['expires_at']:.1f}s after it expired " \
                                        f"still works: {late.status_code} {late.text[:200]}"
        assert temp.post("/api/v1/tasks", json={"taskType": "command", "command": "true"}).status_code == 401

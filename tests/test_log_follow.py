"""A client that hangs up on a followed log stream is normal: the coordinator logs no traceback."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

from tests.harness import Coordinator, wait_for


def follow_then_hang_up(coordinator: Coordinator, task_id: str, accept: str) -> None:
    """Open a follow stream on a raw socket, read its first bytes, and reset the connection."""
    url = urlsplit(coordinator.url)
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall((f"GET /api/v1/tasks/{task_id}/logs?follow=1 HTTP/1.1\r\nHost: {url.netloc}\r\n"
                      f"Authorization: Bearer {coordinator.admin_token}\r\nAccept: {accept}\r\n\r\n").encode())
        assert b"200 OK" in sock.recv(4096)
        # SO_LINGER 0: close sends a RST, as a browser tab that is closed mid-stream does
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


def test_a_follower_that_hangs_up_leaves_no_traceback(coordinator: Coordinator, start_agent) -> None:
    start_agent("chatty")
    task = coordinator.submit({"taskType": "command", "resources": {"gpus": 0},
                               "command": "for i in $(seq 1 30); do echo line $i; sleep 0.1; done"})
    coordinator.wait_state(task["id"], "running")
    for accept in ("text/plain", "text/event-stream"):
        follow_then_hang_up(coordinator, task["id"], accept)
    coordinator.wait_state(task["id"], "succeeded", timeout=30)
    # the streams saw more output after the hang-up, so both handlers wrote to a closed transport
    wait_for(lambda: "line 30" in coordinator.logs(task["id"]), 10, "all output stored")
    assert coordinator.proc is not None
    out = coordinator.proc.output()
    assert "Traceback" not in out and "Cannot write to closing transport" not in out, out[-3000:]

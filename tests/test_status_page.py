"""The status page in a real headless browser (Debian's chromium), against real coordinator and agents."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from tests.browser import browser, keep_screenshot  # noqa: F401 (fixture)
from tests.conftest import A100
from tests.harness import Coordinator, wait_for
from tests.raw_agent import PROTO, register_body

# 50 steps, 0.25 s apart: the bar must move while the page is open
PROGRESS_TASK = (
    'for i in $(seq 1 50); do echo "{\\"step\\": $i, \\"total\\": 50, \\"message\\": \\"epoch 1\\"}" '
    '> "$MLOC_PROGRESS"; echo "line $i"; sleep 0.25; done; echo done > "$MLOC_OUTPUT_DIR/report.txt"'
)


def until(page, js: str, timeout: float, what: str) -> None:
    """Wait for a JS expression to be truthy (page.evaluate: the page's CSP forbids wait_for_function's eval)."""
    wait_for(lambda: page.evaluate(js), timeout, what, interval=0.1)


def admin_page(browser, coord: Coordinator, **options):  # noqa: F811
    """A page in a browser that signed in with the admin token (kept in localStorage, as the login form
    keeps it): loopback alone is no admin."""
    context = browser.new_context(**options, storage_state={"origins": [
        {"origin": coord.url, "localStorage": [{"name": "mloc_token", "value": coord.admin_token}]}]})
    return context.new_page()


def percent(page, task_id: str) -> float:
    raw = page.get_attribute(f'tr[data-task="{task_id}"] [role=progressbar]', "aria-valuenow")
    return float(raw) if raw else 0.0


def test_page_shows_agents_and_progress_advancing_without_reload(coordinator: Coordinator, start_agent, browser,  # noqa: F811
                                                                  tmp_path: Path) -> None:
    start_agent("gpu-box-1", gpus=[A100], labels="site=lab-a,rack=3")
    done = coordinator.submit({"taskType": "command", "command": "echo finished-one", "name": "quick"})
    coordinator.wait_state(done["id"], "succeeded")
    running = coordinator.submit({"taskType": "command", "command": PROGRESS_TASK, "name": "train-demo",
                                  "resources": {"gpus": 1}})
    stuck = coordinator.submit({"taskType": "command", "command": "true", "name": "needs-h100",
                                "resources": {"gpus": 1, "gpu_models": ["H100"]}})

    page = admin_page(browser, coordinator, viewport={"width": 1400, "height": 1000})
    page.goto(coordinator.url + "/")
    agent_row = page.locator('tr[data-agent="gpu-box-1"]')
    agent_row.wait_for(timeout=15_000)
    text = agent_row.inner_text()
    assert "A100-SXM4-80GB" in text and "80 GB" in text and "site=lab-a" in text and "active" in text
    assert "ago" in text  # last heartbeat

    page.locator(f'tr[data-task="{running["id"]}"] [role=progressbar]').wait_for(timeout=15_000)
    page.evaluate("window.__sameDocument = 'yes'")
    first = wait_for(lambda: percent(page, running["id"]), 15, "a first progress value")
    later = wait_for(lambda: (p := percent(page, running["id"])) >= first + 10 and p, 20, "the bar to advance")
    assert later > first
    assert page.evaluate("window.__sameDocument") == "yes", "the page reloaded instead of updating"
    row = page.locator(f'tr[data-task="{running["id"]}"]').inner_text()
    assert "gpu-box-1" in row and "epoch 1" in row and "/50" in row
    assert page.locator(f'tr[data-task="{running["id"]}"] td.eta').inner_text() not in ("", "\u2013")  # en dash: no ETA
    assert page.locator(f'tr[data-agent="gpu-box-1"] a[href="/tasks/{running["id"]}"]').count() >= 1  # its lease

    queue_row = page.locator(f'#queue-body tr[data-task="{stuck["id"]}"]').inner_text()
    assert "no registered agent can run it" in queue_row and "h100" in queue_row  # the reason it waits
    assert "succeeded" in page.locator(f'#finished-body tr[data-task="{done["id"]}"]').inner_text()
    keep_screenshot(page, tmp_path, "status-page.png")

    # the task page: live logs over SSE, attempts, and the artifact once it finishes
    page.goto(f"{coordinator.url}/tasks/{running['id']}")
    page.locator("#logs span").first.wait_for(timeout=15_000)
    page.evaluate("window.__sameDocument = 'yes'")
    until(page, "document.querySelector('#logs').textContent.includes('line 50')", 30, "the last log line")
    page.locator("#artifacts-body a", has_text="report.txt").wait_for(timeout=20_000)
    assert "succeeded" in page.locator("#task-state").inner_text()
    attempts = page.locator("#attempts-body").inner_text()
    assert "gpu-box-1" in attempts and "succeeded" in attempts
    assert page.evaluate("window.__sameDocument") == "yes"
    keep_screenshot(page, tmp_path, "task-page.png")
    page.context.close()


def test_page_asks_for_a_token(tmp_path: Path, browser) -> None:  # noqa: F811
    coord = Coordinator(tmp_path).start()  # loopback is no admin (MLOC_LOOPBACK_ADMIN is off by default)
    try:
        alice = coord.http.post("/api/v1/tokens", json={"user": "alice"}).json()["token"]
        page = browser.new_page()
        page.goto(coord.url + "/")
        page.locator("#login-form").wait_for(state="visible", timeout=15_000)
        assert page.locator("#main").is_hidden()
        page.fill("#token", "mloc_user_wrong")
        page.click("#login-form button")
        until(page, "document.querySelector('#login-error').textContent.length > 0", 10, "the login error")
        page.fill("#token", alice)
        page.click("#login-form button")
        page.locator("#main").wait_for(state="visible", timeout=15_000)
        until(page, "document.querySelector('#who').textContent.startsWith('alice (user)')", 15, "alice's name")
        page.reload()  # the token is kept in this browser
        until(page, "document.querySelector('#who').textContent.startsWith('alice')", 15, "alice after a reload")
        assert page.locator("#login").is_hidden()
        page.close()
    finally:
        coord.stop()


def _register(http: httpx.Client, join: str, i: int) -> None:
    resp = http.post("/api/v1/agents/register", content=register_body(f"agent-{i:04d}", 2, {"site": f"s{i % 7}"}),
                     headers={"X-MLOC-Join-Token": join})
    assert resp.status_code == 201, resp.text


def test_page_stays_fast_with_1000_agents_and_10000_tasks(coordinator: Coordinator, browser, tmp_path: Path) -> None:  # noqa: F811
    with httpx.Client(base_url=coordinator.url, timeout=30, headers=PROTO) as http:
        for i in range(1000):
            _register(http, coordinator.join_token, i)
    spec = {"taskType": "command", "command": "true", "resources": {"gpus": 1, "gpu_models": ["H100"]}}
    for _ in range(2):
        resp = coordinator.http.post("/api/v1/tasks", json={"tasks": [spec] * 5000})
        assert resp.status_code == 201, resp.text[:300]

    for path in ("/api/v1/overview", "/api/v1/workers?page=1&page_size=25", "/api/v1/workers?state=active&q=s3",
                 "/api/v1/tasks?state=queued&page=1&page_size=25", "/api/v1/tasks?state=queued&page=400&page_size=25",
                 "/metrics"):
        start = time.perf_counter()
        assert coordinator.http.get(path).status_code == 200
        took = time.perf_counter() - start
        assert took < 1.0, f"{path} took {took:.3f}s"

    page = admin_page(browser, coordinator, viewport={"width": 1400, "height": 1000})
    start = time.perf_counter()
    page.goto(coordinator.url + "/")
    until(page, "window.mlocRefreshes >= 1", 15, "the first refresh")
    first_render = time.perf_counter() - start
    assert page.locator("#agents-body tr").count() == 25  # one page, not a thousand rows
    assert page.locator("#queue-body tr").count() == 25
    assert "page 1 of 40" in page.locator('.pager[data-for="agents"]').inner_text()
    assert "page 1 of 400" in page.locator('.pager[data-for="queue"]').inner_text()
    page.click('.pager[data-for="agents"] button:has-text("next")')
    page.locator('tr[data-agent="agent-0025"]').wait_for(timeout=10_000)
    page.fill("#agents-q", "agent-0999")
    page.locator('tr[data-agent="agent-0999"]').wait_for(timeout=10_000)
    wait_for(lambda: page.locator("#agents-body tr").count() == 1, 10, "the filter to leave one agent")
    keep_screenshot(page, tmp_path, "status-page-1000-agents.png")
    page.context.close()
    assert first_render < 5.0, f"first render took {first_render:.2f}s"

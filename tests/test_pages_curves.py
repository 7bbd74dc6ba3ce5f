"""The loss curves and the compare page in a real headless browser (Debian's chromium), against a real
coordinator and agent running ``command`` tasks that print progress lines."""

from __future__ import annotations

from pathlib import Path

from tests.browser import browser, keep_screenshot  # noqa: F401 (fixture)
from tests.harness import Coordinator, wait_for
from tests.test_status_page import admin_page, until


def curve_task(steps: int, pause_s: float, offset: int | str = 0) -> str:
    """A command task whose loss falls from {offset}.99 by 0.01 a step, one progress line every ``pause_s``."""
    return (f'for i in $(seq 1 {steps}); do echo "{{\\"step\\": $i, \\"total\\": {steps}, '
            f'\\"loss\\": {offset}.$((100 - i))}}" > "$MLOC_PROGRESS"; sleep {pause_s}; done')


def points(page, chart: str, series: str | None = None) -> list[int]:
    """How many points each curve of a chart has (one path per curve)."""
    sel = f'svg[data-chart="{chart}"] path' + (f'[data-series="{series}"]' if series else "")
    return page.evaluate(f"[...document.querySelectorAll('{sel}')].map((p) => +p.dataset.points)")


SWEEP = """
taskType: command
name: lr
command: '{command}'
sweep:
  list:  # final losses 2.7x, 0.7x, 1.7x: by loss 1, 2, 0
    - {{hyperparameters.learning_rate: 3.0e-4, env.OFFSET: "2"}}
    - {{hyperparameters.learning_rate: 1.0e-4, env.OFFSET: "0"}}
    - {{hyperparameters.learning_rate: 2.0e-4, env.OFFSET: "1"}}
hyperparameters: {{epochs: 1}}
"""


def test_curves_grow_live_and_the_sweep_and_compare_pages_overlay_three_runs_sorted_by_a_column(
        coordinator: Coordinator, start_agent, browser, tmp_path: Path) -> None:  # noqa: F811
    """One coordinator for all pages (a start costs seconds): a sweep of three runs."""
    start_agent("box-1", max_tasks=3)
    command = curve_task(24, 0.3, "$OFFSET").replace("'", "''")  # in YAML's single quotes
    resp = coordinator.http.post("/api/v1/pipelines", content=SWEEP.format(command=command))
    assert resp.status_code == 201, resp.text
    sweep = resp.json()
    ids = [step["task_id"] for step in sweep["steps"]]
    names = [f"lr[{i}]" for i in range(3)]

    # the task page: the loss curve gains points while the task runs, without a reload
    page = admin_page(browser, coordinator, viewport={"width": 1300, "height": 1000})
    page.goto(f"{coordinator.url}/tasks/{ids[0]}")
    page.evaluate("window.__sameDocument = 'yes'")
    first = wait_for(lambda: (n := points(page, "loss")) and n[0] >= 2 and n[0], 20, "a loss curve with points")
    grown = wait_for(lambda: (n := points(page, "loss")) and n[0] >= first + 3 and n[0], 20, "the curve to grow")
    assert coordinator.task(ids[0])["state"] == "running", "the curve must grow while the task runs"
    assert grown > first and page.evaluate("window.__sameDocument") == "yes", "the page reloaded instead"
    assert page.locator("#task-pipeline").get_attribute("href") == f"/pipelines/{sweep['id']}"
    for task_id in ids:
        coordinator.wait_state(task_id, "succeeded", timeout=40)
    until(page, "document.querySelector('#task-state').textContent.includes('succeeded')", 15, "the final state")
    history = coordinator.http.get(f"/api/v1/tasks/{ids[0]}/progress").json()["points"]
    assert len(history) == 24  # every step: the heartbeats carry the points between them
    until(page, f"+document.querySelector('svg[data-chart=\"loss\"] path').dataset.points === {len(history)}", 10,
          "every stored point drawn")
    keep_screenshot(page, tmp_path, "task-page-curve.png")

    # the sweep's page: its steps, and one curve and one colour per child, a legend, a sortable table
    for url in (f"{coordinator.url}/pipelines/{sweep['id']}", f"{coordinator.url}/compare?ids={','.join(ids)}"):
        page.goto(url)
        until(page, "document.querySelectorAll('svg[data-chart=\"loss\"] path').length === 3", 15, "three curves")
        assert all(n == 24 for n in points(page, "loss"))
        strokes = page.evaluate("[...document.querySelectorAll('svg[data-chart=\"loss\"] path')]"
                                ".map((p) => p.getAttribute('stroke'))")
        assert len(set(strokes)) == 3
        assert page.locator("#compare-legend .legend-item").all_inner_texts() == names
        heads = page.evaluate("[...document.querySelectorAll('#compare-table th')].map((h) => h.dataset.col)")
        assert "learning_rate" in heads and "loss" in heads and "epochs" not in heads  # epochs is the same in all

        def order() -> list[str]:
            return page.evaluate("[...document.querySelectorAll('#compare-table tbody tr')]"
                                 ".map((r) => r.dataset.task)")

        assert order() == ids
        page.click('#compare-table th[data-col="loss"]')
        assert order() == [ids[1], ids[2], ids[0]]
        page.click('#compare-table th[data-col="loss"]')
        assert order() == [ids[0], ids[2], ids[1]]
        page.click('#compare-table th[data-col="learning_rate"]')
        assert order() == [ids[1], ids[2], ids[0]]
        if "/pipelines/" in url:
            until(page, "document.querySelectorAll('#steps-body tr').length === 3", 10, "the sweep's steps")
            assert page.locator("#pipeline-state").inner_text() == "succeeded"
            assert page.locator("#steps-body tr td:nth-child(3)").all_inner_texts()[1] == \
                "hyperparameters.learning_rate=0.0001, env.OFFSET=0"
            assert page.locator("#cancel").is_hidden()
            keep_screenshot(page, tmp_path, "sweep-page.png")
        else:
            keep_screenshot(page, tmp_path, "compare-page.png")
    page.context.close()

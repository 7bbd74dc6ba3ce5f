"""Warm runtimes (docs/warm-starts.md): a hosted task forked from a template that already imported its
libraries is still a fresh process of its own, stops and dies like a cold one, and the agent falls back to a
cold start whenever the template cannot fork safely. Real coordinator and agent processes; the hosted module is
a plugin whose warm imports are tiny (no torch), registered through a real dist-info entry point."""

from __future__ import annotations

import hashlib
import os
import signal
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from mloc_shared.task_types import BUILTIN_TASK_TYPES

from tests.harness import Agent, Coordinator, wait_for

SECRET = "warm-secret-3f9a1c7e5b2d4f6a8c0e"
GPUS = [{"name": "Test GPU", "memory_gb": 16}, {"name": "Test GPU", "memory_gb": 16}]

PROBE = '''
import hashlib, os, sys, threading, time
from mloc_agent.modules.base import BaseModule

class Probe(BaseModule):
    """Reports what its process is; sleeps when asked (PROBE_SLEEP), saying its pid first."""
    task_type = "warm_probe"
    warm_imports = tuple(n for n in os.environ.get("PROBE_WARM_IMPORTS", "json,warm_probe_heavy").split(",") if n)

    async def execute(self, progress_callback=None):
        pid = os.getpid()
        self.ctx.progress({"message": f"pid {pid}", "step": 1})
        if os.environ.get("PROBE_SLEEP"):
            time.sleep(float(os.environ["PROBE_SLEEP"]))
        return {"pid": pid, "pgid": os.getpgid(0), "sid": os.getsid(0), "ppid": os.getppid(), "cwd": os.getcwd(),
                "secret_sha": hashlib.sha256(os.environ["PROBE_SECRET"].encode()).hexdigest()
                if "PROBE_SECRET" in os.environ else None, "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "heavy_preloaded": "warm_probe_heavy" in sys.modules, "threads": threading.active_count()}
'''


@pytest.fixture
def plugin_site(tmp_path: Path) -> Path:
    """A site folder holding the probe module, a stand-in 'heavy' library, one that starts a thread at
    import, and the dist-info that registers the probe's task type."""
    site = tmp_path / "site"
    dist = site / "mloc_warm_probe-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mloc-warm-probe\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[mloc.modules]\nwarm_probe = warm_probe:Probe\n")
    (site / "warm_probe.py").write_text(textwrap.dedent(PROBE))
    (site / "warm_probe_heavy.py").write_text("import time\nLOADED_AT = time.time()\n")
    (site / "warm_threader.py").write_text(
        "import threading, time\nthreading.Thread(target=time.sleep, args=(3600,), daemon=True).start()\n")
    return site


def warm_agent(coordinator: Coordinator, name: str, site: Path, **env: str) -> Agent:
    """An agent with warm runtimes on whose one hosted task type is the probe (the built-in ML types, served by
    the same runtime, would have its template import torch and the rest)."""
    others = ",".join(t for t in BUILTIN_TASK_TYPES if t != "command")
    settings = {"PYTHONPATH": str(site), "MLOC_WARM_RUNTIMES": "true", "MLOC_DISABLED_TASK_TYPES": others, **env}
    return Agent(coordinator, name, gpus=GPUS, extra_env=settings)


def run_probe(coordinator: Coordinator, env: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    task = coordinator.submit({"taskType": "warm_probe", "resources": {"gpus": 1}, "env": env or {},
                               "retry": {"max_attempts": 1}, **spec})
    return coordinator.wait_state(task["id"], {"succeeded", "failed"}, timeout=60)


def ready_template(coordinator: Coordinator, name: str) -> dict[str, Any]:
    def ready():
        worker = next((w for w in coordinator.workers() if w["name"] == name), None)
        runtimes = (worker or {}).get("warm_runtimes") or []
        return runtimes[0] if runtimes and runtimes[0]["state"] == "ready" else None

    return wait_for(ready, 60, f"{name}'s warm template ready")


def started_pid(coordinator: Coordinator, task_id: str) -> int:
    def pid():
        progress = coordinator.task(task_id).get("progress") or {}
        message = progress.get("message") or ""
        return int(message.split()[1]) if message.startswith("pid ") else None

    return wait_for(pid, 60, f"task {task_id} reporting its pid")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purpose
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def environ_of(pid: int) -> bytes:
    return Path(f"/proc/{pid}/environ").read_bytes()


def test_a_warm_task_is_a_fresh_process_of_its_own_and_dies_with_the_agent(coordinator: Coordinator, agents,
                                                                           plugin_site: Path) -> None:
    agent = warm_agent(coordinator, "warm-eager", plugin_site, MLOC_WARM_START="eager")
    agents.append(agent.start())
    template = ready_template(coordinator, "warm-eager")
    assert template["rss_mb"] > 0 and template["pid"] > 0  # its memory, in the agent listing
    first = run_probe(coordinator, secrets={"PROBE_SECRET": SECRET})
    second = run_probe(coordinator)
    for done in (first, second):
        assert done["state"] == "succeeded", done
        assert done["attempt_history"][0]["start"] == "warm", coordinator.logs(done["id"])
        assert "[mloc] warm start: forked from the" in coordinator.logs(done["id"], "system")
        r = done["result"]
        assert r["heavy_preloaded"]  # imported by the template, before the fork
        assert r["ppid"] == template["pid"] and r["pid"] != template["pid"]
        assert r["pgid"] == r["pid"] == r["sid"]  # its own session and process group, not the template's
        assert r["cuda"] == ",".join(str(g) for g in done["attempt_history"][0]["gpus"])
        assert Path(r["cwd"]).name == f"{done['id']}-1"  # its own work dir
    assert first["result"]["secret_sha"] == hashlib.sha256(SECRET.encode()).hexdigest()
    assert second["result"]["secret_sha"] is None  # the secret of the task before is not in this one's environment
    assert first["result"]["pid"] != second["result"]["pid"]
    assert SECRET.encode() not in environ_of(template["pid"])

    sleeper = coordinator.submit({"taskType": "warm_probe", "resources": {"gpus": 1}, "env": {"PROBE_SLEEP": "120"}})
    pid = started_pid(coordinator, sleeper["id"])
    assert b"MLOC_AGENT_INSTANCE=" in environ_of(pid)  # the warden's mark, inherited from the template's exec
    agent.kill9()
    wait_for(lambda: not alive(pid) and not alive(template["pid"]), 20, "the warden killing the warm task")


def test_cancel_and_fencing_stop_a_warm_task_as_a_cold_one(coordinator: Coordinator, agents,
                                                           plugin_site: Path) -> None:
    agent = warm_agent(coordinator, "warm-stop", plugin_site, MLOC_WARM_START="eager")
    agents.append(agent.start())
    ready_template(coordinator, "warm-stop")
    task = coordinator.submit({"taskType": "warm_probe", "resources": {"gpus": 1}, "env": {"PROBE_SLEEP": "120"}})
    pid = started_pid(coordinator, task["id"])
    assert coordinator.http.post(f"/api/v1/tasks/{task['id']}/cancel").status_code == 200
    done = coordinator.wait_state(task["id"], "cancelled", timeout=20)
    assert done["attempt_history"][0]["start"] == "warm"
    assert not alive(pid)

    fenced = coordinator.submit({"taskType": "warm_probe", "resources": {"gpus": 1}, "env": {"PROBE_SLEEP": "120"},
                                 "retry": {"max_attempts": 3}})
    old = started_pid(coordinator, fenced["id"])
    os.kill(agent.proc.pid, signal.SIGSTOP)  # past the lease TTL: the coordinator takes the lease back
    try:
        wait_for(lambda: coordinator.task(fenced["id"])["attempt_history"][0]["outcome"] == "lost", 30, "lease lost")
    finally:
        os.kill(agent.proc.pid, signal.SIGCONT)
    wait_for(lambda: not alive(old), 20, "the fenced warm task stopped")
    coordinator.http.post(f"/api/v1/tasks/{fenced['id']}/cancel")


def test_lazy_start_turning_off_and_a_package_change(coordinator: Coordinator, agents, plugin_site: Path) -> None:
    agents.append(warm_agent(coordinator, "warm-lazy", plugin_site).start())
    first = run_probe(coordinator)
    assert first["attempt_history"][0]["start"] == "cold" and not first["result"]["heavy_preloaded"]
    assert "MLOC_WARM_START=lazy" in coordinator.logs(first["id"], "system")
    ready_template(coordinator, "warm-lazy")
    assert run_probe(coordinator)["attempt_history"][0]["start"] == "warm"

    (plugin_site / "newly_installed-1.0.dist-info").mkdir()  # what pip install leaves behind
    changed = run_probe(coordinator)
    assert changed["attempt_history"][0]["start"] == "cold"
    assert "changed since its template started" in coordinator.logs(changed["id"], "system")
    ready_template(coordinator, "warm-lazy")
    assert run_probe(coordinator)["attempt_history"][0]["start"] == "warm"  # the rebuilt template


def test_warm_runtimes_off_starts_cold(coordinator: Coordinator, agents, plugin_site: Path) -> None:
    agents.append(warm_agent(coordinator, "warm-off", plugin_site, MLOC_WARM_RUNTIMES="false",
                             MLOC_WARM_START="eager").start())
    done = run_probe(coordinator)
    assert done["attempt_history"][0]["start"] == "cold"
    assert "MLOC_WARM_RUNTIMES=false" in coordinator.logs(done["id"], "system")
    assert next(w for w in coordinator.workers() if w["name"] == "warm-off")["warm_runtimes"] is None


def test_a_template_running_a_thread_refuses_and_the_task_starts_cold(coordinator: Coordinator, agents,
                                                                      plugin_site: Path) -> None:
    agents.append(warm_agent(coordinator, "warm-threads", plugin_site, MLOC_WARM_START="eager",
                             PROBE_WARM_IMPORTS="warm_probe_heavy,warm_threader").start())
    ready_template(coordinator, "warm-threads")
    started = time.monotonic()
    done = run_probe(coordinator)
    assert done["state"] == "succeeded" and time.monotonic() - started < 30
    assert done["attempt_history"][0]["start"] == "cold"
    assert not done["result"]["heavy_preloaded"]
    assert "refused to fork: the template runs 2 threads" in coordinator.logs(done["id"], "system")


def test_each_runtime_gets_a_plan_of_its_hosted_modules_imports() -> None:
    """command runs its argv directly (nothing to keep warm); a task type given its own interpreter
    (MLOC_RUNTIMES) is planned under that one; the imports are the union of the modules' warm_imports."""
    from mloc_agent.modules.inference.inference import InferenceModule
    from mloc_agent.modules.registry import BUILTIN
    from mloc_agent.modules.training.dpo import DPOModule
    from mloc_agent.modules.training.sft import SFTModule
    from mloc_agent.warm_runtimes import plan_runtimes

    modules = {t: BUILTIN[t] for t in ("command", "sft", "dpo", "inference")}
    plans = plan_runtimes(modules, {"inference": "/opt/vllm/bin/python"}, "/usr/bin/python3")
    assert set(plans) == {"/usr/bin/python3", "/opt/vllm/bin/python"}
    main, vllm = plans["/usr/bin/python3"], plans["/opt/vllm/bin/python"]
    assert sorted(main.modules) == sorted([BUILTIN["sft"], BUILTIN["dpo"]]) and vllm.modules == [BUILTIN["inference"]]
    assert set(main.imports) == set(SFTModule.warm_imports) | set(DPOModule.warm_imports)
    assert len(main.imports) == len(set(main.imports))
    assert vllm.imports == list(InferenceModule.warm_imports)

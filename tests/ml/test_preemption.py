"""Preemption that checkpoints first, end to end: a real coordinator, real agents, TRL training a tiny
model on CPU. A ``low`` SFT holding the only slot checkpoints when a ``high`` task arrives, the high
task runs, and the low one resumes at the very step it saved; a drain with a deadline and an agent's
SIGTERM under MLOC_STOP_DEADLINE_S move a running SFT to another agent at once, not after the TTL.

The figures of docs/scheduling.md are printed here (pytest -s): the time from the high submit to its
start, and the training steps lost to the preemption."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import MLOC, Coordinator, base_env, wait_for
from tests.ml.conftest import FINAL, artifacts, download_folder, train_spec
from tests.ml.test_training_modules import load_adapter, lora_weights_moved

pytestmark = pytest.mark.ml

TTL = 60.0  # long: a lease released at once is seen well before a TTL could have expired it
ROWS = [{"text": f"the model answer {i} is {i * 2}."} for i in range(32)]


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[Coordinator]:
    coord = Coordinator(tmp_path, lease_ttl_s=TTL, heartbeat_s=0.5, poll_hold_s=10, extra_env={
        "MLOC_PREEMPT_MIN_RUNTIME_S": "1", "MLOC_PREEMPT_GRACE_S": "60", "MLOC_PREEMPT_MAX_PER_HOUR": "2"}).start()
    try:
        yield coord
    finally:
        coord.stop()


def sft(tiny_lm: Path, steps: int, **extra: Any) -> dict[str, Any]:
    # one row of 16 tokens a step on one thread: a few milliseconds each on a quiet CPU; save_steps past the
    # end, so the only checkpoint before the final one is the preemption's
    spec = train_spec("sft", tiny_lm, {"rows": ROWS}, {"max_steps": steps, "save_steps": 10_000, "logging_steps": 10,
                                                       "per_device_train_batch_size": 1, "max_length": 16,
                                                       "learning_rate": 1e-3}, **extra)
    spec["env"].update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return spec


def step_of(coord: Coordinator, task_id: str) -> int:
    return int(((coord.task(task_id).get("progress") or {}).get("step")) or 0)


def wait_training(coord: Coordinator, task_id: str, at_least: int = 5) -> int:
    return wait_for(lambda: coord.task(task_id)["state"] == "running" and step_of(coord, task_id) >= at_least
                    and step_of(coord, task_id), 120, f"task {task_id} training")


def finished(coord: Coordinator, task_id: str, timeout: float = 180) -> dict[str, Any]:
    done = coord.wait_state(task_id, FINAL, timeout=timeout)
    assert done["state"] == "succeeded", f"{done['error']}\n{coord.logs(task_id)[-3000:]}"
    return done


def checkpoint_state(coord: Coordinator, task_id: str, step: int) -> dict[str, Any]:
    """trainer_state.json of the checkpoint uploaded at ``step``, read from the artifact itself."""
    name = f"checkpoints/step-{step}.tar"
    assert name in artifacts(coord, task_id), sorted(artifacts(coord, task_id))
    blob = coord.http.get(f"/api/v1/tasks/{task_id}/artifacts/{name}", follow_redirects=True).content
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("trainer_state.json"))
        return json.load(tar.extractfile(member))


def assert_resumed_at_preemption(coord: Coordinator, done: dict[str, Any], total: int) -> int:
    """The first attempt ended ``preempted`` at step k (0 < k < total), the next resumed at k and ended
    at ``total``; the preemption used up no attempt. Returns k."""
    history = done["attempt_history"]
    assert [a["outcome"] for a in history] == ["preempted", "succeeded"], history
    assert done["preemptions"] == 1 and done["failed_attempts"] == 0
    result = done["result"]
    k = result["resumed_from_step"]
    assert isinstance(k, int) and 0 < k < total
    assert checkpoint_state(coord, done["id"], k)["global_step"] == k
    assert result["global_step"] == total and min(s for s, _ in result["losses"]) > k  # no step trained twice
    return k


def test_a_high_task_preempts_a_low_sft_which_resumes_at_its_checkpoint(
    coordinator: Coordinator, start_agent, tiny_lm: Path, tmp_path: Path
) -> None:
    start_agent("box", max_tasks=1)
    low = coordinator.submit(sft(tiny_lm, 300, priority_class="low"))["id"]
    wait_training(coordinator, low)
    at_submit = step_of(coordinator, low)
    t0 = time.monotonic()
    urgent = coordinator.submit({"taskType": "command", "command": "echo urgent", "priority_class": "high"})["id"]
    started = wait_for(lambda: coordinator.task(urgent)["started_at"], 30, "the high task to start")
    to_start = time.monotonic() - t0
    assert to_start < 10, f"the high task took {to_start:.1f}s to start"
    finished(coordinator, urgent, timeout=30)
    first = coordinator.task(low)["attempt_history"][0]
    assert first["outcome"] == "preempted" and first["ended_at"] <= started + 1e-6

    done = finished(coordinator, low)
    k = assert_resumed_at_preemption(coordinator, done, 300)
    assert "checkpointed at step" in coordinator.logs(low)
    model = load_adapter(tiny_lm, download_folder(coordinator, low, "adapter", tmp_path))
    assert lora_weights_moved(model)
    metrics = coordinator.http.get("/metrics").text
    assert "mloc_preemptions_total 1.0" in metrics
    # the figures: from the high submit to its start; steps trained after the request until the save (not lost:
    # they are in the checkpoint), and steps lost (trained by the first attempt past its last checkpoint)
    print(f"\n[figures] high submit -> start: {to_start:.2f}s; low task at step {at_submit} on submit, "
          f"checkpointed at step {k}; steps lost to the preemption: 0 (resumed at {k})")


def test_a_non_preemptible_task_is_not_preempted_and_the_waiting_task_says_why(
    coordinator: Coordinator, start_agent, tiny_lm: Path
) -> None:
    start_agent("box", max_tasks=1)
    normal = coordinator.submit(sft(tiny_lm, 150))["id"]  # the default class, normal: not preemptible
    wait_training(coordinator, normal)
    urgent = coordinator.submit({"taskType": "command", "command": "echo urgent", "priority_class": "high"})["id"]
    reason = wait_for(lambda: coordinator.task(urgent).get("pending_reason"), 10, "a pending reason")
    time.sleep(2)  # reaper ticks: still not preempted
    reason = coordinator.task(urgent)["pending_reason"]
    assert f"task {normal} (class normal) is not preemptible" in reason, reason
    done = finished(coordinator, normal)
    assert [a["outcome"] for a in done["attempt_history"]] == ["succeeded"] and done["preemptions"] == 0
    finished(coordinator, urgent, timeout=30)


def moved_at_once(coord: Coordinator, task_id: str, t0: float, to: str) -> float:
    """Seconds until the task runs again on agent ``to``: well within the poll hold, far from the TTL."""
    wait_for(lambda: (t := coord.task(task_id))["state"] == "running" and t["attempts"] == 2
             and t["lease"]["agent"] == to, TTL / 3, f"task {task_id} running on {to}")
    return time.monotonic() - t0


def test_a_drain_with_a_deadline_moves_a_running_sft_to_another_agent_at_once(
    coordinator: Coordinator, start_agent, tiny_lm: Path
) -> None:
    start_agent("spot", max_tasks=1)
    task_id = coordinator.submit(sft(tiny_lm, 600))["id"]  # normal: a drain with notice applies to any task
    wait_training(coordinator, task_id)
    start_agent("spare", max_tasks=1)
    t0 = time.monotonic()
    cli = subprocess.run([*MLOC, "drain", "spot", "--deadline", "1m"], capture_output=True, text=True, timeout=60,
                         env=base_env(MLOC_COORDINATOR_URL=coordinator.url, MLOC_TOKEN=coordinator.admin_token))
    assert cli.returncode == 0 and "checkpoint within 60s" in cli.stdout, cli.stdout + cli.stderr
    answered = time.monotonic() - t0
    moved = moved_at_once(coordinator, task_id, t0, "spare")
    k = assert_resumed_at_preemption(coordinator, finished(coordinator, task_id), 600)
    print(f"\n[figures] mloc drain --deadline 1m -> running on the spare agent: {moved:.2f}s, {moved - answered:.2f}s "
          f"after the CLI's answer (TTL {TTL:g}s); resumed at step {k}")


def test_sigterm_under_a_stop_deadline_moves_a_running_sft_to_another_agent_at_once(
    coordinator: Coordinator, start_agent, tiny_lm: Path
) -> None:
    spot = start_agent("spot", max_tasks=1, extra_env={"MLOC_STOP_DEADLINE_S": "60"})
    task_id = coordinator.submit(sft(tiny_lm, 600))["id"]
    wait_training(coordinator, task_id)
    start_agent("spare", max_tasks=1)
    t0 = time.monotonic()
    spot.proc.signal(signal.SIGTERM)
    moved = moved_at_once(coordinator, task_id, t0, "spare")
    wait_for(lambda: not spot.proc.alive(), 30, "the stopping agent to exit")  # once its task had reported
    assert spot.stop() == 0
    k = assert_resumed_at_preemption(coordinator, finished(coordinator, task_id), 600)
    assert coordinator.http.get("/metrics").text.count("mloc_leases_expired_total 0.0") == 1
    print(f"\n[figures] SIGTERM (MLOC_STOP_DEADLINE_S=60) -> running on the spare agent: {moved:.2f}s "
          f"(TTL {TTL:g}s); resumed at step {k}")


def test_ppo_checkpoints_acknowledges_and_stops_at_the_step_it_sees_the_preempt_file(
    tiny_lm: Path, tiny_rm: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PPO's own loop (no Trainer): with the preempt file there it saves at the step it just finished,
    sends Preempted(step) and leaves through PreemptedExit; the next attempt resumes at that step."""
    import asyncio

    from mloc_agent.modules.base import TaskContext
    from mloc_agent.modules.ppo.ppo import PPOModule
    from mloc_agent.modules.sources.path_policy import PathPolicy
    from mloc_agent.task_contract import CheckpointSaved, Preempted, PreemptedExit

    from tests.ml.test_ppo import PROMPT_ROWS, ppo_hyperparameters

    spec = train_spec("ppo", tiny_lm, {"rows": PROMPT_ROWS}, {})
    spec["hyperparameters"] = ppo_hyperparameters(tiny_rm, max_steps=4, save_steps=100)

    def context(name: str, resume: Path | None) -> tuple[TaskContext, list[Any]]:
        work = tmp_path / name
        for sub in ("out", "ck"):
            (work / sub).mkdir(parents=True)
        ctx = TaskContext(task_id=name, attempt=1, spec=spec, gpus=[], workdir=work, output_dir=work / "out",
                          checkpoint_dir=work / "ck", resume_dir=resume, paths=PathPolicy(roots=(tiny_lm, tiny_rm)))
        sent: list[Any] = []
        ctx.send = sent.append  # what the agent would read on the channel
        return ctx, sent

    flag = tmp_path / "preempt"
    flag.write_text("{}")
    monkeypatch.setenv("MLOC_PREEMPT_FILE", str(flag))
    ctx, sent = context("first", None)
    with pytest.raises(PreemptedExit):
        asyncio.run(PPOModule(ctx).execute(progress_callback=lambda _: None))
    acks = [m for m in sent if isinstance(m, Preempted)]
    saved = [m for m in sent if isinstance(m, CheckpointSaved)]
    assert acks == [Preempted(1)] and [m.step for m in saved] == [1]
    assert sent.index(saved[0]) < sent.index(acks[0])  # saved (and handed over for upload) before the ack

    flag.unlink()
    ctx, _ = context("second", Path(saved[0].path))
    result = asyncio.run(PPOModule(ctx).execute(progress_callback=lambda _: None))
    assert result["resumed_from_step"] == 1 and result["global_step"] == 4


def _rank(rank: int, port: int, results: Any) -> None:
    import torch.distributed as dist
    from mloc_agent.modules.training.preemption import agreed

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        results[rank] = (agreed(rank == 1), agreed(False))  # only rank 1 saw the file; then none did
    finally:
        dist.destroy_process_group()


def test_ranks_agree_to_stop_when_any_one_saw_the_preempt_file() -> None:
    """Under torchrun every rank checks the file on its own; they stop at the same step."""
    import torch.multiprocessing as mp

    from tests.harness import free_port

    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_rank, args=(free_port(), results), nprocs=2, join=True)
        assert dict(results) == {0: (True, False), 1: (True, False)}

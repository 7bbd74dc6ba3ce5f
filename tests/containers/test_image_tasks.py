"""Tasks that bring their own image (``image:``) on an agent with MLOC_CONTAINER_RUNTIME=podman: the
task runs inside its image with its secrets and without the agent's credential; cancel, kill -9 of
the agent and a lost lease behave as for a process task; an agent without a runtime never takes one."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.containers.conftest import podman, podman_env
from tests.harness import Agent, Coordinator, wait_for

SECRET = "s3cr3t-for-the-image-only"


def runtime_env() -> dict[str, str]:
    env = {"MLOC_CONTAINER_RUNTIME": "podman", "MLOC_ALLOW_PRIVATE_URLS": "true"}
    if "CONTAINERS_CONF" in podman_env():
        env["CONTAINERS_CONF"] = podman_env()["CONTAINERS_CONF"]
    return env


def containers_of(task_id: str) -> list[str]:
    return podman("ps", "--filter", f"label=mloc.task={task_id}", "--format", "{{.Names}}").stdout.split()


@pytest.fixture
def image_agent(container_images, start_agent) -> Agent:
    return start_agent("with-podman", extra_env=runtime_env())


def test_an_image_task_runs_in_its_image_with_its_secrets_and_not_the_agents_credential(
        coordinator: Coordinator, image_agent: Agent, container_images: dict[str, str]) -> None:
    assert not Path("/etc/mloc-test-marker").exists()  # the marker is in the image only
    script = (
        "cat /etc/mloc-test-marker; . /etc/os-release; echo os=$ID; "
        f'test "$TOKEN_X" = "{SECRET}" && echo secret-arrived; '
        "echo agent-vars=$(env | grep -c -E '^MLOC_(JOIN_TOKEN|TOKEN|ADMIN_TOKEN|COORDINATOR_URL)=' || true); "
        f"test -e {image_agent.data_dir}/agent.json && echo credential-visible || echo credential-hidden; "
        "echo cuda=$CUDA_VISIBLE_DEVICES; echo '{\"step\": 3, \"total\": 4}' > $MLOC_PROGRESS; "
        "echo made-inside > $MLOC_OUTPUT_DIR/inside.txt")
    task = coordinator.submit({"taskType": "command", "command": script, "image": container_images["task"],
                               "secrets": {"TOKEN_X": SECRET}})
    done = coordinator.wait_state(task["id"], {"succeeded", "failed"}, timeout=90)
    out = coordinator.logs(task["id"])
    assert done["state"] == "succeeded", out
    assert "built for the MLOC image: tests" in out and "os=debian" in out
    assert "secret-arrived" in out and SECRET not in out
    assert "agent-vars=0" in out and "credential-hidden" in out
    assert done["result"]["progress"]["step"] == 3  # the channel works from inside
    names = {a["name"] for a in coordinator.http.get(f"/api/v1/tasks/{task['id']}/artifacts").json()["artifacts"]}
    assert "inside.txt" in names
    assert containers_of(task["id"]) == []  # removed (--rm)


def test_cancel_stops_the_container_within_the_grace(coordinator: Coordinator, image_agent: Agent,
                                                    container_images: dict[str, str]) -> None:
    task = coordinator.submit({"taskType": "command", "command": "echo started; sleep 300",
                               "image": container_images["task"]})
    wait_for(lambda: containers_of(task["id"]), 60, "the task's container to run")
    coordinator.http.post(f"/api/v1/tasks/{task['id']}/cancel")
    done = coordinator.wait_state(task["id"], "cancelled", timeout=20)  # grace 3 s (harness) + round trips
    assert done["state"] == "cancelled"
    wait_for(lambda: not containers_of(task["id"]), 10, "the container to be gone")


def test_kill9_of_the_agent_leaves_no_container_running(coordinator: Coordinator, image_agent: Agent,
                                                        container_images: dict[str, str]) -> None:
    task = coordinator.submit({"taskType": "command", "command": "sleep 300", "image": container_images["task"]})
    wait_for(lambda: containers_of(task["id"]), 60, "the task's container to run")
    image_agent.kill9()
    wait_for(lambda: not containers_of(task["id"]), 30, "the warden to remove the dead agent's container")


def test_a_second_attempt_after_a_lost_lease_resumes_from_the_checkpoint_inside_the_image(
        coordinator: Coordinator, start_agent, container_images: dict[str, str]) -> None:
    first = start_agent("podman-1", extra_env=runtime_env())
    resume = ('if [ -n "$MLOC_RESUME_DIR" ]; then '
              'echo "resumed with $(cat $(find $MLOC_RESUME_DIR -name state))"; exit 0; fi')
    checkpoint = '{\\"type\\": \\"checkpoint\\", \\"path\\": \\"$MLOC_CHECKPOINT_DIR/ck\\", \\"step\\": 7}'
    script = (f"cat /etc/mloc-test-marker; {resume}; "
              "mkdir -p $MLOC_CHECKPOINT_DIR/ck && echo step-7 > $MLOC_CHECKPOINT_DIR/ck/state; "
              f'echo "{checkpoint}" > $MLOC_PROGRESS; sleep 300')
    task = coordinator.submit({"taskType": "command", "command": script, "image": container_images["task"],
                               "retry": {"max_attempts": 3, "backoff_s": 0}})
    wait_for(lambda: "uploaded checkpoint" in coordinator.logs(task["id"]), 60, "the checkpoint upload")
    first.kill9()
    start_agent("podman-2", extra_env=runtime_env())
    done = coordinator.wait_state(task["id"], {"succeeded", "failed"}, timeout=90)
    assert done["state"] == "succeeded", done
    assert done["attempts"] == 2
    attempt2 = coordinator.http.get(f"/api/v1/tasks/{task['id']}/logs", params={"attempt": 2}).json()
    out = "".join(c["data"] for c in attempt2["chunks"])
    assert "built for the MLOC image: tests" in out and "resumed with step-7" in out


def test_an_agent_without_a_runtime_never_takes_an_image_task(coordinator: Coordinator, start_agent,
                                                              container_images: dict[str, str]) -> None:
    start_agent("no-runtime")
    task = coordinator.submit({"taskType": "command", "command": "true", "image": container_images["task"]})
    assert any("container runtime" in w for w in task.get("warnings", [])), task
    plain = coordinator.submit({"taskType": "command", "command": "echo plain"})
    assert coordinator.wait_state(plain["id"], "succeeded", timeout=30)["state"] == "succeeded"
    record = coordinator.task(task["id"])
    assert record["state"] == "queued" and "container runtime" in (record.get("pending_reason") or ""), record


def test_an_sft_task_runs_in_an_image_with_mloc_agent_installed(coordinator: Coordinator, image_agent: Agent,
                                                                container_images: dict[str, str]) -> None:
    """The ML task types need mloc-agent in the image: the agent image is one (docs/containers.md)."""
    pytest.importorskip("trl", reason="the ML training stack is not installed (make venv-ml)")
    from mloc_agent.tiny import build_tiny_lm

    model = build_tiny_lm(image_agent.data_dir / "models" / "tiny")  # models/ is mounted read-only
    rows = [{"messages": [{"role": "user", "content": f"what is {i} plus {i}?"},
                          {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]} for i in range(8)]
    task = coordinator.submit({
        "taskType": "sft", "image": container_images["agent"],
        "model": {"source": {"type": "local", "identifier": str(model)}, "adapter": {"type": "lora", "r": 8}},
        "dataset": {"format": "chat", "rows": rows},
        "hyperparameters": {"max_steps": 4, "per_device_train_batch_size": 4, "max_length": 64, "logging_steps": 1,
                            "save_steps": 2},
        "resources": {"gpus": 0}, "env": {"HF_HUB_OFFLINE": "1"}})
    done = coordinator.wait_state(task["id"], {"succeeded", "failed"}, timeout=240)
    out = coordinator.logs(task["id"])
    assert done["state"] == "succeeded", out[-3000:]
    assert f"running in image {container_images['agent']}" in out
    assert "uploaded checkpoint checkpoints/step-2.tar" in out  # the channel, from inside the image
    assert done["result"]["global_step"] == 4 and done["result"]["checkpoint_steps"] == [2, 4]
    names = {a["name"] for a in coordinator.http.get(f"/api/v1/tasks/{task['id']}/artifacts").json()["artifacts"]}
    assert "adapter/adapter_model.safetensors" in names

"""One task, every GPU of its lease: an sft task with ``resources.gpus: 2`` on an agent with two (declared)
GPUs runs two ranks under torchrun (gloo on these CPU boxes), and its loss curve is the one-rank run's.

The ranks' own report is asserted (torch.distributed.get_world_size() in the rank, accelerate's
distributed type, the ``[rank1]:`` lines torchrun tees), never the spec. Cancel and the agent's death
stop every rank, though torchrun starts each in a session of its own (checked in /proc).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from mloc_shared.distributed import DISTRIBUTED_TYPES

from tests.conftest import A100
from tests.harness import Coordinator, wait_for
from tests.ml.conftest import FINAL, REPO, download_folder, run_to_end, train_spec
from tests.ml.test_training_modules import PREFERENCE_ROWS, load_adapter, lora_weights_moved

pytestmark = pytest.mark.ml
STEPS = 6
# relative difference allowed between the 2-rank and the 1-rank loss at every step: the same examples
# (accelerate shards each global batch across the ranks), summed in another order (float32 all-reduce);
# measured here: under 1e-4
LOSS_RTOL = 2e-3


def equal_length_rows(model: Path, count: int = 24) -> list[dict[str, str]]:
    """Rows that tokenize to the same length: no padding, so 2x2 and 1x4 batches see the same tokens."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    texts = [f"the model reads row {chr(97 + i % 26)}{chr(97 + i // 26)} and learns it well" for i in range(200)]
    lengths = {t: len(tok(t)["input_ids"]) for t in texts}
    common = Counter(lengths.values()).most_common(1)[0][0]
    rows = [{"text": t} for t in texts if lengths[t] == common][:count]
    assert len(rows) == count, f"only {len(rows)} rows of {common} tokens"
    return rows


def spec_for(model: Path, rows: list[dict[str, str]], *, gpus: int, per_device: int, **extra: Any) -> dict[str, Any]:
    spec = train_spec("sft", model, {"rows": rows}, {"max_steps": STEPS, "per_device_train_batch_size": per_device,
                                                      "learning_rate": 1e-3, "seed": 7}, **extra)
    spec["resources"] = {"gpus": gpus}
    return spec


def losses(result: dict[str, Any]) -> list[float]:
    return [loss for _, loss in result["losses"]]


def close(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) == STEPS and all(abs(x - y) <= LOSS_RTOL * abs(y) for x, y in zip(a, b, strict=True))


def checkout_env(scratch: Path) -> dict[str, str]:
    """What agents run with to test this checkout: its code and the tests' on their path (throttle.py),
    and, when the checkout is not the installed one (a worktree), a runtime that hosts its modules: the
    isolated task host (python -I) would import the installed mloc_agent otherwise. Also bench/distributed.py's."""
    path = os.pathsep.join(str(REPO / p) for p in ("shared", "server", "agent", "."))
    env = {"PYTHONPATH": path}
    probe = subprocess.run([sys.executable, "-I", "-c", "import mloc_agent; print(mloc_agent.__file__)"],
                           capture_output=True, text=True, check=True)
    if Path(probe.stdout.strip()).parent == REPO / "agent" / "mloc_agent":
        return env
    wrapper = scratch / "python"
    wrapper.write_text(f"""#!/bin/sh
# python -I without the isolation from PYTHONPATH: -s keeps the user site out
export PYTHONPATH={path}
n=$#; i=0
while [ $i -lt $n ]; do a=$1; shift; [ "$a" = "-I" ] && a=-s; set -- "$@" "$a"; i=$((i + 1)); done
exec {sys.executable} "$@"
""")
    wrapper.chmod(0o755)
    return {**env, "MLOC_RUNTIMES": json.dumps(dict.fromkeys(DISTRIBUTED_TYPES, str(wrapper)))}


@pytest.fixture(scope="module")
def agent_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return checkout_env(tmp_path_factory.mktemp("runtime"))


@pytest.fixture
def duo(start_agent, agent_env: dict[str, str]):
    return start_agent("duo", gpus=[A100, A100], extra_env=agent_env)


@pytest.fixture
def one_rank(coordinator: Coordinator, duo, tiny_lm: Path) -> tuple[list[dict[str, str]], dict[str, Any]]:
    rows = equal_length_rows(tiny_lm)
    done = run_to_end(coordinator, spec_for(tiny_lm, rows, gpus=0, per_device=4))
    assert done["result"]["world_size"] == 1 and done["result"]["strategy"] == "none"
    return rows, done["result"]


def test_two_gpus_train_two_ranks_with_the_one_rank_loss_curve(
    coordinator: Coordinator, one_rank, tiny_lm: Path, tmp_path: Path
) -> None:
    rows, single = one_rank
    strategy = "ddp"
    done = run_to_end(coordinator, spec_for(tiny_lm, rows, gpus=2, per_device=2), timeout=300)
    result = done["result"]
    logs = coordinator.logs(done["id"])
    assert result["world_size"] == 2 and result["nodes"] == 1 and result["strategy"] == strategy, (result, logs[-3000:])
    assert [r["rank"] for r in result["ranks"]] == [0, 1]
    assert all(r["tokens"] > 0 and r["tokens_per_s"] > 0 for r in result["ranks"])
    assert result["global_step"] == STEPS
    assert close(losses(result), losses(single)), (losses(result), losses(single))
    logs = coordinator.logs(done["id"])
    assert "[rank0]:" in logs and "[rank1]:" in logs
    adapter = load_adapter(tiny_lm, download_folder(coordinator, done["id"], "adapter", tmp_path))
    assert lora_weights_moved(adapter)


OTHER_TYPES = {  # task type -> (rows, hyperparameters)
    "dpo": (PREFERENCE_ROWS, {"learning_rate": 5e-3}),
    "reward_model": ([{"chosen": f"good answer {i}", "rejected": f"bad dog {i}"} for i in range(16)], {}),
    "grpo": ([{"prompt": f"question {i}"} for i in range(8)],
             {"num_generations": 4, "max_completion_length": 8, "reward_funcs": ["length"]}),
}


@pytest.mark.parametrize("task_type", sorted(OTHER_TYPES))
def test_dpo_grpo_and_reward_model_run_one_rank_per_gpu_too(coordinator: Coordinator, duo, tiny_lm: Path,
                                                             task_type: str) -> None:
    rows, hp = OTHER_TYPES[task_type]
    spec = train_spec(task_type, tiny_lm, {"rows": rows}, {"max_steps": 4, "save_steps": 2, **hp})
    spec["resources"] = {"gpus": 2}
    result = run_to_end(coordinator, spec, timeout=300)["result"]
    assert (result["world_size"], result["strategy"], result["global_step"]) == (2, "ddp", 4), result
    assert [r["rank"] for r in result["ranks"]] == [0, 1] and result["checkpoint_steps"] == [2, 4]


def test_fsdp_on_a_cpu_agent_is_refused_not_silently_replicated(coordinator: Coordinator, duo, tiny_lm: Path) -> None:
    """accelerate applies FSDP on GPUs only; on CPU the ranks would train replicated copies under the name fsdp.
    An agent reports CUDA GPUs only when NVML found them, so the task waits for one and says why (an
    agent that takes it anyway refuses it at run time: tests/test_capabilities.py)."""
    spec = spec_for(tiny_lm, [{"text": "a row"}] * 8, gpus=2, per_device=2, distributed={"strategy": "fsdp"})
    task = coordinator.submit(spec)
    assert any("has no CUDA GPUs" in w for w in task.get("warnings", [])), task
    record = coordinator.task(task["id"])
    assert record["state"] == "queued" and "has no CUDA GPUs" in (record.get("pending_reason") or ""), record


def task_pids(task_id: str) -> dict[int, bool]:
    """Every process of the task on this box: pid -> whether it is a torchrun rank (RANK set)."""
    found = {}
    mark = f"MLOC_TASK_ID={task_id}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if mark in environ:
            found[int(entry)] = any(v.startswith(b"RANK=") for v in environ)
    return found


def start_slow_two_rank_task(coordinator: Coordinator, tiny_lm: Path, steps: int = 500,
                             **extra: Any) -> tuple[str, dict[int, bool]]:
    spec = spec_for(tiny_lm, [{"text": f"row {i} of a slow run"} for i in range(16)], gpus=2, per_device=2, **extra)
    spec["hyperparameters"].update(max_steps=steps, save_steps=3, callbacks=["tests.ml.throttle:SlowSteps"])
    task = coordinator.submit(spec)
    wait_for(lambda: (coordinator.task(task["id"]).get("last_checkpoint") or {}).get("step"), 120,
             "a checkpoint from rank 0", interval=0.1)
    pids = task_pids(task["id"])
    assert sum(pids.values()) == 2, pids  # two ranks, besides torchrun
    for pid, is_rank in pids.items():
        if is_rank:  # torchrun put them outside the task's process group
            assert os.getpgid(pid) != os.getpgid(min(pids)), pids
    return task["id"], pids


def test_cancel_stops_every_rank(coordinator: Coordinator, duo, tiny_lm: Path) -> None:
    task_id, pids = start_slow_two_rank_task(coordinator, tiny_lm)
    assert coordinator.http.post(f"/api/v1/tasks/{task_id}/cancel").status_code == 200
    assert coordinator.wait_state(task_id, {"cancelled", "failed", "succeeded"}, timeout=60)["state"] == "cancelled"
    wait_for(lambda: not task_pids(task_id), 15, f"every process of the task gone (were {pids})")


def test_agent_killed_leaves_no_rank_alive_and_every_rank_resumes_from_rank0s_checkpoint(
    coordinator: Coordinator, duo, start_agent, agent_env: dict[str, str], tiny_lm: Path
) -> None:
    task_id, pids = start_slow_two_rank_task(coordinator, tiny_lm, steps=15, retry={"max_attempts": 2,
                                                                                      "backoff_s": 0})
    duo.kill9()
    wait_for(lambda: not task_pids(task_id), 20, f"the warden stopped every rank (were {pids})")
    checkpoint = coordinator.wait_state(task_id, "queued", timeout=60)["last_checkpoint"]
    start_agent("rescuer", gpus=[A100, A100], extra_env=agent_env)
    done = coordinator.wait_state(task_id, FINAL, timeout=240)
    assert done["state"] == "succeeded", f"{done.get('error')}\n{coordinator.logs(task_id)[-3000:]}"
    result = done["result"]
    assert done["agent"] == "rescuer" and result["world_size"] == 2
    assert result["resumed_from_step"] == checkpoint["step"] and result["global_step"] == 15
    # each rank's own trainer started from the checkpoint's step (rank 1 restored it too)
    assert [r["first_step"] for r in result["ranks"]] == [checkpoint["step"]] * 2, result["ranks"]

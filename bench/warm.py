"""Warm runtimes benchmark (issue 14): submit -> first progress, cold and warm, for a tiny LoRA SFT and a
tiny inference task, and the agent's idle memory with its template up.

    python -m bench.warm [--n 2]

A real coordinator and agent run the same two tasks on CPU: first with warm runtimes off (every task imports
torch, transformers, trl and peft itself), then with an agent started with MLOC_WARM_START=eager (its
template imported them once; tasks fork from it). "First progress" is the first training step (SFT) or the
first generated batch (inference), as the coordinator sees it; heartbeats carry progress every 0.2 s here,
so that is the figures' resolution. Also printed: where a warm SFT's time goes, from its system log line and
its own progress messages.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.harness import Agent, Coordinator, wait_for

ROWS = [{"text": f"the model answer {i} is {i * 2}."} for i in range(16)]
PROMPTS = ["what is the answer", "hello world", "the red cat", "one two three"]


def sft_spec(model: Path) -> dict[str, Any]:
    return {"taskType": "sft", "model": {"source": {"type": "local", "identifier": str(model)},
                                         "adapter": {"type": "lora", "r": 8, "lora_alpha": 16}},
            "dataset": {"rows": ROWS}, "resources": {"gpus": 0}, "retry": {"max_attempts": 1},
            "hyperparameters": {"logging_steps": 1, "per_device_train_batch_size": 4, "max_length": 32,
                                "max_steps": 3, "save_steps": 1000},
            "env": {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}}


def inference_spec(model: Path) -> dict[str, Any]:
    return {"taskType": "inference", "model": {"source": {"type": "local", "identifier": str(model)}},
            "resources": {"gpus": 0}, "retry": {"max_attempts": 1}, "env": {"HF_HUB_OFFLINE": "1"},
            "hyperparameters": {"prompts": PROMPTS, "max_new_tokens": 4, "temperature": 0, "batch_size": 2}}


def first_progress(coord: Coordinator, spec: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """Seconds from sending the submit to the first step the coordinator shows; then waits for the end."""
    t0 = time.perf_counter()
    task = coord.submit(spec)

    def stepped():
        t = coord.task(task["id"])
        if t["state"] in ("failed", "cancelled"):
            raise AssertionError(f"{t['state']}: {t.get('error')}\n{coord.logs(task['id'])[-3000:]}")
        return (t.get("progress") or {}).get("step") or (t["state"] == "succeeded" and t)

    wait_for(stepped, 600, "first progress", interval=0.02)
    elapsed = time.perf_counter() - t0
    done = coord.wait_state(task["id"], {"succeeded", "failed"}, timeout=600)
    assert done["state"] == "succeeded", f"{done.get('error')}\n{coord.logs(task['id'])[-3000:]}"
    return elapsed, done


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def measure(coord: Coordinator, name: str, model: Path, n: int, env: dict[str, str]) -> dict[str, Any]:
    agent = Agent(coord, name, extra_env={"MLOC_TASK_PATH_ROOTS": str(model.parent), **env}).start()
    try:
        out: dict[str, Any] = {}
        if env.get("MLOC_WARM_RUNTIMES") == "true":
            def ready():
                w = next(w for w in coord.workers() if w["name"] == name)
                return next((r for r in w.get("warm_runtimes") or [] if r["state"] == "ready"), None)

            t0 = time.perf_counter()
            template = wait_for(ready, 300, "template ready", interval=0.2)
            out["template_ready_s"] = time.perf_counter() - t0
            out["idle_agent_rss_mb"] = rss_mb(agent.proc.pid)
            out["idle_template_rss_mb"] = template["rss_mb"]
        for kind, spec in (("sft", sft_spec(model)), ("inference", inference_spec(model))):
            runs = [first_progress(coord, spec) for _ in range(n)]
            out[kind] = [s for s, _ in runs]
            out[f"{kind}_start"] = {d["attempt_history"][0].get("start") for _, d in runs}
            out[f"{kind}_log"] = coord.logs(runs[-1][1]["id"], "system")
        return out
    finally:
        agent.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2, help="runs of each task, cold and warm")
    args = ap.parse_args()
    from mloc_agent.tiny import build_tiny_lm

    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_lm(Path(tmp) / "tiny-lm")
        coord = Coordinator(Path(tmp), heartbeat_s=0.2, lease_ttl_s=30, poll_hold_s=10,
                            extra_env={"MLOC_LOG_LEVEL": "WARNING"}).start()
        try:
            cold = measure(coord, "cold", model, args.n, {"MLOC_WARM_RUNTIMES": "false"})
            warm = measure(coord, "warm", model, args.n, {"MLOC_WARM_RUNTIMES": "true", "MLOC_WARM_START": "eager"})
        finally:
            coord.stop()
    print(f"submit -> first progress, CPU, tiny model ({args.n} runs each; median, min..max; 0.2 s heartbeats):")
    for kind, label in (("sft", "LoRA SFT (first step)"), ("inference", "inference (first batch)")):
        for name, res in (("cold", cold), ("warm", warm)):
            s = res[kind]
            print(f"  {label:26} {name}: {statistics.median(s):6.2f} s   ({min(s):.2f}..{max(s):.2f})   "
                  f"started {'/'.join(sorted(x or '?' for x in res[kind + '_start']))}")
    print(f"warm template: ready {warm['template_ready_s']:.1f} s after the agent connected; idle RSS: "
          f"agent {warm['idle_agent_rss_mb']:.0f} MB + template {warm['idle_template_rss_mb']:.0f} MB")
    print("a warm SFT's system log:")
    for line in warm["sft_log"].splitlines()[:6]:
        print(f"  {line}")


if __name__ == "__main__":
    main()

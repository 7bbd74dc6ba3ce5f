"""One task over several ranks on CPU: steps/s at 1 and 2 ranks, the same global batch.

    python -m bench.distributed [--steps 30] [--global-batch 8]

A real coordinator and an agent declaring two GPUs (tests/harness.py). The 1-rank run is an sft task
with ``gpus: 0`` and per-device batch B; the 2-rank run asks ``gpus: 2`` with B/2 per device, so it
runs under torchrun with gloo (DDP) and sees the same examples per step. Printed: the trainer's
steps/s, each rank's tokens/s (from the ranks' own report), submit → training started (every rank
up, torch.distributed initialized, the first step reported) and the task's wall time. On a CPU the
two ranks share the cores, so 2 ranks are not expected to be faster: this measures what the
torchrun path costs, the GPU kit measures the GPUs (bench/gpu/).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.conftest import A100
from tests.harness import FINAL, Agent, Coordinator
from tests.ml.conftest import train_spec
from tests.ml.test_distributed import checkout_env, equal_length_rows


def run(coord: Coordinator, spec: dict[str, Any], timeout: float = 600) -> dict[str, Any]:
    t0 = time.time()
    task = coord.submit(spec)
    stepped = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = coord.task(task["id"])
        if stepped is None and (record.get("progress") or {}).get("step"):
            stepped = time.time() - t0
        if record["state"] in FINAL:
            break
        time.sleep(0.05)
    if record["state"] != "succeeded":
        raise SystemExit(f"task {record['state']}: {record.get('error')}\n{coord.logs(task['id'])[-2000:]}")
    result = record["result"]
    return {"world_size": result["world_size"], "strategy": result["strategy"],
            "steps_per_s": result["global_step"] / result["train_runtime_s"],
            "ranks": result["ranks"], "submit_to_first_step_s": stepped, "wall_s": time.time() - t0,
            "final_loss": result.get("final_loss")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--global-batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each rank")
    args = parser.parse_args(argv)
    from mloc_agent.tiny import build_tiny_lm

    with tempfile.TemporaryDirectory(prefix="mloc-bench-dist-") as tmp:
        root = Path(tmp)
        model = build_tiny_lm(root / "tiny-lm")
        rows = equal_length_rows(model, 64)
        coord = Coordinator(root / "cluster").start()
        env = {**checkout_env(root), "MLOC_TASK_PATH_ROOTS": str(root)}
        agent = Agent(coord, "duo", gpus=[A100, A100], extra_env=env).start()
        try:
            figures = []
            # interleaved (1, 2, 1, 2 ...): on a shared box the load of the moment hits both alike
            for gpus, per_device in ((0, args.global_batch), (2, args.global_batch // 2)) * args.repeats:
                spec = train_spec("sft", model, {"rows": rows}, {"max_steps": args.steps, "logging_steps": 5,
                                                               "per_device_train_batch_size": per_device})
                spec["resources"] = {"gpus": gpus}
                # one thread a rank, as torchrun sets it by default: the 1-rank run otherwise starts a thread per
                # core the box shows, and on a shared or CPU-limited box that alone can make it many times slower
                spec["env"]["OMP_NUM_THREADS"] = str(args.threads)
                figures.append(run(coord, spec))
        finally:
            agent.stop()
            coord.stop()
    print(f"sft, tiny LM (LoRA), {args.steps} steps, global batch {args.global_batch}, CPU (gloo), "
          f"{args.threads} thread(s) a rank")
    print(f"{'ranks':>5} {'strategy':>8} {'steps/s':>8} {'tokens/s per rank':>24} {'submit->1st step':>17} "
          f"{'wall s':>7}")
    for f in figures:
        per_rank = ", ".join(f"{r['tokens_per_s']:.0f}" for r in f["ranks"])
        print(f"{f['world_size']:>5} {f['strategy']:>8} {f['steps_per_s']:>8.2f} {per_rank:>24} "
              f"{f['submit_to_first_step_s']:>16.2f}s {f['wall_s']:>7.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

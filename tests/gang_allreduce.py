"""A tiny torch.distributed job for the gang tests, started by torchrun on each member: a few
all_reduce steps on gloo, a checkpoint (node rank 0, every ``--save-every`` steps) the agent uploads,
and a resume from ``$MLOC_RESUME_DIR``. Every rank prints what it saw, so the test asserts what the
ranks themselves report."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist


def tell_agent(message: dict) -> None:
    """One line on the agent's channel. torchrun starts the ranks with close_fds, so the channel's fd is
    reached through the rank's parent (torchrun, which inherited it from the task's shell)."""
    fd = os.environ["MLOC_PROGRESS_FD"]
    with open(f"/proc/{os.getppid()}/fd/{fd}", "w") as channel:
        channel.write(json.dumps(message) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--save-every", type=int, default=0)
    parser.add_argument("--step-s", type=float, default=0.0)
    args = parser.parse_args()
    print(f"[gang] rank={os.environ.get('RANK')} started_at={time.time():.6f}", flush=True)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    start = 0
    resume = os.environ.get("MLOC_RESUME_DIR")
    saved = next(Path(resume).rglob("state.json"), None) if resume else None
    if saved is not None:
        start = json.loads(saved.read_text())["step"]
        print(f"[gang] rank={rank} resumed_from_step={start}", flush=True)
    total = 0.0
    for step in range(start + 1, args.steps + 1):
        value = torch.tensor([float(rank + 1)])
        dist.all_reduce(value)
        total = float(value.item())
        if rank == 0 and args.save_every and step % args.save_every == 0:
            folder = Path(os.environ["MLOC_CHECKPOINT_DIR"]) / f"step-{step}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "state.json").write_text(json.dumps({"step": step}))
            tell_agent({"type": "checkpoint", "path": str(folder), "step": step})
            print(f"[gang] rank={rank} saved step {step}", flush=True)
        if rank == 0:
            tell_agent({"step": step, "total": args.steps})
        if args.step_s:
            time.sleep(args.step_s)
    print(f"[gang] rank={rank} world_size={world} node_rank={os.environ.get('GROUP_RANK')} "
          f"all_reduce={total:g}", flush=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

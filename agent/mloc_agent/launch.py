"""How a task with more than one rank is started: under ``torchrun`` (torch.distributed.run), which
starts the ranks, sets their ``RANK``/``LOCAL_RANK``/``WORLD_SIZE``/``MASTER_*`` variables and does the
rendezvous. The agent's main process never imports torch: this module builds the command line and the
channel the ranks report on.

One node: ``--standalone`` (torchrun's own c10d store on a free loopback port). Several agents (a
gang): every member runs torchrun with the gang's node count, its own node rank and rank 0's
``MASTER_ADDR:PORT``, which the coordinator relays (docs/distributed.md, docs/gangs.md).

torchrun starts each rank in a session of its own (``start_new_session=True`` in
torch/distributed/elastic/multiprocessing/subprocess_handler), so the task is started with
``TaskProcess.start(..., leaves_group=True)``: stop and reap also signal every process carrying the
warden's mark and the task id. torchrun also closes the fds its ranks would inherit, so the ranks
report on a FIFO in the work dir (``RankChannel``), not on the task's pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mloc_shared.distributed import DISTRIBUTED_TYPES, SHARDING_STRATEGIES, strategy_of

from mloc_agent.runner import PipeFollower
from mloc_agent.task_contract import RANK_CHANNEL

# torchrun tees every rank's output to its own with this prefix: the GLOBAL rank (${rank}), so the lines
# of two agents' ranks in one gang never read alike
RANK_PREFIX = "[rank${rank}]:"
PREFIX_VARIABLE = "TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE"


@dataclass(frozen=True)
class Rendezvous:
    """Where this agent's ranks meet the others'. The defaults: one node, ranks on loopback."""

    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int | None = None  # None: one node, torchrun picks a free port


@dataclass(frozen=True)
class LaunchPlan:
    """How many ranks a lease runs, and whether torchrun starts them."""

    nproc_per_node: int
    world_size: int
    torchrun: bool  # a Python training module under torchrun
    strategy: str

    @property
    def many_ranks(self) -> bool:
        """More than one rank, or a sharding strategy: ranks outside the task's group, the rank channel."""
        return self.torchrun or self.world_size > 1


def plan_launch(task_type: str, spec: Mapping[str, Any], gpus: list[int], rdzv: Rendezvous, *,
                hosted: bool) -> LaunchPlan:
    """One rank per leased GPU (at least one: CPU tasks); torchrun for a hosted training module with
    more than one rank, or with fsdp/deepspeed asked on a single rank (ZeRO/FSDP offload on one card)."""
    nproc = max(1, len(gpus))
    world = nproc * rdzv.nnodes
    strategy = strategy_of(dict(spec)) if task_type in DISTRIBUTED_TYPES else "none"
    torchrun = hosted and task_type in DISTRIBUTED_TYPES and (world > 1 or strategy in SHARDING_STRATEGIES)
    return LaunchPlan(nproc, world, torchrun, strategy)


def launch_env(nproc_per_node: int, rdzv: Rendezvous) -> dict[str, str]:
    """The standard variables a user's own launcher reads (LLaMA-Factory's names): for ``command``
    tasks, and for the record in every task's environment. MASTER_PORT only when it is known (a gang):
    a single node's own torchrun picks a free one."""
    env = {
        "NPROC_PER_NODE": str(nproc_per_node), "NNODES": str(rdzv.nnodes), "NODE_RANK": str(rdzv.node_rank),
        "WORLD_SIZE": str(nproc_per_node * rdzv.nnodes), "MASTER_ADDR": rdzv.master_addr,
    }
    if rdzv.master_port is not None:
        env["MASTER_PORT"] = str(rdzv.master_port)
    return env


def torchrun_argv(interpreter: str, inner: list[str], nproc_per_node: int, rdzv: Rendezvous,
                  run_id: str, log_dir: Path | None = None) -> list[str]:
    """``inner`` (a full command line: ``python -I -u -m mloc_agent.task_host``) under torchrun, every
    rank's output teed to torchrun's with the ``[rankN]:`` prefix (``PREFIX_VARIABLE`` in its env)."""
    argv = [interpreter, "-I", "-u", "-m", "torch.distributed.run", f"--nproc-per-node={nproc_per_node}",
            "--tee=3"]
    if log_dir is not None:  # each rank's own stdout/stderr files, beside the work dir (else a temp folder)
        argv.append(f"--log-dir={log_dir}")
    if rdzv.nnodes == 1 and rdzv.master_port is None:
        argv.append("--standalone")  # one node: torchrun's own c10d store on a free loopback port
    else:
        argv += [f"--nnodes={rdzv.nnodes}", f"--node-rank={rdzv.node_rank}", f"--rdzv-id={run_id}",
                 "--rdzv-backend=static", f"--master-addr={rdzv.master_addr}", f"--master-port={rdzv.master_port}"]
    return [*argv, "--no-python", *inner]


class RankChannel:
    """A FIFO in the work dir that any rank can open by path (torchrun closes inherited fds).

    The agent holds a write end until the task has exited, so a rank closing its end (or no rank
    having opened it yet) is never read as the end of the channel."""

    def __init__(self, path: Path, on_data: Callable[[bytes], None]) -> None:
        self.path = path
        os.mkfifo(path, 0o600)
        read_fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        self._hold: int | None = os.open(path, os.O_WRONLY | os.O_CLOEXEC)  # a reader exists: no block
        self.follower = PipeFollower(asyncio.get_running_loop(), read_fd, on_data)

    def env(self) -> dict[str, str]:
        return {RANK_CHANNEL: str(self.path)}

    async def close(self, drain_s: float) -> None:
        """After the task exited: read what is left, then stop (a leftover writer is not waited on)."""
        if self._hold is not None:
            os.close(self._hold)
            self._hold = None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.follower.closed), drain_s)
        self.follower.close()

"""How a task with more than one rank is started: under ``torchrun`` (torch.distributed.run), which
starts the ranks, sets their ``RANK``/``LOCAL_RANK``/``WORLD_SIZE``/``MASTER_*`` variables and does the
rendezvous. The agent's main process never imports torch: this module only builds the command line.

One node: ``--standalone``-like static rendezvous on loopback. Several agents (a gang): every member
runs torchrun with the gang's node count, its own node rank and rank 0's ``MASTER_ADDR:PORT``, which
the coordinator relays (docs/distributed.md).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rendezvous:
    """Where this agent's ranks meet the others'. The defaults: one node, ranks on loopback."""

    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int | None = None  # None: one node, torchrun picks a free port


def launch_env(nproc_per_node: int, rdzv: Rendezvous) -> dict[str, str]:
    """The standard variables a user's own launcher reads (LLaMA-Factory's names): for ``command``
    tasks, and for the record in every task's environment."""
    env = {
        "NPROC_PER_NODE": str(nproc_per_node), "NNODES": str(rdzv.nnodes), "NODE_RANK": str(rdzv.node_rank),
        "WORLD_SIZE": str(nproc_per_node * rdzv.nnodes), "MASTER_ADDR": rdzv.master_addr,
    }
    if rdzv.master_port is not None:
        env["MASTER_PORT"] = str(rdzv.master_port)
    return env


def torchrun_argv(interpreter: str, inner: list[str], nproc_per_node: int, rdzv: Rendezvous,
                  run_id: str) -> list[str]:
    """``inner`` (a full command line: ``python -I -u -m mloc_agent.task_host``) under torchrun."""
    argv = [interpreter, "-I", "-u", "-m", "torch.distributed.run", f"--nproc-per-node={nproc_per_node}",
            f"--nnodes={rdzv.nnodes}", f"--node-rank={rdzv.node_rank}", f"--rdzv-id={run_id}",
            f"--master-addr={rdzv.master_addr}"]
    if rdzv.master_port is not None:
        argv.append(f"--master-port={rdzv.master_port}")
    else:
        argv.append("--standalone")  # one node: torchrun's own c10d store on a free loopback port
    return [*argv, "--no-python", *inner]

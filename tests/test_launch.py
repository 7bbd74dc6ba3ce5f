"""launch.py: who runs under torchrun, with which command line and variables, and the rank channel
(a FIFO any rank opens by path) delivering every line until the task is over. No torch here: the agent's
main process builds these (tests/test_boundaries.py)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from mloc_agent.launch import RankChannel, Rendezvous, launch_env, plan_launch, torchrun_argv
from mloc_agent.task_contract import RANK_CHANNEL, TaskEnv

HOST = [sys.executable, "-I", "-u", "-m", "mloc_agent.task_host"]


def test_one_rank_per_leased_gpu_and_torchrun_only_for_training_modules() -> None:
    one = Rendezvous()
    assert plan_launch("sft", {}, [0, 1], one, hosted=True).torchrun
    assert plan_launch("sft", {}, [3], one, hosted=True).torchrun is False  # ddp on one rank: one process
    assert plan_launch("sft", {}, [], one, hosted=True).nproc_per_node == 1  # a CPU task: one rank
    single_fsdp = plan_launch("dpo", {"distributed": {"strategy": "fsdp"}}, [0], one, hosted=True)
    assert single_fsdp.torchrun and single_fsdp.strategy == "fsdp"  # FSDP/ZeRO offload on one card
    ppo = plan_launch("ppo", {}, [0, 1], one, hosted=True)
    assert not ppo.torchrun and ppo.many_ranks  # ppo's loop is one process; its GPUs still get the variables
    cmd = plan_launch("command", {}, [0, 1], one, hosted=False)
    assert not cmd.torchrun and cmd.world_size == 2 and cmd.many_ranks  # its own torchrun: ranks leave the group
    gang = plan_launch("sft", {}, [0, 1], Rendezvous(nnodes=3, node_rank=1, master_addr="198.51.100.7",
                                                          master_port=29400), hosted=True)
    assert gang.world_size == 6 and gang.torchrun


def test_the_standard_variables() -> None:
    assert launch_env(2, Rendezvous()) == {"NPROC_PER_NODE": "2", "NNODES": "1", "NODE_RANK": "0", "WORLD_SIZE": "2",
                                           "MASTER_ADDR": "127.0.0.1"}
    gang = launch_env(4, Rendezvous(nnodes=2, node_rank=1, master_addr="198.51.100.7", master_port=29400))
    assert gang["WORLD_SIZE"] == "8" and gang["NODE_RANK"] == "1" and gang["MASTER_PORT"] == "29400"


def test_torchrun_argv_parses_with_torchruns_own_parser(tmp_path: Path) -> None:
    """The line is read by torch.distributed.run's own argument parser (in a child: no torch here)."""
    one = torchrun_argv(sys.executable, HOST, 2, Rendezvous(), "t-1", tmp_path / "ranks")
    gang = torchrun_argv(sys.executable, HOST, 2, Rendezvous(nnodes=2, node_rank=1, master_addr="198.51.100.7",
                                                             master_port=29400), "t-1")
    assert one[:5] == [sys.executable, "-I", "-u", "-m", "torch.distributed.run"]
    assert one[-len(HOST):] == HOST and one[-len(HOST) - 1] == "--no-python"
    probe = ("import sys, json; from torch.distributed.run import parse_args; a = parse_args(json.loads(sys.argv[1]));"
             "print(json.dumps([a.nproc_per_node, a.nnodes, a.node_rank, a.standalone, a.master_addr, a.master_port,"
             " a.tee, a.no_python, a.training_script]))")
    for argv, expect in ((one, ["2", "1:1", 0, True, "127.0.0.1", None, "3", True, sys.executable]),
                         (gang, ["2", "2", 1, False, "198.51.100.7", 29400, "3", True, sys.executable])):
        out = subprocess.run([sys.executable, "-c", probe, json.dumps(argv[5:])], capture_output=True, text=True)
        if out.returncode != 0 and "No module named 'torch'" in out.stderr:
            return  # a dev box without torch: the shape checks above still ran
        assert out.returncode == 0, out.stderr
        got = json.loads(out.stdout)
        assert got[:3] == expect[:3] and got[3] is expect[3] and got[4] == expect[4], got
        assert (got[5] == expect[5]) or expect[5] is None
        assert got[6] == expect[6] and got[7] is True and got[8] == expect[8]


def test_the_rank_channel_delivers_lines_from_processes_that_open_it_by_path(tmp_path: Path) -> None:
    async def run() -> list[bytes]:
        chunks: list[bytes] = []
        channel = RankChannel(tmp_path / "ranks.fifo", chunks.append)
        env = {**os.environ, **channel.env()}
        # two writers one after the other, each opening and closing it: neither close ends the channel
        for i in range(2):
            proc = await asyncio.create_subprocess_exec(
                "sh", "-c", f'echo \'{{"step": {i}}}\' > "${RANK_CHANNEL}"', env=env)
            assert await proc.wait() == 0
        await channel.close(2)
        assert channel.follower.closed.done()
        return chunks

    assert b"".join(asyncio.run(run())) == b'{"step": 0}\n{"step": 1}\n'


def test_a_rank_reads_the_channel_path_not_the_closed_fd() -> None:
    base = TaskEnv(task_id="t", attempt=1, gpus=[0, 1], workdir=Path("/w"), output_dir=Path("/w/o"),
                   checkpoint_dir=Path("/w/c"), progress_fd=7).to_env()
    rank = TaskEnv.from_env({**base, RANK_CHANNEL: "/w/ranks.fifo", "RANK": "1"})
    assert rank.progress_fd is None and rank.rank_channel == Path("/w/ranks.fifo") and rank.rank == 1
    single = TaskEnv.from_env(base)
    assert single.progress_fd == 7 and single.rank == 0 and single.rank_channel is None

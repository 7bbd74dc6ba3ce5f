"""The agent <-> task contract: the variables a task starts with read back as written, and the
channel's lines (from Python modules and from shell tasks) decoded as the agent reads them."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from mloc_agent.task_contract import (
    ArtifactAdded,
    CheckpointSaved,
    Preempted,
    ProgressReport,
    TaskEnv,
    base_env,
    channel_env,
    decode,
    encode,
    host_argv,
    host_python_path,
    preempt_requested,
)

FULL = TaskEnv(task_id="t1", attempt=3, gpus=[0, 2], workdir=Path("/w"), output_dir=Path("/w/output"),
               checkpoint_dir=Path("/w/checkpoints"), agent_data_dir=Path("/data"), resume_dir=Path("/w/resume"),
               resume_step=40, sources_dir=Path("/w/sources"), task_file=Path("/w/task.json"),
               result_file=Path("/w/result.json"), progress_fd=7, owner="alice", allow_private_urls=True,
               coordinator_url="https://coord:8443", path_roots=(Path("/data/datasets"), Path("/srv/docs")),
               preempt_file=Path("/w/preempt"))


def test_what_the_agent_writes_the_task_reads_back() -> None:
    env = FULL.to_env()
    assert TaskEnv.from_env(env) == FULL
    assert env["CUDA_VISIBLE_DEVICES"] == env["MLOC_GPUS"] == "0,2"
    assert env["MLOC_PROGRESS"] == "/dev/fd/7"


def test_unset_fields_are_left_out_and_read_back_as_unset() -> None:
    bare = TaskEnv(task_id="t1", attempt=1, gpus=[], workdir=Path("/w"), output_dir=Path("/w/o"),
                   checkpoint_dir=Path("/w/c"))
    env = bare.to_env()
    unset = {"MLOC_AGENT_DATA_DIR", "MLOC_RESUME_DIR", "MLOC_RESUME_STEP", "MLOC_SOURCES_DIR", "MLOC_TASK_FILE",
             "MLOC_RESULT_FILE", "MLOC_PROGRESS_FD", "MLOC_PREEMPT_FILE"}
    assert not unset & set(env)
    assert TaskEnv.from_env(env) == bare


def test_a_process_the_agent_did_not_start_is_told_so() -> None:
    with pytest.raises(KeyError):
        TaskEnv.from_env({"MLOC_OUTPUT_DIR": "/o", "MLOC_CHECKPOINT_DIR": "/c"})


def test_no_agent_setting_or_secret_reaches_a_task() -> None:
    agent_env = {"PATH": "/bin", "MLOC_JOIN_TOKEN": "j", "MLOC_S3_SECRET_ACCESS_KEY": "k", "MLOC_DATA_DIR": "/d"}
    assert base_env(agent_env) == {"PATH": "/bin"}
    assert set(channel_env(9)) == {"MLOC_PROGRESS_FD", "MLOC_PROGRESS"}


PLUGIN = textwrap.dedent("""
    import sys
    from mloc_agent.modules.base import BaseModule

    class Probe(BaseModule):
        async def execute(self, progress_callback=None):
            return {"isolated": sys.flags.isolated, "warnings": sys.warnoptions}
""")


def test_the_task_host_ignores_python_variables_but_gets_the_agents_python_path(tmp_path: Path) -> None:
    """Started as the agent starts it: PYTHONWARNINGS, PYTHONSTARTUP and PYTHONPATH in its environment do
    nothing (an import they name would fail the host), and the agent's own PYTHONPATH, handed over in the
    task file, still finds an operator's module."""
    plugins, trap = tmp_path / "plugins", tmp_path / "trap"
    plugins.mkdir()
    trap.mkdir()
    (plugins / "probe_plugin.py").write_text(PLUGIN)
    (trap / "sitecustomize.py").write_text("raise SystemExit('PYTHONPATH was read')\n")
    task_file, result_file = tmp_path / "task.json", tmp_path / "result.json"
    python_path = host_python_path({"PYTHONPATH": f"{plugins}{os.pathsep}"})
    task_file.write_text(json.dumps({"spec": {}, "module": "probe_plugin:Probe", "python_path": python_path}))
    env = {**TaskEnv(task_id="t1", attempt=1, gpus=[], workdir=tmp_path, output_dir=tmp_path, checkpoint_dir=tmp_path,
                     task_file=task_file, result_file=result_file).to_env(),
           "PYTHONWARNINGS": "error::DeprecationWarning:no_such_module_xyz", "PYTHONPATH": str(trap),
           "PYTHONSTARTUP": str(trap / "sitecustomize.py")}
    done = subprocess.run(host_argv(sys.executable), env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(result_file.read_text())["result"] == {"isolated": 1, "warnings": []}
    assert python_path == [str(plugins)]


@pytest.mark.parametrize("message", [
    ProgressReport({"step": 3, "total": 10, "loss": 0.5, "metrics": {"kl": 0.1}}),
    CheckpointSaved("/w/checkpoints/step-3", 3),
    CheckpointSaved("ckpt.tar", None, "checkpoints/last.tar"),
    ArtifactAdded("report.txt"),
    ArtifactAdded("/w/out/adapter", "adapter"),
    Preempted(42),
    Preempted(None),
])
def test_every_message_decodes_as_it_was_encoded(message) -> None:
    line = encode(message)
    assert line.endswith("\n") and line.count("\n") == 1
    assert decode(line.encode()) == message


def test_a_shell_progress_line_needs_no_type() -> None:
    assert decode(b'{"step": 3, "total": 10, "message": "counting"}') == ProgressReport(
        {"step": 3, "total": 10, "message": "counting"})
    assert decode(b'{"type": "checkpoint", "path": "c.tar", "step": 5.0}') == CheckpointSaved("c.tar", 5)


@pytest.mark.parametrize("line", [
    b"not json", b"[1, 2]", b'"a string"', b'{"type": "telemetry", "x": 1}', b'{"type": "checkpoint"}',
    b'{"type": "checkpoint", "path": ""}', b'{"type": "artifact", "path": 5}',
    b'{"type": "checkpoint", "path": "c", "step": "five"}', b'{"type": "checkpoint", "path": "c", "step": true}',
    b'{"type": "artifact", "path": "a", "name": ["x"]}',
    b'{"type": "preempted", "step": "five"}', b'{"type": "preempted", "step": false}',
])
def test_lines_that_are_not_messages_are_dropped(line: bytes) -> None:
    assert decode(line) is None


def test_a_preemption_ack_from_a_shell_decodes_and_the_preempt_file_is_the_flag(tmp_path: Path) -> None:
    assert decode(b'{"type": "preempted", "step": 7.0}') == Preempted(7)
    flag = tmp_path / "preempt"
    env = {"MLOC_PREEMPT_FILE": str(flag)}
    assert not preempt_requested(env) and not preempt_requested({})
    flag.write_text('{"grace_s": 30, "reason": "preempted for task x"}')
    assert preempt_requested(env)


def hosted_plugin(tmp_path: Path, module: str, cls: str, source: str,
                  **task_env: Any) -> tuple[Path, dict[str, str]]:
    """A task module ``module:cls`` written as a plugin, and the environment the agent would start the
    task host with for it: (its result file, the environment)."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / f"{module}.py").write_text(textwrap.dedent(source))
    task_file, result_file = tmp_path / "task.json", tmp_path / "result.json"
    task_file.write_text(json.dumps({"spec": {}, "module": f"{module}:{cls}", "python_path": [str(plugins)]}))
    env = TaskEnv(task_id="t", attempt=1, gpus=[], workdir=tmp_path, output_dir=tmp_path / "o",
                  checkpoint_dir=tmp_path / "c", task_file=task_file, result_file=result_file, **task_env).to_env()
    return result_file, {**env, "PATH": os.environ.get("PATH", "")}


def test_the_task_host_survives_the_preemption_signal_and_a_preempted_module_exits_0(tmp_path: Path) -> None:
    """SIGUSR1 (the preemption signal) would kill a Python process by default: the host ignores it, and a
    module leaving through PreemptedExit after its ack exits 0 without a result."""
    read_fd, write_fd = os.pipe()
    result_file, env = hosted_plugin(tmp_path, "stopper", "Stopper", """
        import os, signal
        from mloc_agent.modules.base import BaseModule
        from mloc_agent.task_contract import Preempted, PreemptedExit, preempt_requested

        class Stopper(BaseModule):
            task_type = "stopper"

            async def execute(self, progress_callback=None):
                os.kill(os.getpid(), signal.SIGUSR1)  # what the agent sends, with the file written first
                assert preempt_requested()
                self.ctx.send(Preempted(5))
                raise PreemptedExit("preempted at step 5")
    """, progress_fd=write_fd, preempt_file=tmp_path / "preempt")
    (tmp_path / "preempt").write_text("{}")
    proc = subprocess.run(host_argv(sys.executable), env=env, pass_fds=(write_fd,), capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)
    os.close(write_fd)
    with os.fdopen(read_fd) as channel:
        lines = channel.read().splitlines()
    assert proc.returncode == 0, proc.stderr
    assert "stopped for preemption" in proc.stderr
    assert [decode(line) for line in lines] == [Preempted(5)]
    assert not result_file.exists()


def test_the_preemption_signal_never_kills_a_task_host_that_is_finishing(tmp_path: Path) -> None:
    """A preemption can reach a task that just finished: SIGUSR1 keeps arriving, from the module's start
    through the interpreter's shutdown (where CPython puts caught signals back to their default), and
    the host still exits 0 with its result."""
    result_file, env = hosted_plugin(tmp_path, "quick", "Quick", """
        import os
        from mloc_agent.modules.base import BaseModule

        class Quick(BaseModule):
            task_type = "quick"

            async def execute(self, progress_callback=None):
                open(os.path.join(os.environ["MLOC_WORKDIR"], "started"), "w").close()
                return {"done": True}
    """)
    proc = subprocess.Popen(host_argv(sys.executable), env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while not (tmp_path / "started").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    sent = 0
    while proc.poll() is None and time.monotonic() < deadline:  # until it is gone, shutdown included
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGUSR1)
            sent += 1
    _, err = proc.communicate(timeout=30)
    assert sent > 0
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    assert json.loads(result_file.read_text()) == {"result": {"done": True}}

"""The agent <-> task contract: the variables a task starts with read back as written, and the
channel's lines (from Python modules and from shell tasks) decoded as the agent reads them."""

from __future__ import annotations

from pathlib import Path

import pytest
from mloc_agent.task_contract import (
    ArtifactAdded,
    CheckpointSaved,
    ProgressReport,
    TaskEnv,
    base_env,
    channel_env,
    decode,
    encode,
)

FULL = TaskEnv(task_id="t1", attempt=3, gpus=[0, 2], workdir=Path("/w"), output_dir=Path("/w/output"),
               checkpoint_dir=Path("/w/checkpoints"), agent_data_dir=Path("/data"), resume_dir=Path("/w/resume"),
               resume_step=40, sources_dir=Path("/w/sources"), task_file=Path("/w/task.json"),
               result_file=Path("/w/result.json"), progress_fd=7)


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
             "MLOC_RESULT_FILE", "MLOC_PROGRESS_FD"}
    assert not unset & set(env)
    assert TaskEnv.from_env(env) == bare


def test_a_process_the_agent_did_not_start_is_told_so() -> None:
    with pytest.raises(KeyError):
        TaskEnv.from_env({"MLOC_OUTPUT_DIR": "/o", "MLOC_CHECKPOINT_DIR": "/c"})


def test_no_agent_setting_or_secret_reaches_a_task() -> None:
    agent_env = {"PATH": "/bin", "MLOC_JOIN_TOKEN": "j", "MLOC_S3_SECRET_ACCESS_KEY": "k", "MLOC_DATA_DIR": "/d"}
    assert base_env(agent_env) == {"PATH": "/bin"}
    assert set(channel_env(9)) == {"MLOC_PROGRESS_FD", "MLOC_PROGRESS"}


@pytest.mark.parametrize("message", [
    ProgressReport({"step": 3, "total": 10, "loss": 0.5, "metrics": {"kl": 0.1}}),
    CheckpointSaved("/w/checkpoints/step-3", 3),
    CheckpointSaved("ckpt.tar", None, "checkpoints/last.tar"),
    ArtifactAdded("report.txt"),
    ArtifactAdded("/w/out/adapter", "adapter"),
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
])
def test_lines_that_are_not_messages_are_dropped(line: bytes) -> None:
    assert decode(line) is None

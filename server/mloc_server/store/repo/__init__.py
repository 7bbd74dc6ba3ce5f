"""Every SQL statement of the coordinator lives in this package (services never write SQL).

Write functions take a sqlite3 connection and run on the writer thread inside a group-committed
transaction (see database.py); they check row counts so that a claim or a state change is a
compare-and-set. Read functions are async and use the reader connection.
"""

from mloc_server.store.repo.artifacts import artifact, insert_upload, record_artifact, take_upload, task_artifacts
from mloc_server.store.repo.fleet import (
    all_agents,
    insert_token,
    list_tokens,
    revoke_token,
    set_agent_state,
    token_by_hash,
    touch_agents,
    upsert_agent,
    use_join_token,
)
from mloc_server.store.repo.logs import insert_logs, task_logs
from mloc_server.store.repo.stats import stats
from mloc_server.store.repo.tasks import (
    TASK_COLUMNS,
    Claim,
    Claimed,
    NewTask,
    active_tasks,
    cancel_queued,
    claim_tasks,
    finish_task,
    get_task,
    insert_task,
    list_tasks,
    request_cancel,
    requeue_task,
    save_progress,
    set_checkpoint,
    task_attempts,
    task_row,
)

__all__ = [
    "TASK_COLUMNS",
    "Claim",
    "Claimed",
    "NewTask",
    "active_tasks",
    "all_agents",
    "artifact",
    "cancel_queued",
    "claim_tasks",
    "finish_task",
    "get_task",
    "insert_logs",
    "insert_task",
    "insert_token",
    "insert_upload",
    "list_tasks",
    "list_tokens",
    "record_artifact",
    "request_cancel",
    "requeue_task",
    "revoke_token",
    "save_progress",
    "set_agent_state",
    "set_checkpoint",
    "stats",
    "take_upload",
    "task_artifacts",
    "task_attempts",
    "task_logs",
    "task_row",
    "token_by_hash",
    "touch_agents",
    "upsert_agent",
    "use_join_token",
]

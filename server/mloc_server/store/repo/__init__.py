"""The SQLite backend's statements: every SQL statement of the coordinator lives in this package.

Services reach them through the ``Store`` seam (store/base.py, implemented in store/sqlite.py).
Write functions take a sqlite3 connection and run on the writer thread inside a group-committed
transaction (see database.py); they check row counts so that a claim or a state change is a
compare-and-set. Read functions are async and use the reader connection.
"""

from mloc_server.store.records import Claim, Claimed, NewTask
from mloc_server.store.repo.artifacts import artifact, commit_upload, insert_upload, pending_upload, task_artifacts
from mloc_server.store.repo.fleet import (
    active_user_tokens,
    all_agents,
    delete_agent,
    insert_token,
    list_tokens,
    revoke_token,
    save_agent,
    save_inventories,
    set_agent_state,
    token_by_hash,
    touch_agents,
    use_join_token,
)
from mloc_server.store.repo.logs import insert_logs, task_logs
from mloc_server.store.repo.mirror import commit_mirror_push, insert_mirror_push, mirror_push, mirrored
from mloc_server.store.repo.progress import add_progress_points, progress_points
from mloc_server.store.repo.secrets import delete_secrets, insert_secrets, secrets_ciphertext, tasks_with_secrets
from mloc_server.store.repo.stats import attempt_usage, count_tasks_by_state, finished_since, usage
from mloc_server.store.repo.tasks import (
    TASK_COLUMNS,
    active_tasks,
    cancel_queued,
    claim_gang,
    claim_tasks,
    finish_task,
    get_task,
    insert_task,
    list_tasks,
    request_cancel,
    requeue_task,
    save_progress,
    set_checkpoint,
    set_priority,
    task_attempts,
    task_row,
)

__all__ = [
    "TASK_COLUMNS",
    "Claim",
    "Claimed",
    "NewTask",
    "active_tasks",
    "active_user_tokens",
    "add_progress_points",
    "all_agents",
    "artifact",
    "attempt_usage",
    "cancel_queued",
    "claim_gang",
    "claim_tasks",
    "commit_mirror_push",
    "commit_upload",
    "count_tasks_by_state",
    "delete_agent",
    "delete_secrets",
    "finish_task",
    "finished_since",
    "get_task",
    "insert_logs",
    "insert_mirror_push",
    "insert_secrets",
    "insert_task",
    "insert_token",
    "insert_upload",
    "list_tasks",
    "list_tokens",
    "mirror_push",
    "mirrored",
    "pending_upload",
    "progress_points",
    "request_cancel",
    "requeue_task",
    "revoke_token",
    "save_agent",
    "save_inventories",
    "save_progress",
    "secrets_ciphertext",
    "set_agent_state",
    "set_checkpoint",
    "set_priority",
    "task_artifacts",
    "task_attempts",
    "task_logs",
    "task_row",
    "tasks_with_secrets",
    "token_by_hash",
    "touch_agents",
    "usage",
    "use_join_token",
]

"""The MLOC agent: runs on a GPU box, long-polls the coordinator outbound, runs leased tasks.

The agent's main process never imports torch or any ML library: task modules run in child
processes (see runner.py and task_host.py).
"""

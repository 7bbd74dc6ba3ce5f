"""Prefect (server + process worker) under the shared rules (bench/peers/measure.py).

Runs ``prefect server`` on SQLite, a ``process`` work pool and one worker, and a deployment of
bench/peers/prefect_flows.py. Each flow run is a new Python process that imports Prefect, so a run
takes seconds: the driver asks for a smaller N. The worker asks for work every second
(PREFECT_WORKER_QUERY_SECONDS; Prefect's default is 10 s) and runs at most LIMIT flow runs at once.
The flow writes its start stamp to a file the client waits for.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bench.peers.measure import free_port, latency_loop, log, parse_args, report, stopwatch, wait_until

HERE = Path(__file__).resolve().parent
LIMIT = 8
POOL = "mloc-bench"


def main() -> None:
    args = parse_args()
    port = free_port()
    home = Path(args.workdir) / "prefect"
    home.mkdir(parents=True, exist_ok=True)
    os.environ.update({
        "PREFECT_HOME": str(home), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING", "PREFECT_WORKER_QUERY_SECONDS": "1",
        "DO_NOT_TRACK": "1",
    })
    prefect_cli = str(Path(sys.executable).with_name("prefect"))
    log_path = home / "prefect.log"
    with open(log_path, "ab") as out:  # the children keep their own copy of the descriptor
        server = subprocess.Popen([prefect_cli, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                  stdout=out, stderr=subprocess.STDOUT)
    worker = None
    try:
        import httpx
        import prefect
        from prefect import get_client
        from prefect.client.schemas.actions import WorkPoolCreate
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
        from prefect.client.schemas.objects import StateType
        from prefect.deployments import run_deployment

        wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/api/health").status_code == 200, 180,
                   "prefect server", interval=0.5)
        client = get_client(sync_client=True)
        client.__enter__()
        client.create_work_pool(WorkPoolCreate(name=POOL, type="process"))
        flow_id = client.create_flow_from_name("stamp")
        client.create_deployment(
            flow_id=flow_id, name="bench", work_pool_name=POOL, entrypoint="prefect_flows.py:stamp",
            pull_steps=[{"prefect.deployments.steps.set_working_directory": {"directory": str(HERE)}}],
            parameter_openapi_schema={"type": "object", "properties": {"out": {"type": "string"}}})
        with open(log_path, "ab") as out:
            worker = subprocess.Popen([prefect_cli, "worker", "start", "--pool", POOL, "--type", "process",
                                       "--limit", str(LIMIT)], stdout=out, stderr=subprocess.STDOUT, cwd=HERE)
        stamps = Path(args.workdir) / "stamps"
        stamps.mkdir(exist_ok=True)
        count = [0]

        def one() -> float:
            count[0] += 1
            path = stamps / f"lat-{count[0]}"
            run = run_deployment("stamp/bench", parameters={"out": str(path)}, timeout=0, as_subflow=False)
            started = float(wait_until(lambda: path.exists() and path.read_text(), 300, "the flow run",
                                       interval=0.005))
            wait_until(lambda: client.read_flow_run(run.id).state.is_final(), 120, "the flow run to end")
            return started

        latency_loop(1, one)  # the worker's first run also warms the OS caches
        log(f"prefect: submit-to-start x{args.latency_n}")
        samples = latency_loop(args.latency_n, one)
        log(f"prefect: throughput x{args.throughput_n}")
        completed = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.COMPLETED])))
        before = client.count_flow_runs(flow_run_filter=completed)
        with stopwatch() as elapsed:
            for i in range(args.throughput_n):
                run_deployment("stamp/bench", parameters={"out": str(stamps / f"tp-{i}")}, timeout=0,
                               as_subflow=False)
            wait_until(lambda: client.count_flow_runs(flow_run_filter=completed) - before >= args.throughput_n,
                       1800, "all flow runs", interval=0.2)
        client.__exit__(None, None, None)
    finally:
        for proc in (worker, server):
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
    report("prefect", prefect.__version__, samples, args.throughput_n, elapsed[0], worker_limit=LIMIT,
           worker_query_s=1.0)


if __name__ == "__main__":
    main()

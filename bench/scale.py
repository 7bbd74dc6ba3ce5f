"""One coordinator against 1,000, 5,000 and 10,000 simulated agents: ``python -m bench.scale``.

    python -m bench.scale [--agents 1000,5000,10000] [--measure-s 60] [--hold-fraction 1.0]
                          [--probes 100] [--no-write]

For each fleet size: start a real coordinator (heartbeats every 15 s, lease TTL 45 s, polls held
25 s; its open-files limit raised with ``prlimit``), start simulated agents (bench/simagent.py,
several processes), wait until all are registered and holding a poll, give a fraction of them a
long-running lease each (a bulk submit of ``command`` tasks they never run but heartbeat), then for
``--measure-s`` seconds submit probe tasks one at a time while the fleet heartbeats. Reported:
coordinator RSS (after registration, and at the end) and CPU (% of one core over the window, from
/proc), heartbeat latency p50/p99/max over the window, dispatch latency (submit -> lease in a sim
agent's poll reply), and every error either side saw.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.compare import DOC, ROOT, machine, write_section
from bench.peers.measure import percentile
from bench.simagent import PROBE_PREFIX
from tests.harness import Coordinator, wait_for

AGENTS_PER_SIM = 5000
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all threads (fields 14 and 15 of /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def memory_mb(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Sims:
    """The simulator processes of one run, with their status files."""

    def __init__(self, coord: Coordinator, agents: int, work: Path, heartbeat_conn: str) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.status_files: list[Path] = []
        self.out_files: list[Path] = []
        count = max(1, math.ceil(agents / AGENTS_PER_SIM))
        share = [agents // count + (1 if i < agents % count else 0) for i in range(count)]
        for i, n in enumerate(share):
            status, out = work / f"sim{i}.status.json", work / f"sim{i}.out.json"
            with open(work / f"sim{i}.log", "wb") as log:  # the child keeps its own descriptor
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-m", "bench.simagent", "--url", coord.url, "--join-token", coord.join_token,
                     "--agents", str(n), "--prefix", f"sim{i}", "--status", str(status), "--out", str(out),
                     "--heartbeat-conn", heartbeat_conn, "--uvloop"],
                    cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))
            self.status_files.append(status)
            self.out_files.append(out)

    def status(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for proc, path in zip(self.procs, self.status_files, strict=True):
            if proc.poll() is not None:
                raise RuntimeError(f"a simulator exited with {proc.returncode}; see {path.with_suffix('.log')}")
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            for key in ("registered", "polling", "held", "probes", "heartbeats", "errors"):
                total[key] = total.get(key, 0) + data[key]
        return total

    def stop(self) -> list[dict[str, Any]]:
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return [json.loads(p.read_text()) for p in self.out_files if p.exists()]


def submit_bulk(coord: Coordinator, specs: list[dict[str, Any]]) -> None:
    for i in range(0, len(specs), 5000):
        resp = coord.http.post("/api/v1/tasks", content=json.dumps(specs[i:i + 5000]), timeout=120)
        assert resp.status_code == 201, resp.text


def heartbeat_conn(agents: int, args: argparse.Namespace) -> str:
    """``keep`` needs two sockets per agent on the coordinator; where the open-files hard limit cannot
    give that (a container's 20,000 at 10,000 agents), each heartbeat opens a fresh connection."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if args.heartbeat_conn == "keep" and hard != resource.RLIM_INFINITY and agents * 2 + 4096 > hard:
        return "fresh"
    return args.heartbeat_conn


def start_coordinator(agents: int, args: argparse.Namespace, work: Path) -> Coordinator:
    """A real coordinator with the fleet's timings and room for a connection per agent."""
    # a held poll per agent, plus its kept heartbeat connection (the systemd unit sets LimitNOFILE=1048576);
    # the hard limit is the ceiling here (heartbeat_conn() chose fresh connections if it is too low)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = agents * (3 if heartbeat_conn(agents, args) == "keep" else 1) + 4096
    nofile = nofile if hard == resource.RLIM_INFINITY else min(nofile, hard)
    return Coordinator(work, heartbeat_s=15, lease_ttl_s=45, poll_hold_s=25, restart_grace_s=60,
                       extra_env={"MLOC_LOG_LEVEL": "WARNING"},
                       prefix=["prlimit", f"--nofile={nofile}:{nofile}"]).start()


def connect_fleet(coord: Coordinator, pid: int, sims: Sims, agents: int, args: argparse.Namespace,
                  row: dict[str, Any]) -> None:
    """Wait for every agent to register and hold a poll, then hand out the long leases."""
    t0 = time.monotonic()
    wait_for(lambda: sims.status().get("polling", 0) >= agents, args.setup_timeout,
             f"{agents} agents registered and polling", interval=0.5)
    row["register_s"] = time.monotonic() - t0
    row["rss_idle_mb"] = memory_mb(pid)["VmRSS"]  # connected, no lease yet
    row["held"] = hold = round(agents * args.hold_fraction)
    if hold:
        t1 = time.monotonic()
        submit_bulk(coord, [{"taskType": "command", "name": f"hold-{i}", "command": ["sleep", "infinity"],
                             "resources": {"gpus": 1}} for i in range(hold)])
        wait_for(lambda: sims.status().get("held", 0) >= hold, args.setup_timeout, f"{hold} leases held",
                 interval=0.5)
        row["lease_s"] = time.monotonic() - t1


def probe_window(coord: Coordinator, pid: int, agents: int, args: argparse.Namespace, row: dict[str, Any]
                 ) -> tuple[float, float, dict[str, float]]:
    """The measuring window: probes one at a time, the coordinator's CPU; returns its bounds and submits."""
    spy = None
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
        spy = subprocess.Popen([str(Path(sys.executable).with_name("py-spy")), "record", "-p", str(pid), "-d",
                                str(int(args.measure_s)), "-f", "raw", "--gil", "-o",
                                str(Path(args.profile) / f"scale-{agents}.txt")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    row["load_before"] = os.getloadavg()[0]  # other work on the machine shows up in the tails
    w0, c0 = time.time(), cpu_seconds(pid)
    submitted: dict[str, float] = {}
    gap = args.measure_s / max(1, args.probes)
    for i in range(args.probes):
        time.sleep(max(0.0, w0 + i * gap - time.time()))
        t_submit = time.time()
        resp = coord.http.post("/api/v1/tasks", json={
            "taskType": "command", "name": f"{PROBE_PREFIX}{i}", "command": ["true"], "resources": {"gpus": 1}})
        resp.raise_for_status()
        submitted[resp.json()["id"]] = t_submit
    time.sleep(max(0.0, w0 + args.measure_s - time.time()))
    w1, c1 = time.time(), cpu_seconds(pid)
    if spy is not None:
        spy.wait(60)
    mem = memory_mb(pid)
    row.update(cpu_pct=100 * (c1 - c0) / (w1 - w0), rss_mb=mem["VmRSS"], rss_peak_mb=mem["VmHWM"],
               fds=open_fds(pid))
    return w0, w1, submitted


def figures(outs: list[dict[str, Any]], w0: float, w1: float, submitted: dict[str, float]) -> dict[str, Any]:
    """Heartbeat and dispatch latencies inside the window, and every error the simulators saw."""
    hb = [ms for out in outs for sent, ms in out["heartbeats"] if w0 <= sent <= w1]
    arrived = {task: at for out in outs for task, at in out["probes"].items()}
    dispatch = [(arrived[t] - s) * 1000 for t, s in submitted.items() if t in arrived]
    errors: dict[str, int] = {}
    for out in outs:
        for kind, n in out["errors_by_kind"].items():
            errors[kind] = errors.get(kind, 0) + n
    return {
        "heartbeats": len(hb), "hb_per_s": len(hb) / (w1 - w0),
        "hb_p50": statistics.median(hb) if hb else None, "hb_p99": percentile(hb, 99) if hb else None,
        "hb_max": max(hb) if hb else None, "probes": len(submitted), "probes_received": len(dispatch),
        "dispatch_p50": statistics.median(dispatch) if dispatch else None,
        "dispatch_p99": percentile(dispatch, 99) if dispatch else None, "errors": errors,
        "error_samples": [s for out in outs for s in out["error_samples"]][:5],
        "sim_cpu_s": sum(out["cpu_s"] for out in outs),
    }


def one_size(agents: int, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Run one fleet size end to end; returns its row of figures."""
    work = Path(tempfile.mkdtemp(prefix=f"scale-{agents}-", dir=root))
    coord = start_coordinator(agents, args, work)
    pid = coord.proc.pid if coord.proc else 0
    sims = None
    row: dict[str, Any] = {"agents": agents, "rss_base_mb": memory_mb(pid)["VmRSS"]}
    try:
        if args.unfit_tasks:  # work no agent can take (8 GPUs; sims have 2): it waits in the queue throughout
            submit_bulk(coord, [{"taskType": "command", "name": f"unfit-{i}", "command": ["true"],
                                 "resources": {"gpus": 8}} for i in range(args.unfit_tasks)])
        row["hb_conn"] = conn = heartbeat_conn(agents, args)
        if conn != args.heartbeat_conn:
            print(f"    open-files hard limit {resource.getrlimit(resource.RLIMIT_NOFILE)[1]}: heartbeats on fresh "
                  "connections at this size", flush=True)
        sims = Sims(coord, agents, work, conn)
        connect_fleet(coord, pid, sims, agents, args, row)
        time.sleep(min(15.0, args.measure_s / 4))  # one heartbeat interval: every lease in its rhythm
        print(f"    {agents} agents connected ({row['register_s']:.0f} s), {row['held']} leases held; measuring "
              f"{args.measure_s:.0f} s (coordinator pid {pid})", flush=True)
        w0, w1, submitted = probe_window(coord, pid, agents, args, row)
        outs, sims = sims.stop(), None
        row.update(figures(outs, w0, w1, submitted))
        log_text = (work / "coordinator.log").read_text(errors="replace")
        row["coordinator_log_errors"] = log_text.count("Traceback") + log_text.count(" ERROR ")
    except (AssertionError, RuntimeError, OSError, httpx.HTTPError) as exc:
        kept = Path(tempfile.gettempdir()) / f"mloc-scale-{agents}-coordinator.log"
        shutil.copyfile(work / "coordinator.log", kept)
        raise RuntimeError(f"{exc} (coordinator log: {kept})") from exc
    finally:
        if sims is not None:
            sims.stop()
        coord.stop()
        if args.logs:
            Path(args.logs).mkdir(parents=True, exist_ok=True)
            for log in [*work.glob("*.log"), *work.glob("sim*.out.json")]:
                shutil.copyfile(log, Path(args.logs) / f"{agents}-{log.name}")
    return row


def fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def render(rows: list[dict[str, Any]], command: str, started: float, args: argparse.Namespace) -> str:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started))
    keep_note = " (a row marked *fresh* opened one per heartbeat: the open-files limit allowed no more)"
    out = [f"Made by `{command}` on {when}; {machine()}. Window: {args.measure_s:.0f} s per size; heartbeats "
           f"every 15 s on a {'fresh' if args.heartbeat_conn == 'fresh' else 'kept'} connection"
           f"{keep_note if args.heartbeat_conn == 'keep' else ''}; "
           f"{args.hold_fraction:.0%} of the agents hold a lease.", "",
           "| agents | leases | RSS MB idle → loaded (peak) | CPU % of a core | heartbeats/s "
           "| heartbeat p50 / p99 / max ms | dispatch p50 / p99 ms | errors | registration s | load avg |",
           "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in rows:
        if "error" in r:
            last = (r["error"].strip().splitlines() or ["?"])[-1]
            out.append(f"| {r['agents']:,} | | | | | | | failed: {last[:150]} | | |")
            continue
        errors = sum(r["errors"].values()) + r.get("coordinator_log_errors", 0)
        lost = r["probes"] - r["probes_received"]
        kinds = {**r["errors"], **({"coordinator log": r["coordinator_log_errors"]} if r.get("coordinator_log_errors")
                                   else {})}
        err_text = f"{errors}" + (f" ({', '.join(f'{k}: {v}' for k, v in kinds.items())})" if errors else "")
        if lost:
            err_text += f"; {lost} probe(s) never arrived"
        hb = f"{fmt(r['hb_p50'])} / {fmt(r['hb_p99'])} / {fmt(r['hb_max'])}"
        fresh = " *fresh*" if r.get("hb_conn", args.heartbeat_conn) != args.heartbeat_conn else ""
        out.append(
            f"| {r['agents']:,} | {r['held']:,} | {r['rss_idle_mb']:.0f} → {r['rss_mb']:.0f} ({r['rss_peak_mb']:.0f}) "
            f"| {r['cpu_pct']:.0f} | {r['hb_per_s']:.0f}{fresh} | {hb} "
            f"| {fmt(r['dispatch_p50'])} / {fmt(r['dispatch_p99'])} | {err_text} | {r['register_s']:.0f} "
            f"| {r['load_before']:.1f} |")
    out += ["", "Load avg: the machine's 1-minute load average as the window opened (the coordinator and the "
                "simulators account for about 1 of it); more than that means other work shared the 2 cores.", "",
            "Targets (issue 5): 10,000 agents with heartbeats every 15 s: RSS ≤ 500 MB, heartbeat p99 ≤ 50 ms, "
                "no errors."]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--agents", default="1000,5000,10000", help="comma-separated fleet sizes")
    ap.add_argument("--measure-s", type=float, default=60.0, help="the measuring window per size")
    ap.add_argument("--hold-fraction", type=float, default=1.0, help="agents that hold a lease (and heartbeat)")
    ap.add_argument("--probes", type=int, default=100, help="tasks submitted one at a time during the window")
    ap.add_argument("--heartbeat-conn", choices=("fresh", "keep"), default="fresh",
                    help="fresh (default, like the real agent): a connection per heartbeat; keep: one kept open")
    ap.add_argument("--unfit-tasks", type=int, default=0, help="queued tasks that need 8 GPUs (no sim agent fits)")
    ap.add_argument("--setup-timeout", type=float, default=300.0)
    ap.add_argument("--profile", help="a folder: py-spy records the coordinator during each window (raw format)")
    ap.add_argument("--logs", help="a folder to keep the coordinator's and simulators' logs in")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.agents.split(",") if s]
    command = "python -m bench.scale" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    started = time.time()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        for n in sizes:
            print(f"[{time.strftime('%H:%M:%S')}] {n:,} simulated agents", flush=True)
            try:
                row = one_size(n, args, Path(tmp))
            except (AssertionError, RuntimeError, OSError) as exc:
                row = {"agents": n, "error": str(exc)}
            print(f"    {json.dumps({k: v for k, v in row.items() if k != 'error_samples'}, default=str)}",
                  flush=True)
            rows.append(row)
    text = render(rows, command, started, args)
    print()
    print(text)
    if not args.no_write:
        write_section(DOC, "scale", text)
        print(f"wrote {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

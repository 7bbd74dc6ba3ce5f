"""MLOC and its peers side by side, in one run on one machine: ``python -m bench.compare``.

    python -m bench.compare [--latency-n 200] [--throughput-n 2000] [--only mloc,ray] [--skip prefect]
                            [--no-write]

Each peer is installed into its own venv under bench/.peers/ (first run only), then every system
is measured in turn, never two at once, by a runner that follows the same rules
(bench/peers/measure.py): submit-to-start latency of tasks submitted one at a time to idle workers,
and end-to-end throughput of no-op tasks. The table goes to stdout and into docs/benchmarks.md,
between the ``compare`` markers, with the command, the date and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.peers import MLOC, PEERS, Peer
from bench.peers.measure import RESULT_TAG, summary
from bench.peers.venvs import ensure

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"


def machine() -> str:
    """One line about where the figures come from (they mean little without it)."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{os.cpu_count()} cores ({model or platform.machine()}), {mem_gb:.0f} GiB, "
            f"Python {platform.python_version()}")


def run_one(peer: Peer, python: Path, latency_n: int, throughput_n: int, logs: Path, timeout: float
            ) -> dict[str, Any]:
    """Run a peer's runner in its venv; returns its reported result (or the error)."""
    work = Path(tempfile.mkdtemp(prefix=f"bench-{peer.name}-"))
    argv = [str(python), "-m", peer.runner, "--latency-n", str(latency_n), "--throughput-n", str(throughput_n),
            "--workdir", str(work), *peer.extra_args]
    load_before = os.getloadavg()[0]
    t0 = time.monotonic()
    try:
        with open(logs / f"{peer.name}.log", "wb") as err:
            proc = subprocess.run(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, timeout=timeout,
                                  env={**os.environ, "PYTHONPATH": str(ROOT)})
    except subprocess.TimeoutExpired:
        return {"system": peer.name, "error": f"timed out after {timeout:.0f}s"}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = [ln for ln in proc.stdout.decode(errors="replace").splitlines() if ln.startswith(RESULT_TAG)]
    if proc.returncode != 0 or not lines:
        tail = (logs / f"{peer.name}.log").read_text(errors="replace")[-1500:]
        return {"system": peer.name, "error": f"exit {proc.returncode}: {tail.strip().splitlines()[-1:]}"}
    result = json.loads(lines[-1][len(RESULT_TAG):])
    result.update(wall_s=time.monotonic() - t0, load_before=load_before)
    return result


def fmt(value: float, digits: int = 1) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def factor(x: float) -> str:
    """MLOC's advantage as a factor: above 1 MLOC is better, below 1 the peer is."""
    return f"{x:.2f}x" if x < 10 else f"{x:.0f}x"


def table(results: list[dict[str, Any]]) -> list[str]:
    """A markdown table; ratios are MLOC's advantage (>1: MLOC better; <1: the peer is)."""
    mloc = next((r for r in results if r["system"] == "mloc" and "error" not in r), None)
    head = ["system", "version", "latency N", "p50 ms", "p99 ms", "throughput N", "tasks/s",
            "MLOC vs it: p50", "p99", "tasks/s"]
    rows = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["--:"] * (len(head) - 2)) + "|"]
    for r in results:
        peer = PEERS[r["system"]]
        if "error" in r:
            rows.append(f"| {peer.label} | | | | | | | failed: {r['error'][:120]} | | |")
            continue
        lat = summary(r["latency_ms"])
        cells = [peer.label, r["version"], str(r["latency_n"]), fmt(lat["p50"], 2), fmt(lat["p99"], 2),
                 str(r["throughput_n"]), fmt(r["tasks_per_s"])]
        if mloc is None or r is mloc:
            cells += ["—", "—", "—"]
        else:
            ml = summary(mloc["latency_ms"])
            cells += [factor(lat["p50"] / ml["p50"]), factor(lat["p99"] / ml["p99"]),
                      factor(mloc["tasks_per_s"] / r["tasks_per_s"])]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def notes(results: list[dict[str, Any]]) -> list[str]:
    out = []
    for r in results:
        peer = PEERS[r["system"]]
        extra = ""
        if "load_before" in r:
            extra = f" (load average before: {r['load_before']:.1f}; took {r['wall_s']:.0f} s)"
        out.append(f"- **{peer.label}**: {peer.setup}{extra}.")
        if r["system"] == "mloc" and "lease_latency_ms" in r:
            s = summary(r["lease_latency_ms"])
            out.append(f"  For reference, MLOC's protocol alone (submit → the lease in a held poll, no process "
                       f"started; `python -m bench.core`): p50 {s['p50']:.2f} ms, p99 {s['p99']:.2f} ms.")
    return out


def render(results: list[dict[str, Any]], command: str, started: float) -> str:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started))
    lines = [f"Made by `{command}` on {when}; {machine()}.", ""]
    lines += table(results)
    lines += ["", "Ratios are MLOC's advantage: above 1x MLOC is better (lower latency, more tasks/s), "
              "below 1x the peer is.", ""]
    lines += notes(results)
    return "\n".join(lines) + "\n"


def write_section(doc: Path, name: str, body: str) -> None:
    """Replace the text between ``<!-- name:begin -->`` and ``<!-- name:end -->`` (the prose stays)."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = doc.read_text() if doc.exists() else ""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = f"{head}{begin}\n{body}{end}{tail}"
    else:
        text = f"{text.rstrip()}\n\n{begin}\n{body}{end}\n"
    doc.write_text(text)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--latency-n", type=int, default=200)
    ap.add_argument("--throughput-n", type=int, default=2000)
    ap.add_argument("--only", default="", help="comma-separated systems (default: all)")
    ap.add_argument("--skip", default="", help="comma-separated systems to leave out")
    ap.add_argument("--timeout", type=float, default=1200, help="seconds per system")
    ap.add_argument("--no-write", action="store_true", help=f"print only; leave {DOC.relative_to(ROOT)} alone")
    args = ap.parse_args(argv)
    names = [n for n in (args.only.split(",") if args.only else PEERS) if n]
    names = [n for n in names if n not in set(args.skip.split(","))]
    unknown = [n for n in names if n not in PEERS]
    if unknown:
        raise SystemExit(f"unknown systems {unknown}; known: {', '.join(PEERS)}")
    command = "python -m bench.compare" + (" " + shlex.join(argv if argv is not None else sys.argv[1:])).rstrip()
    started = time.time()
    logs = Path(tempfile.mkdtemp(prefix="bench-compare-logs-"))
    results = []
    for name in names:
        peer = PEERS[name]
        print(f"[{time.strftime('%H:%M:%S')}] {peer.label}: installing (first run only) …", flush=True)
        try:
            python = ensure(peer, logs / "install.log")
        except (subprocess.CalledProcessError, RuntimeError) as exc:
            results.append({"system": name, "error": f"install failed ({exc}); see {logs / 'install.log'}"})
            continue
        lat_n = min(args.latency_n, peer.latency_n or args.latency_n)
        tp_n = min(args.throughput_n, peer.throughput_n or args.throughput_n)
        print(f"[{time.strftime('%H:%M:%S')}] {peer.label}: {lat_n} tasks one at a time, then {tp_n} in bulk",
              flush=True)
        result = run_one(peer, python, lat_n, tp_n, logs, args.timeout)
        if "error" in result:
            print(f"    failed: {result['error']} (log: {logs / (name + '.log')})", flush=True)
        else:
            s = summary(result["latency_ms"])
            print(f"    p50 {s['p50']:.2f} ms  p99 {s['p99']:.2f} ms  {result['tasks_per_s']:.0f} tasks/s  "
                  f"({result['wall_s']:.0f} s)", flush=True)
        results.append(result)
    results.sort(key=lambda r: r["system"] != MLOC.name)
    text = render(results, command, started)
    print()
    print(text)
    print(f"runner logs: {logs}")
    if not args.no_write:
        write_section(DOC, "compare", text)
        print(f"wrote {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

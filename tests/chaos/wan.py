"""WAN conditions on the NAT router of a :class:`tests.netns.NatNet`: 100 ms each way (200 ms RTT),
2 % loss, some reordering, for everything between the agent LAN and the coordinator.

With ``tc netem`` when the kernel has it (on both router interfaces). This machine's kernel, and
CI's, has no netem (CONFIG_NET_SCH_NETEM unset, no modules to load), so otherwise the router's
iptables hands every forwarded packet to ``wanem.py`` through NFQUEUE, which delays, drops and
reorders them the same way. Either way it is the kernel's real forwarding path, and the test
process's own link to the coordinator is not slowed."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from tests.netns import NatNet

WANEM = Path(__file__).with_name("wanem.py")
QUEUE = 7


def netem_available(net: NatNet) -> bool:
    """Whether the kernel has sch_netem (tried on a throwaway link in the router's namespace)."""
    ns = ["ip", "netns", "exec", net.router_ns]
    subprocess.run([*ns, "ip", "link", "add", "nprobe0", "type", "dummy"], capture_output=True)
    try:
        return subprocess.run([*ns, "tc", "qdisc", "add", "dev", "nprobe0", "root", "netem", "delay", "1ms"],
                              capture_output=True).returncode == 0
    finally:
        subprocess.run([*ns, "ip", "link", "del", "nprobe0"], capture_output=True)


class WanLink:
    def __init__(self, net: NatNet, workdir: Path, *, one_way_ms: float = 100.0, loss: float = 0.02,
                 reorder: float = 0.05, seed: int | None = None) -> None:
        self.net, self.workdir = net, workdir
        self.one_way_ms, self.loss, self.reorder, self.seed = one_way_ms, loss, reorder, seed
        self.method = ""
        self._emulator: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._rule = ["FORWARD", "-j", "NFQUEUE", "--queue-num", str(QUEUE)]
        self.stats: dict[str, float] = {}

    def _ns(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.net.router_ns, *argv]

    def up(self) -> WanLink:
        if netem_available(self.net):
            self.method = "tc netem"
            for dev in ("wan0", "lan0"):  # each egress: one way each, so both directions are slowed
                subprocess.run(self._ns("tc", "qdisc", "add", "dev", dev, "root", "netem", "delay",
                                        f"{self.one_way_ms:g}ms", "1ms", "loss", f"{self.loss * 100:g}%",
                                        "reorder", f"{self.reorder * 100:g}%", "50%"), check=True,
                               capture_output=True)
            return self
        self.method = "NFQUEUE emulator (no netem in this kernel)"
        ready = self.workdir / "wanem.ready"
        ready.unlink(missing_ok=True)
        argv = [sys.executable, str(WANEM), "--queue", str(QUEUE), "--delay-ms", f"{self.one_way_ms:g}",
                "--loss", str(self.loss), "--reorder", str(self.reorder), "--stats", str(self.workdir / "wanem.json"),
                "--ready", str(ready)]
        if self.seed is not None:
            argv += ["--seed", str(self.seed)]
        self._log = open(self.workdir / "wanem.log", "wb")  # noqa: SIM115 (closed in down())
        self._emulator = subprocess.Popen(self._ns(*argv), stdout=subprocess.DEVNULL, stderr=self._log)
        deadline = time.monotonic() + 15
        while not ready.exists():
            if self._emulator.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the WAN emulator did not start: {(self.workdir / 'wanem.log').read_text()}")
            time.sleep(0.05)
        subprocess.run(self._ns("iptables", "-t", "mangle", "-A", *self._rule), check=True, capture_output=True)
        return self

    def describe(self) -> str:
        """What was done to the packets, in words."""
        st = self.stats
        if st.get("packets"):
            packets, dropped = st["packets"], st["dropped"]
            delay_ms = 1000 * st["delay_sum_s"] / max(packets - dropped, 1)
            return (f"{packets:.0f} packets, {dropped:.0f} dropped ({100 * dropped / packets:.1f} %), "
                    f"{st['reordered']:.0f} reordered, mean delay {delay_ms:.0f} ms")
        return ", ".join(f"{k} {v:g}" for k, v in st.items()) or "no counts"

    def down(self) -> dict[str, float]:
        """Restore the plain link; returns what was done to the packets."""
        if self.method == "tc netem":
            for dev in ("wan0", "lan0"):
                out = subprocess.run(self._ns("tc", "-s", "qdisc", "show", "dev", dev), capture_output=True,
                                     text=True).stdout
                words = out.split()
                if "dropped" in words:
                    self.stats[f"{dev}_dropped"] = float(words[words.index("dropped") + 1].rstrip(","))
                subprocess.run(self._ns("tc", "qdisc", "del", "dev", dev, "root"), capture_output=True)
        elif self._emulator is not None:
            subprocess.run(self._ns("iptables", "-t", "mangle", "-D", *self._rule), capture_output=True)
            self._emulator.terminate()
            try:
                self._emulator.wait(10)
            except subprocess.TimeoutExpired:
                self._emulator.kill()
                self._emulator.wait(5)
            stats = self.workdir / "wanem.json"
            if stats.exists():
                self.stats = json.loads(stats.read_text())
            self._emulator = None
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.stats


def tcp_rtt(net: NatNet, host: str, port: int, samples: int = 15) -> list[float]:
    """Connect times (SYN -> SYN-ACK: one round trip) from the agent LAN to ``host:port``, sorted."""
    code = ("import socket, sys, time\n"
            "out = []\n"
            f"for _ in range({samples}):\n"
            "    t = time.monotonic()\n"
            f"    socket.create_connection(('{host}', {port}), timeout=10).close()\n"
            "    out.append(time.monotonic() - t)\n"
            "print(' '.join(f'{x:.4f}' for x in sorted(out)))\n")
    res = subprocess.run([*net.exec_prefix(net.agent_ns), sys.executable, "-c", code], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return [float(x) for x in res.stdout.split()]

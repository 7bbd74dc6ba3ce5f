"""Network namespaces for tests: a coordinator network, a NAT router, and LANs behind it.

Topology (TEST-NET-2 only, 198.51.100.0/24 split in /26s; TEST-NET-1 is this machine's own
network here, so it is never used):

    root ns (the test) 198.51.100.3 ─┐
                                     ├─ br0 in ns C: 198.51.100.1 (the coordinator listens here)
    ns R (router)      198.51.100.2 ─┘
    ns R               198.51.100.65 ── ns A 198.51.100.66 (agent LAN, default route via R)

R masquerades the LAN and drops new connections from the coordinator side into it, like a home
or lab NAT: the coordinator can never open a connection to the agent.

``LanNet`` puts several agent namespaces on one LAN instead (a bridge in R: 198.51.100.66, .67, …),
behind the same NAT: two boxes of a gang reach each other, and the coordinator reaches neither.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from dataclasses import dataclass, field

COORD_IP = "198.51.100.1"
ROUTER_WAN_IP = "198.51.100.2"
TEST_IP = "198.51.100.3"
LAN_GW_IP = "198.51.100.65"
AGENT_IP = "198.51.100.66"
WAN = "/26"
LAN_NET = "198.51.100.64/26"


def available() -> str | None:
    """Why namespaces cannot be used here (None when they can)."""
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    addrs = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    if "198.51.100." in addrs:
        return "198.51.100.0/24 is already used on this machine; refusing to route test traffic there"
    probe = f"mlocprobe{uuid.uuid4().hex[:6]}"
    if subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode != 0:
        return "cannot create network namespaces (needs root)"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def sh(*args: str) -> None:
    subprocess.run(list(args), check=True, capture_output=True)


@dataclass
class NatNet:
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:5])

    @property
    def coord_ns(self) -> str:
        return f"mc{self.tag}"

    @property
    def router_ns(self) -> str:
        return f"mr{self.tag}"

    @property
    def agent_ns(self) -> str:
        return f"ma{self.tag}"

    def up(self) -> NatNet:
        c, r = self.coord_ns, self.router_ns
        for ns in (c, r, *self.agent_namespaces()):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        self._wan()
        self._lan()
        self._nat()
        return self

    def agent_namespaces(self) -> list[str]:
        return [self.agent_ns]

    def _wan(self) -> None:
        c, r, t = self.coord_ns, self.router_ns, self.tag
        sh("ip", "-n", c, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", c, "addr", "add", f"{COORD_IP}{WAN}", "dev", "br0")
        sh("ip", "-n", c, "link", "set", "br0", "up")
        # the test process (root ns) <-> coordinator network
        sh("ip", "link", "add", f"th{t}", "type", "veth", "peer", "name", "tc0", "netns", c)
        sh("ip", "-n", c, "link", "set", "tc0", "master", "br0", "up")
        sh("ip", "addr", "add", f"{TEST_IP}{WAN}", "dev", f"th{t}")
        sh("ip", "link", "set", f"th{t}", "up")
        # router WAN side <-> coordinator network
        sh("ip", "-n", r, "link", "add", "wan0", "type", "veth", "peer", "name", "rc0", "netns", c)
        sh("ip", "-n", c, "link", "set", "rc0", "master", "br0", "up")
        sh("ip", "-n", r, "addr", "add", f"{ROUTER_WAN_IP}{WAN}", "dev", "wan0")
        sh("ip", "-n", r, "link", "set", "wan0", "up")

    def _lan(self) -> None:
        r, a = self.router_ns, self.agent_ns
        # router LAN side <-> agent LAN
        sh("ip", "-n", r, "link", "add", "lan0", "type", "veth", "peer", "name", "eth0", "netns", a)
        sh("ip", "-n", r, "addr", "add", f"{LAN_GW_IP}{WAN}", "dev", "lan0")
        sh("ip", "-n", r, "link", "set", "lan0", "up")
        sh("ip", "-n", a, "addr", "add", f"{AGENT_IP}{WAN}", "dev", "eth0")
        sh("ip", "-n", a, "link", "set", "eth0", "up")
        sh("ip", "-n", a, "route", "add", "default", "via", LAN_GW_IP)

    def _nat(self) -> None:
        r = self.router_ns
        sh("ip", "netns", "exec", r, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        ipt = ["ip", "netns", "exec", r, "iptables"]
        sh(*ipt, "-t", "nat", "-A", "POSTROUTING", "-s", LAN_NET, "-o", "wan0", "-j", "MASQUERADE")
        sh(*ipt, "-A", "FORWARD", "-i", "wan0", "-o", "lan0", "-m", "state", "--state", "ESTABLISHED,RELATED",
           "-j", "ACCEPT")
        sh(*ipt, "-A", "FORWARD", "-i", "wan0", "-o", "lan0", "-j", "DROP")

    def exec_prefix(self, ns: str) -> list[str]:
        return ["ip", "netns", "exec", ns]

    def cut_agent(self, cut: bool) -> None:
        """Drop everything between the agent LAN and the coordinator (or restore it)."""
        action = "-I" if cut else "-D"
        sh("ip", "netns", "exec", self.router_ns, "iptables", action, "FORWARD", "-i", "lan0", "-j", "DROP")

    def down(self) -> None:
        subprocess.run(["ip", "link", "del", f"th{self.tag}"], capture_output=True)
        for ns in (*self.agent_namespaces(), self.router_ns, self.coord_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@dataclass
class LanNet(NatNet):
    """``count`` agent namespaces on one LAN (a bridge ``lan0`` in the router's namespace), behind the NAT."""

    count: int = 2

    def agent_namespaces(self) -> list[str]:
        return [f"ma{self.tag}{i}" for i in range(self.count)]

    def agent_ip(self, i: int) -> str:
        return f"198.51.100.{66 + i}"

    def _lan(self) -> None:
        r = self.router_ns
        sh("ip", "-n", r, "link", "add", "lan0", "type", "bridge")
        sh("ip", "-n", r, "addr", "add", f"{LAN_GW_IP}{WAN}", "dev", "lan0")
        sh("ip", "-n", r, "link", "set", "lan0", "up")
        for i, ns in enumerate(self.agent_namespaces()):
            sh("ip", "-n", r, "link", "add", f"lp{i}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "-n", r, "link", "set", f"lp{i}", "master", "lan0", "up")
            sh("ip", "-n", ns, "addr", "add", f"{self.agent_ip(i)}{WAN}", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "route", "add", "default", "via", LAN_GW_IP)

"""A gang member's part (docs/gangs.md): the agent's LAN addresses, node rank 0's free port, and the
wait of the other members until the coordinator relays where rank 0's ranks listen.

The coordinator never dials an agent and never learns more than what the members tell it: the
members' ranks talk to each other on their LAN, every agent only outbound to the coordinator.
"""

from __future__ import annotations

import asyncio
import fcntl
import ipaddress
import socket
import struct
from collections.abc import Callable
from urllib.parse import urlsplit

from mloc_shared.protocol import HeartbeatRequest, Lease, RendezvousPoint

from mloc_agent.client import CoordinatorClient
from mloc_agent.launch import Rendezvous

WAIT_POLL_S = 0.2  # how often a waiting member asks (each ask renews its lease as well)


def lan_addresses(lan_address: str | None, coordinator_url: str) -> list[str]:
    """The agent's LAN IPv4 addresses: ``MLOC_LAN_ADDRESS`` if set, else the address of the interface
    that routes to the coordinator (a UDP socket's connect sends nothing; behind NAT that is the LAN one)."""
    if lan_address:
        return [lan_address]
    parts = urlsplit(coordinator_url)
    try:
        infos = socket.getaddrinfo(parts.hostname or "127.0.0.1", parts.port or 443, socket.AF_INET,
                                   socket.SOCK_DGRAM)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(infos[0][4])
            address = probe.getsockname()[0]
    except (OSError, IndexError):
        return []
    return [address] if not ipaddress.ip_address(address).is_unspecified else []


def interface_of(address: str) -> str | None:
    """The network interface that holds ``address`` (None if none here does)."""
    siocgifaddr = 0x8915
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            try:
                packed = fcntl.ioctl(s.fileno(), siocgifaddr, struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue
            if socket.inet_ntoa(packed[20:24]) == address:
                return name
    return None


def transport_env(address: str) -> dict[str, str]:
    """Make gloo and NCCL use the interface of the LAN address: left alone, they pick the address the
    box's hostname resolves to, which is often loopback (127.0.1.1 on Debian), and the peers then
    dial themselves."""
    name = interface_of(address)
    return {"GLOO_SOCKET_IFNAME": name, "NCCL_SOCKET_IFNAME": name} if name else {}


def free_port(address: str) -> int:
    """A port free on ``address`` now, for torchrun's c10d store on node rank 0. (Another process could
    take it before torchrun binds it: the rendezvous then fails and the gang is retried.)"""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


async def publish(client: CoordinatorClient, lease: Lease, point: RendezvousPoint) -> None:
    """Node rank 0 tells the coordinator at once (its heartbeats go on carrying it, for a restart)."""
    await client.heartbeat(lease.task_id, HeartbeatRequest(epoch=lease.epoch, rendezvous=point), timeout=10.0)


async def wait_for_rank0(client: CoordinatorClient, lease: Lease,
                         stopped: Callable[[], bool]) -> RendezvousPoint | None:
    """Ask until the coordinator relays rank 0's rendezvous; None if the run was stopped meanwhile.
    Bounded by the lease: a lost lease raises LeaseLost from the heartbeat."""
    while not stopped():
        resp = await client.heartbeat(lease.task_id, HeartbeatRequest(epoch=lease.epoch), timeout=10.0)
        if resp.rendezvous is not None:
            return resp.rendezvous
        if resp.cancel:
            return None
        await asyncio.sleep(WAIT_POLL_S)
    return None


async def gang_rendezvous(client: CoordinatorClient, lease: Lease, address: str, own: RendezvousPoint | None,
                          say: Callable[[str], None], stopped: Callable[[], bool]) -> Rendezvous:
    """Node rank 0 (``own``: its free port on ``address``) publishes where its ranks listen; the other
    members wait until a heartbeat reply relays it. LeaseLost if the gang was lost meanwhile."""
    gang = lease.gang
    assert gang is not None
    if own is not None:
        await publish(client, lease, own)
        point: RendezvousPoint | None = own
        say(f"[mloc] node rank 0 of {gang.nodes} (network {gang.network}): ranks meet at "
            f"{address}:{own.master_port}\n")
    else:
        say(f"[mloc] node rank {gang.node_rank} of {gang.nodes}: waiting for the gang's rank 0 "
            f"(agent {gang.members[0]}) to publish its rendezvous\n")
        point = await wait_for_rank0(client, lease, stopped)
        if point is not None:
            say(f"[mloc] rank 0 is at {point.master_addr}:{point.master_port}\n")
    if point is None:  # stopped while waiting: the task starts and is stopped at once
        return Rendezvous(nnodes=gang.nodes, node_rank=gang.node_rank)
    return Rendezvous(nnodes=gang.nodes, node_rank=gang.node_rank, master_addr=point.master_addr,
                      master_port=point.master_port)

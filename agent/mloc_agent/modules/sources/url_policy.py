"""Which URLs a task may make its agent fetch: the one check every task-named URL passes first.

A task's URL runs on the agent's network, behind its firewall. Fetched for anyone who may submit a
task, a URL to loopback, link-local (cloud metadata at 169.254.169.254), private or other non-global
addresses would read what only the agent's host or network should reach, and one to the coordinator
would call it from the agent's address (as an admin where loopback is trusted). So each URL's host
is resolved here, every address it resolves to must be public, and the coordinator's own host and
port are refused. ``MLOC_ALLOW_PRIVATE_URLS=true`` on the agent lifts the first rule, never the
second. The downloader (sources/downloads.py) checks every redirect again and connects to an
address checked here, so a name that resolves differently a moment later gains nothing.

URLs the coordinator hands the agent (presigned uploads, checkpoints, other tasks' outputs) are
not task-named: the agent fetches them itself (mloc_agent/sources.py, uploads.py), never through
this check. Stdlib only: the vLLM runtime imports it too.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from mloc_agent.modules.errors import TransientError, UrlRefused

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
SETTING = "MLOC_ALLOW_PRIVATE_URLS"
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def shown_url(url: str) -> str:
    """The URL without its query: a presigned signature must not land in a task's error."""
    return url.split("?", 1)[0]


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries and reaches (mapped, 6to4, NAT64, Teredo, compatible)."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64 or 1 < int(ip) < 2**32:  # NAT64, or the deprecated IPv4-compatible ::a.b.c.d
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def non_public_kind(ip: Address) -> str | None:
    """Why ``ip`` is not a public address (``loopback``, ``private``...), or None when it is."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_ipv4(ip)
        if inner is not None:
            return non_public_kind(inner)
    for kind in ("loopback", "link_local", "private", "multicast", "reserved", "unspecified"):
        if getattr(ip, f"is_{kind}"):
            return kind.replace("_", "-")
    return None if ip.is_global else "non-global"


def _is_local(ip: Address) -> bool:
    """An address that reaches this very host: loopback, or the unspecified 0.0.0.0 / ::."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_unspecified


def _default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


def resolve(host: str, port: int) -> list[Address]:
    """Every address ``host`` resolves to, in the resolver's order (the order a connection tries them)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[Address] = []
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])  # a link-local v6 carries a %zone
        if ip not in addresses:
            addresses.append(ip)
    return addresses


def _this_host() -> set[Address]:
    """This host's own addresses: a coordinator on loopback may listen on them too (0.0.0.0)."""
    try:
        return set(resolve(socket.gethostname(), 0))
    except OSError:
        return set()


@dataclass(frozen=True)
class UrlPolicy:
    """The agent's rule for task URLs, from its settings (TaskContext.from_env builds it)."""

    allow_private: bool = False  # MLOC_ALLOW_PRIVATE_URLS
    coordinator_url: str | None = None  # never fetched for a task, whatever allow_private says

    def check(self, url: str, field: str) -> list[Address]:
        """The addresses ``url``'s host resolves to, once each one is allowed; UrlRefused otherwise."""
        shown = shown_url(url)
        parts = urlsplit(url)
        try:
            port = parts.port or _default_port(parts.scheme)
        except ValueError:
            raise UrlRefused(f"{field}: {shown} has no valid port") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UrlRefused(f"{field}: {shown}: only http(s) URLs with a host can be fetched")
        try:
            addresses = resolve(parts.hostname, port)
        except OSError as exc:  # no answer from the resolver may pass; the next attempt asks again
            raise TransientError(f"{field}: cannot resolve the host of {shown} ({exc})") from exc
        if self._is_coordinator(parts.hostname, port, addresses):
            raise UrlRefused(f"{field}: {shown} is the coordinator's address: a task may not make its agent call "
                             f"the coordinator ({SETTING} does not change this)")
        if not self.allow_private:
            for ip in addresses:
                kind = non_public_kind(ip)
                if kind is not None:
                    raise UrlRefused(f"{field}: {shown} resolves to {ip}, a {kind} address: this agent fetches only "
                                     f"public addresses for tasks (its operator may allow more: {SETTING}=true)")
        return addresses

    def _is_coordinator(self, host: str, port: int, addresses: list[Address]) -> bool:
        if not self.coordinator_url:
            return False
        theirs = urlsplit(self.coordinator_url)
        if not theirs.hostname or port != (theirs.port or _default_port(theirs.scheme)):
            return False
        if host.rstrip(".").lower() == theirs.hostname.rstrip(".").lower():
            return True
        try:
            coordinator = set(resolve(theirs.hostname, port))
        except OSError:
            coordinator = set()
        if coordinator & set(addresses):
            return True
        if not any(_is_local(ip) for ip in coordinator):
            return False
        return any(_is_local(ip) or ip in _this_host() for ip in addresses)

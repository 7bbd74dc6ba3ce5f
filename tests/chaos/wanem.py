"""A WAN emulator for kernels without ``sch_netem``: delays, drops and reorders forwarded packets.

This machine's kernel (and CI's, the same kind) is built without netem (CONFIG_NET_SCH_NETEM is
not set and there are no loadable modules), but it has NFQUEUE. The router's iptables sends each
forwarded packet to a netfilter queue; this process, in the router's namespace, holds each one
for ``delay ± jitter`` and then lets the kernel forward it (or drops it with probability ``loss``);
a fraction ``reorder`` of the packets is let through 10 ms early, overtaking those just before it
(netem's ``reorder``). Packets are released in order of their due time.
The kernel keeps the packets; only their verdicts pass through here (copy mode META), so it is
cheap enough for the few hundred packets a second of the chaos tests.

Pure Python over a netlink socket (the nfnetlink_queue protocol), no library needed:
    python wanem.py --queue 7 --delay-ms 100 --jitter-ms 1 --loss 0.02 --reorder 0.05 --stats s.json
Stops on SIGTERM, releases what it holds, and writes its counts to ``--stats``.
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import select
import signal
import socket
import struct
import sys
import time
from pathlib import Path

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_NO_ENOBUFS = 5
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR = 2
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG = 0, 1, 2
NFQA_PACKET_HDR, NFQA_VERDICT_HDR = 1, 2
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN = 1, 2, 3
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NF_DROP, NF_ACCEPT = 0, 1
REORDER_LEAD_S = 0.010


def _attr(kind: int, data: bytes) -> bytes:
    size = 4 + len(data)
    return struct.pack("=HH", size, kind) + data + b"\0" * (-size % 4)


class NfQueue:
    """One bound netfilter queue: receive packet ids, send verdicts."""

    def __init__(self, num: int) -> None:
        self.num = num
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.setsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 1)
        self.sock.bind((0, 0))
        self._seq = 0
        self._config(_attr(NFQA_CFG_CMD, struct.pack("!BBH", NFQNL_CFG_CMD_BIND, 0, socket.AF_INET)))
        self._config(_attr(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META))
                     + _attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", 16384)))

    def _send(self, msg: int, flags: int, payload: bytes) -> None:
        self._seq += 1
        body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(self.num)) + payload
        header = struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | msg, flags, self._seq, 0)
        self.sock.send(header + body)

    def _config(self, attrs: bytes) -> None:
        self._send(NFQNL_MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, attrs)
        data = self.sock.recv(65536)
        _length, kind, _flags, _seq, _pid = struct.unpack_from("=IHHII", data)
        if kind == NLMSG_ERROR:
            (errno,) = struct.unpack_from("=i", data, 16)
            if errno:
                raise OSError(-errno, f"nfqueue config of queue {self.num} refused")

    def verdict(self, packet_id: int, verdict: int) -> None:
        self._send(NFQNL_MSG_VERDICT, NLM_F_REQUEST, _attr(NFQA_VERDICT_HDR, struct.pack("!II", verdict, packet_id)))

    def receive(self) -> list[int]:
        """The ids of the packets in one read (several netlink messages may arrive together)."""
        data = self.sock.recv(1 << 20)
        ids = []
        offset = 0
        while offset + 16 <= len(data):
            length, kind, _flags, _seq, _pid = struct.unpack_from("=IHHII", data, offset)
            if length < 16:
                break
            if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
                pos, end = offset + 20, offset + length
                while pos + 4 <= end:
                    alen, atype = struct.unpack_from("=HH", data, pos)
                    if alen < 4:
                        break
                    if atype & 0x3FFF == NFQA_PACKET_HDR:
                        ids.append(struct.unpack_from("!I", data, pos + 4)[0])
                        break
                    pos += (alen + 3) & ~3
            offset += (length + 3) & ~3
        return ids


def run(queue: NfQueue, delay_s: float, jitter_s: float, loss: float, reorder: float,
        seed: int | None) -> dict[str, float]:
    rng = random.Random(seed)
    held: list[tuple[float, int, int]] = []  # (due, arrival order, packet id)
    stopping = False
    counts = {"packets": 0, "dropped": 0, "reordered": 0, "delay_sum_s": 0.0}
    arrived_at: dict[int, float] = {}
    last_released = -1
    last_due = 0.0

    def stop(*_args: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    order = 0
    while not stopping:
        now = time.monotonic()
        timeout = max(0.0, held[0][0] - now) if held else 0.2
        readable, _, _ = select.select([queue.sock], [], [], min(timeout, 0.2))
        if readable:
            now = time.monotonic()
            for packet_id in queue.receive():
                counts["packets"] += 1
                if rng.random() < loss:
                    counts["dropped"] += 1
                    queue.verdict(packet_id, NF_DROP)
                    continue
                order += 1
                arrived_at[order] = now
                due = now + rng.uniform(delay_s - jitter_s, delay_s + jitter_s)
                if rng.random() < reorder:
                    due -= REORDER_LEAD_S  # overtakes the packets of the last 10 ms
                else:
                    due = last_due = max(due, last_due)  # jitter alone keeps the order (netem's tfifo)
                heapq.heappush(held, (due, order, packet_id))
        now = time.monotonic()
        while held and held[0][0] <= now:
            _due, seq, packet_id = heapq.heappop(held)
            queue.verdict(packet_id, NF_ACCEPT)
            counts["delay_sum_s"] += now - arrived_at.pop(seq)
            if seq < last_released:
                counts["reordered"] += 1
            last_released = max(last_released, seq)
    for _due, _seq, packet_id in held:  # the rules are gone by now: let the stragglers through
        queue.verdict(packet_id, NF_ACCEPT)
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--queue", type=int, required=True)
    p.add_argument("--delay-ms", type=float, default=100.0)
    p.add_argument("--jitter-ms", type=float, default=1.0)
    p.add_argument("--loss", type=float, default=0.02)
    p.add_argument("--reorder", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stats", type=Path, required=True)
    p.add_argument("--ready", type=Path, help="a file written once the queue is bound")
    args = p.parse_args(argv)
    queue = NfQueue(args.queue)
    if args.ready:
        args.ready.write_text("bound\n")
    counts = run(queue, args.delay_ms / 1000, args.jitter_ms / 1000, args.loss, args.reorder, args.seed)
    args.stats.write_text(json.dumps(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Streaming a task's stdout/stderr to the coordinator as numbered chunks.

Chunks are numbered per attempt and the coordinator stores them idempotently, so a batch whose
reply was lost is simply sent again. The buffer is bounded: during a long outage the oldest
chunks are dropped (and a note says so) rather than the agent running out of memory.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging

from mloc_shared.errors import MlocError
from mloc_shared.protocol import LogBatch, LogChunk

from mloc_agent.client import CoordinatorClient
from mloc_agent.retries import Backoff, retryable
from mloc_agent.task_secrets import Redactor

log = logging.getLogger(__name__)
MAX_CHUNK = 64 * 1024
MAX_BATCH_BYTES = 512 * 1024
MAX_BUFFER_BYTES = 16 * 1024 * 1024


class LogStreamer:
    def __init__(self, client: CoordinatorClient, task_id: str, epoch: int, flush_s: float) -> None:
        self.client = client
        self.task_id = task_id
        self.epoch = epoch
        self.flush_s = flush_s
        self.seq = 0
        self.pending: list[LogChunk] = []
        self.buffered = 0
        self.dropped = 0
        self.tail: dict[str, str] = {"stdout": "", "stderr": ""}
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._started = False
        self.lost = False
        self.redactor = Redactor()  # the task's secrets never leave the box in its output
        self._decoders: dict[str, codecs.IncrementalDecoder] = {}

    def start(self) -> None:
        """Start sending. Lazily: the sender task starts with the first output (many tasks print nothing)."""
        self._started = True

    def _ensure_sender(self) -> None:
        if self._task is None and self._started:
            self._task = asyncio.create_task(self._run(), name=f"logs-{self.task_id}")

    def write(self, stream: str, text: str) -> None:
        if not text:
            return
        if stream in self.tail:
            self.tail[stream] = (self.tail[stream] + text)[-4000:]
        for i in range(0, len(text), MAX_CHUNK):
            part = text[i : i + MAX_CHUNK]
            self.pending.append(LogChunk(seq=self.seq, stream=stream, data=part))  # type: ignore[arg-type]
            self.seq += 1
            self.buffered += len(part)
        self._ensure_sender()
        while self.buffered > MAX_BUFFER_BYTES and len(self.pending) > 1:
            old = self.pending.pop(0)
            self.buffered -= len(old.data)
            self.dropped += 1
        if self.buffered >= MAX_BATCH_BYTES:
            self._wake.set()

    def feed(self, stream: str, data: bytes) -> None:
        """Raw bytes a task wrote to ``stream``; decoded incrementally (a character split across reads
        stays whole) and redacted before it is buffered."""
        decoder = self._decoders.get(stream)
        if decoder is None:
            decoder = self._decoders[stream] = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.write(stream, self.redactor.feed(stream, decoder.decode(data)))

    def feed_eof(self, stream: str) -> None:
        decoder = self._decoders.pop(stream, None)
        tail = decoder.decode(b"", final=True) if decoder is not None else ""
        self.write(stream, self.redactor.feed(stream, tail, final=True))

    async def _send_some(self) -> None:
        batch, size = [], 0
        for chunk in self.pending:
            if batch and (size + len(chunk.data) > MAX_BATCH_BYTES or len(batch) >= 500):
                break
            batch.append(chunk)
            size += len(chunk.data)
        if self.dropped:
            note = f"[mloc] {self.dropped} log chunk(s) dropped while the coordinator was unreachable\n"
            batch.append(LogChunk(seq=self.seq, stream="system", data=note))
            self.seq += 1
            self.dropped = 0
        await self.client.logs(self.task_id, LogBatch(epoch=self.epoch, chunks=batch))
        sent = {c.seq for c in batch}
        self.pending = [c for c in self.pending if c.seq not in sent]
        self.buffered = sum(len(c.data) for c in self.pending)

    async def _run(self) -> None:
        backoff = Backoff(0.2, 10.0)
        while True:
            if not self.pending:
                if self._closing:
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.flush_s)
                self._wake.clear()
                continue
            try:
                await self._send_some()
                backoff.reset()
            except MlocError as exc:
                if not retryable(exc):
                    log.warning("task %s: coordinator refused logs (%s); dropping them", self.task_id, exc)
                    self.lost = True
                    self.pending.clear()
                    return
                await asyncio.sleep(backoff.next_s())  # chunks are numbered: a resent batch is stored once
            else:
                if not self._closing:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self.flush_s)
                    self._wake.clear()

    async def close(self, timeout: float = 30.0) -> None:
        """Send what is left (retrying) before the completion goes out, so logs are complete."""
        self._closing = True
        self._wake.set()
        if self.pending:
            self._ensure_sender()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout)
            except TimeoutError:
                log.warning("task %s: gave up sending %d log chunk(s)", self.task_id, len(self.pending))

"""Small, bounded load generation for tests: open-loop attacks and closed-loop saturation, on 127.0.0.1 only.

A lean HTTP/1.1 client on asyncio streams (keep-alive, one request per connection at a time) instead of httpx:
at a few hundred requests in flight httpx's own pool bookkeeping costs seconds, which would be measured as the
server's latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import math
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

# One request type for the benchmarks and the tests; the tests import it from here.
from ops.perf.closedloop import Call as Call
from serving.looplag import LoopLag

# The CI versions are short. `CHAOS_SCALE` (e.g. 10) runs the long versions: more fuzz cases, longer attacks.
# `CHAOS_REPORT_DIR` collects each test's figures as JSON, for a chaos report.
SCALE = float(os.environ.get("CHAOS_SCALE", "1"))
IDLE_REUSE_S = 2.0


def record(name: str, figures: dict[str, object]) -> None:
    """Write a test's figures to $CHAOS_REPORT_DIR/<name>.json when a report is being collected."""
    folder = os.environ.get("CHAOS_REPORT_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / f"{name}.json").write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")


def report_timing(name: str, seconds: float, target_s: float, what: str) -> None:
    """A timing the tests measure but do not assert (a slower or busier machine would miss a bound that holds here):
    recorded for the chaos report, which states it against `target_s` as met or missed."""
    record(f"timing_{name}", {"seconds": round(seconds, 4), "target_s": target_s, "what": what})


@dataclass(frozen=True)
class Shot:
    """One request's outcome: status (0 = transport error or client timeout), seconds, Retry-After, error code,
    for status 0 the exception's name (ConnectionRefusedError: never accepted; ClosedBeforeAnswer: the server closed
    the connection without reading or answering; others: cut off or timed out), and when its bytes were written
    (time.monotonic(); None if never written)."""

    status: int
    seconds: float
    retry_after: str | None = None
    code: str | None = None
    error: str | None = None
    written_at: float | None = None


class ClosedBeforeAnswer(ConnectionError):
    """The server closed the connection before a single byte of the answer (a keep-alive close race, or a drain)."""


class Http11Client:
    """Keep-alive connections to one loopback server; a request takes an idle connection or opens one."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        assert parts.hostname == "127.0.0.1", "load tests target loopback only"
        self.host, self.port = parts.hostname, parts.port or 80
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []

    async def warm(self, connections: int) -> None:
        for _ in range(connections):
            self.idle.append((*await asyncio.open_connection(self.host, self.port), time.monotonic()))

    def _take_idle(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        while self.idle:
            reader, writer, since = self.idle.pop()
            if time.monotonic() - since < IDLE_REUSE_S:
                return reader, writer
            writer.close()  # the server may be closing it (uvicorn's keep-alive timeout is 5 s): do not race it
        return None

    async def send(self, call: Call, timeout_s: float) -> Shot:
        start = time.monotonic()
        connection = self._take_idle()
        written: list[float] = []
        try:
            return await asyncio.wait_for(self._exchange(call, connection, start, written), timeout_s)
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
            return Shot(0, time.monotonic() - start, error=type(exc).__name__, written_at=next(iter(written), None))

    async def _exchange(
        self,
        call: Call,
        connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None,
        start: float,
        written: list[float],
    ) -> Shot:
        reader, writer = connection or await asyncio.open_connection(self.host, self.port)
        try:
            head = (
                f"{call.method} {call.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Content-Type: {call.content_type}\r\nContent-Length: {len(call.body)}\r\n"
                + "".join(f"{name}: {value}\r\n" for name, value in call.headers)
                + "\r\n"
            )
            writer.write(head.encode() + call.body)
            written.append(time.monotonic())
            status_line = await reader.readline()
            if not status_line:
                raise ClosedBeforeAnswer
            status = int(status_line.split()[1])
            headers: dict[str, str] = {}
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
        except BaseException:
            writer.close()
            raise
        seconds = time.monotonic() - start
        if headers.get("connection", "").lower() == "close":
            writer.close()
        else:
            self.idle.append((reader, writer, time.monotonic()))
        code = None
        if status != 200 and headers.get("content-type", "").startswith("application/json"):
            with contextlib.suppress(ValueError, AttributeError, KeyError, TypeError):
                document = json.loads(body)
                error = document["error"]  # ours: {"code", "message"}; the v2 protocol's: a string, "code" beside it
                code = error["code"] if isinstance(error, dict) else document["code"]
        return Shot(status, seconds, headers.get("retry-after"), code, written_at=written[0])

    def close(self) -> None:
        for _, writer, _ in self.idle:
            writer.close()
        self.idle.clear()


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """Keep the load generator's own heap out of its garbage collector while it measures: pytest's process holds
    torch, hypothesis and schemathesis, and one full collection stops its loop for ~200 ms, which every request in
    flight would count as the server's latency. (timeit turns the collector off for the same reason.)"""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


async def open_loop(
    base_url: str,
    call: Call,
    rate: float,
    seconds: float,
    timeout_s: float = 30.0,
    lag: LoopLag | None = None,
) -> list[Shot]:
    """Send at a constant `rate` for `seconds`, whatever the answers (new requests do not wait for old ones).
    `lag`, if given, measures the load generator's own event loop meanwhile (its worst lateness is in `lag.peak_s`):
    a late generator inflates every latency it measures."""
    client = Http11Client(base_url)
    await client.warm(min(64, int(rate)))
    ticker = asyncio.ensure_future(lag.run()) if lag is not None else None
    try:
        with frozen_heap():
            start = time.monotonic()
            tasks = []
            for i in range(int(rate * seconds)):
                tasks.append(asyncio.ensure_future(client.send(call, timeout_s)))
                await asyncio.sleep(max(0.0, start + (i + 1) / rate - time.monotonic()))
            return list(await asyncio.gather(*tasks))
    finally:
        if ticker is not None:
            ticker.cancel()
        client.close()


async def saturation(base_url: str, call: Call, concurrency: int, seconds: float) -> float:
    """Successful requests per second with `concurrency` clients that send again as soon as answered."""
    client = Http11Client(base_url)
    done = 0
    stop = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < stop:
            if (await client.send(call, 30.0)).status == 200:
                done += 1

    start = time.monotonic()
    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        client.close()
    return done / (time.monotonic() - start)


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)] if ordered else 0.0


def statuses(shots: list[Shot]) -> Counter[int]:
    return Counter(s.status for s in shots)

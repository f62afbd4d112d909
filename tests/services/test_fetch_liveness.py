"""The image URL fetcher stays alive: bounded concurrency, a total deadline, and a pool that cannot wedge.

httpcore 1.0.x leaks a pool slot for good when a request waiting in its pool is cancelled (or hits its pool timeout)
just as a fresh connection is assigned to it (encode/httpcore#1093). These tests use real loopback origins.
"""

from __future__ import annotations

import asyncio
import http.server
import random
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from loadkit import report_timing
from serving.errors import DeadlineExceeded, Overloaded
from serving.fetch import SafeFetcher

BODY = b"x" * 64


class SlowOrigin(http.server.BaseHTTPRequestHandler):
    """HTTP/1.0 (a new connection per request, as in the field reports); /slow waits, /trickle drips its body."""

    def do_GET(self) -> None:
        if self.path == "/slow":
            time.sleep(0.3)
        if self.path == "/trickle":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            for _ in range(1000):
                try:
                    self.wfile.write(b"t")
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(0.1)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def slow_origin() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SlowOrigin)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def fetcher(**kwargs: object) -> SafeFetcher:
    options: dict[str, object] = {"max_bytes": 4096, "allowed_hosts": frozenset({"127.0.0.1:*"}), **kwargs}
    return SafeFetcher(**options)  # type: ignore[arg-type]


async def test_the_httpcore_defect_is_real_so_the_workaround_is_needed(slow_origin: str) -> None:
    """Plain httpx: cancel a request queued in a 1-connection pool as a new connection is handed to it. The pool
    then holds a CONNECTING connection nobody owns, and every later request times out on the pool. When this test
    fails, httpcore has fixed encode/httpcore#1093 and the fetcher's workaround may be simplified."""
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=1), timeout=httpx.Timeout(1.0)) as client:
        queued: list[asyncio.Task[httpx.Response]] = []
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, lambda: queued.append(asyncio.ensure_future(client.get(f"{slow_origin}/fast"))))
        await client.get(f"{slow_origin}/slow")  # on return, the queued request was just given a new connection
        queued[0].cancel()  # ...and is cancelled before it could use it
        await asyncio.gather(*queued, return_exceptions=True)
        with pytest.raises(httpx.PoolTimeout):
            await client.get(f"{slow_origin}/fast")


async def test_cancelled_callers_never_wedge_the_fetcher(slow_origin: str) -> None:
    rng = random.Random(1093)
    async with fetcher(max_concurrency=4) as f:
        for _ in range(30):
            tasks = [
                asyncio.ensure_future(f.fetch(f"{slow_origin}/{rng.choice(['slow', 'fast'])}", time.monotonic() + 5))
                for _ in range(rng.randrange(1, 9))
            ]
            await asyncio.sleep(rng.uniform(0, 0.35))
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0.5)  # let abandoned fetches finish (they hold their slots until they do)
        start = time.monotonic()
        assert await f.fetch(f"{slow_origin}/fast", time.monotonic() + 5) == BODY  # a wedged pool fails this
        report_timing("fetch_after_cancellations", time.monotonic() - start, 1.0, "a fetch after 30 cancelled rounds")
        assert f.inflight == 0


async def test_a_lost_pool_slot_is_healed_by_replacing_the_client(slow_origin: str) -> None:
    async with fetcher(max_concurrency=1) as f:
        holder = f._holder
        assert holder is not None
        client = holder.client
        # Wedge the fetcher's own client (a pool of 1) the way httpcore#1093 does: this is the failure being healed.
        queued: list[asyncio.Task[httpx.Response]] = []
        asyncio.get_running_loop().call_later(
            0.05, lambda: queued.append(asyncio.ensure_future(client.get(f"{slow_origin}/fast")))
        )
        await client.get(f"{slow_origin}/slow")
        queued[0].cancel()
        await asyncio.gather(*queued, return_exceptions=True)
        start = time.monotonic()
        assert await f.fetch(f"{slow_origin}/fast", time.monotonic() + 5) == BODY
        report_timing("fetch_pool_healed", time.monotonic() - start, 2.5, "a fetch through a wedged pool, healed")
        assert f.client_resets == 1
        assert await f.fetch(f"{slow_origin}/fast", time.monotonic() + 5) == BODY  # and the new client is healthy
        assert f.client_resets == 1


async def test_fetch_concurrency_is_bounded_with_a_fast_503(slow_origin: str) -> None:
    async with fetcher(max_concurrency=2, retry_after_s=3) as f:
        busy = [asyncio.ensure_future(f.fetch(f"{slow_origin}/slow", time.monotonic() + 5)) for _ in range(2)]
        await asyncio.sleep(0.05)
        with pytest.raises(Overloaded) as refused:
            await f.fetch(f"{slow_origin}/fast", time.monotonic() + 5)
        assert not any(task.done() for task in busy), "the refusal waited for a slot"
        assert refused.value.status_code == 503
        assert refused.value.headers == {"Retry-After": "3"}
        assert await asyncio.gather(*busy) == [BODY, BODY]


async def test_a_trickling_upstream_is_cut_at_the_deadline(slow_origin: str) -> None:
    async with fetcher(read_timeout_s=5.0) as f:
        start = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            await f.fetch(f"{slow_origin}/trickle", time.monotonic() + 1.0)
        elapsed = time.monotonic() - start
        report_timing("fetch_trickle_cut", elapsed, 1.3, "a trickling upstream cut at a 1 s deadline")
        assert 0.9 < elapsed < 30, elapsed  # the deadline ended it; uncut, the trickle lasts 100 s
        await asyncio.sleep(0.3)  # the abandoned fetch ends itself (the deadline is checked between reads)
        assert f.inflight == 0

"""Overload and shutdown on real processes: a full queue answers 503 + Retry-After at once; SIGTERM loses nothing."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

import httpx

from image_classifier.demo import render_sample
from loadkit import report_timing
from testkit import Server, WorkCounts, encode, scrape

JPEG = {"content-type": "image/jpeg"}


async def test_full_queue_rejects_fast_with_retry_after(
    image_server_factory: Callable[..., AbstractContextManager[Server]],
) -> None:
    # A queue of 4 and batches of up to 8 that wait 1.5 s to fill: at most 4 of 40 requests are admitted, and their
    # batch cannot fill, so it is served no sooner than 1.5 s after it began; the other 36 must bounce before that.
    with image_server_factory(MAX_BATCH_SIZE="8", MAX_WAIT_MS="1500", QUEUE_CAPACITY="4") as server:
        image = encode(render_sample("circle", 1))
        before = await asyncio.to_thread(scrape, server.url)
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:

            async def one() -> tuple[int, float, str | None]:
                response = await client.post("/v1/predict", content=image, headers=JPEG)
                return response.status_code, time.monotonic(), response.headers.get("retry-after")

            started = time.monotonic()
            results = await asyncio.gather(*(one() for _ in range(40)))
        work = WorkCounts.between("image_classifier", before, await asyncio.to_thread(scrape, server.url))
    rejected = [r for r in results if r[0] == 503]
    served = [r for r in results if r[0] == 200]
    assert rejected, "expected some requests to be refused"
    assert served, "the queued requests must still be served"
    assert len(rejected) + len(served) == 40
    assert all(retry == "1" for _, _, retry in rejected)
    report_timing("queue_full_refusal", max(at for _, at, _ in rejected) - started, 1.0, "the last of 40 refusals")
    # Refused at once: every refusal was answered before the first batch (which waits up to 1.5 s to fill) was served.
    assert max(at for _, at, _ in rejected) < min(at for _, at, _ in served), "a refusal waited for the queue"
    assert work.refused == {"queue_full": len(rejected)}, work
    assert work.stage("admitted") == work.stage("body") == work.stage("preprocess") == len(served), work


async def test_request_past_its_deadline_gets_504(
    image_server_factory: Callable[..., AbstractContextManager[Server]],
) -> None:
    with image_server_factory(MAX_BATCH_SIZE="64", MAX_WAIT_MS="3000", REQUEST_TIMEOUT_S="0.5") as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            response = await client.post("/v1/predict", content=encode(render_sample("cross", 2)), headers=JPEG)
            assert response.status_code == 504
            assert response.json()["error"]["code"] == "deadline_exceeded"
            assert (await client.get("/readyz")).status_code == 200


async def test_sigterm_finishes_accepted_requests_refuses_new_ones_and_exits_0(
    image_server_factory: Callable[..., AbstractContextManager[Server]],
) -> None:
    # Batches wait up to 2.5 s to fill, so requests are in flight when SIGTERM arrives.
    with image_server_factory(MAX_BATCH_SIZE="32", MAX_WAIT_MS="2500", DRAIN_TIMEOUT_S="20") as server:
        labels = ["circle", "square", "triangle", "cross"] * 2
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            inflight = [
                asyncio.ensure_future(
                    client.post("/v1/predict", content=encode(render_sample(lbl, 300 + i)), headers=JPEG)
                )
                for i, lbl in enumerate(labels)
            ]
            await asyncio.sleep(0.8)
            server.process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            ready = await client.get("/readyz")
            refused = await client.post("/v1/predict", content=encode(render_sample("circle", 1)), headers=JPEG)
            finished = await asyncio.gather(*inflight)
        exit_code = await asyncio.to_thread(server.process.wait, 30)
    assert ready.status_code == 503
    assert ready.json() == {"status": "draining"}
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "draining"
    assert refused.headers["retry-after"] == "1"
    assert [r.status_code for r in finished] == [200] * len(labels), [r.text for r in finished]
    # Label accuracy is tested elsewhere; here every accepted request must come back as a full prediction.
    assert all(r.json()["predictions"][0]["label"] in labels for r in finished)
    assert exit_code == 0
    assert "drained after" in server.log()


async def test_a_second_sigterm_stops_waiting_but_cancels_nothing(
    image_server_factory: Callable[..., AbstractContextManager[Server]],
) -> None:
    with image_server_factory(MAX_BATCH_SIZE="32", MAX_WAIT_MS="2500", DRAIN_TIMEOUT_S="20") as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            inflight = asyncio.ensure_future(
                client.post("/v1/predict", content=encode(render_sample("square", 5)), headers=JPEG)
            )
            await asyncio.sleep(0.8)
            server.process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            server.process.send_signal(signal.SIGTERM)
            finished = await inflight
        exit_code = await asyncio.to_thread(server.process.wait, 30)
    assert finished.status_code == 200, finished.text
    assert exit_code == 0
    assert '"level": "ERROR"' not in server.log()

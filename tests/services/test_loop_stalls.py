"""The event loop does not stall: the loaded heap is frozen out of the collector's reach, and the loop's lateness is
measured and exported (it is what showed the 190 ms full collections that made the 503s at 2x saturation slow)."""

from __future__ import annotations

import asyncio
import gc
import time

import httpx

from serving.app import freeze_the_loaded_heap
from serving.looplag import LoopLag
from testkit import Server


def test_freezing_takes_the_loaded_heap_out_of_every_later_collection() -> None:
    import torch  # noqa: F401 - a heap as large as a service's: torch's modules are most of it

    tracked_before = len(gc.get_objects())
    freeze_the_loaded_heap()
    try:
        frozen = gc.get_freeze_count()
        still_tracked = len(gc.get_objects())  # what a full collection would walk now
        assert frozen >= tracked_before * 0.9, (frozen, tracked_before)
        assert still_tracked < tracked_before * 0.05, (still_tracked, tracked_before)
    finally:
        gc.unfreeze()


async def test_loop_lag_sees_a_blocked_loop_and_resets_when_read() -> None:
    lag = LoopLag(interval_s=0.005)
    ticker = asyncio.ensure_future(lag.run())
    try:
        await asyncio.sleep(0.02)  # the ticker is running
        time.sleep(0.2)  # noqa: ASYNC251 - blocking the loop is the point: as a full collection would
        await asyncio.sleep(0.02)  # the late tick fires
        assert lag.take_peak() >= 0.19
        assert lag.peak_s == 0.0
    finally:
        ticker.cancel()


def test_the_loop_lag_gauge_is_exported(image_service: Server) -> None:
    with httpx.Client(base_url=image_service.url, timeout=30) as client:
        lines = [line for line in client.get("/metrics").text.splitlines() if not line.startswith("#")]
    (gauge,) = [line for line in lines if line.startswith("image_classifier_event_loop_lag_seconds ")]
    assert 0.0 <= float(gauge.split()[1]) < 60.0

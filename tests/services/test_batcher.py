"""The micro-batcher on its own: batch formation, wait bound, overload and deadlines."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import pytest

from loadkit import report_timing
from serving.batcher import MicroBatcher
from serving.errors import DeadlineExceeded, QueueFull, UnprocessableInput
from serving.metrics import ServiceMetrics


class Recorder:
    """A batch function that doubles its inputs and records the batches it saw; optionally slow."""

    def __init__(self, delay_s: float = 0.0, gate: threading.Event | None = None) -> None:
        self.batches: list[list[int]] = []
        self.delay_s = delay_s
        self.gate = gate

    def __call__(self, items: Sequence[int]) -> tuple[list[int], float, float]:
        if self.gate is not None:
            self.gate.wait(10)
        time.sleep(self.delay_s)
        self.batches.append(list(items))
        return [2 * i for i in items], self.delay_s, 0.0


def make(run: Recorder, **kwargs: float) -> MicroBatcher[int, int]:
    options = {"max_batch_size": 4, "max_wait_ms": 50.0, "capacity": 64, **kwargs}
    batcher: MicroBatcher[int, int] = MicroBatcher(
        run,
        max_batch_size=int(options["max_batch_size"]),
        max_wait_ms=options["max_wait_ms"],
        capacity=int(options["capacity"]),
        metrics=ServiceMetrics("test"),
    )
    batcher.start()
    return batcher


def far() -> float:
    return time.monotonic() + 30


async def test_concurrent_items_share_batches_and_keep_order() -> None:
    run = Recorder()
    batcher = make(run)
    try:
        results = await asyncio.gather(*(batcher.submit(i, far()) for i in range(10)))
    finally:
        batcher.stop()
    assert [out for out, _ in results] == [2 * i for i in range(10)]
    assert all(len(b) <= 4 for b in run.batches)
    assert len(run.batches) < 10, f"expected batching, got {run.batches}"
    assert max(t.batch_size for _, t in results) > 1


async def test_batch_size_one_turns_batching_off() -> None:
    run = Recorder()
    batcher = make(run, max_batch_size=1)
    try:
        await asyncio.gather(*(batcher.submit(i, far()) for i in range(6)))
    finally:
        batcher.stop()
    assert all(len(b) == 1 for b in run.batches)
    assert len(run.batches) == 6


async def test_a_lone_item_waits_at_most_max_wait() -> None:
    """Right after start (no gap to call the traffic sparse) a lone item waits out its window, then goes alone; it
    never waits for a batch to fill (which would be forever: nothing else arrives)."""
    window = 0.1
    batcher = make(Recorder(), max_wait_ms=window * 1000)
    try:
        start = time.monotonic()
        out, timings = await asyncio.wait_for(batcher.submit(21, far()), timeout=300 * window)
        elapsed = time.monotonic() - start
    finally:
        batcher.stop()
    report_timing("batcher_lone_item", elapsed, 2 * window, f"a lone item's wait with a {window * 1000:.0f} ms window")
    assert out == 42
    assert timings.batch_size == 1
    assert elapsed >= 0.9 * window  # it did wait for company, as long as the window


async def test_a_lone_item_in_sparse_traffic_is_dispatched_at_once() -> None:
    """Adaptive batching: an item that arrives more than a window after the one before it, with no admitted
    request still on its way (reservations), has nothing to wait for: an idle batcher runs it at once."""
    # A long window, so "at once" is told from "waited out the window" by orders of magnitude, not milliseconds.
    window = 2.0
    batcher = make(Recorder(), max_wait_ms=window * 1000)
    try:
        for value in (1, 2):
            await asyncio.sleep(window + 0.05)  # sparse: the previous arrival is more than a window ago
            start = time.monotonic()
            out, timings = await asyncio.wait_for(batcher.submit(value, far(), batcher.reserve()), timeout=window / 2)
            report_timing("batcher_sparse_item", time.monotonic() - start, 0.01, "a lone item in sparse traffic")
            assert (out, timings.batch_size) == (2 * value, 1)
    finally:
        batcher.stop()


async def test_the_window_still_holds_for_reserved_requests_on_their_way() -> None:
    """A request that reserved its slot but is still decoding keeps the batch open (up to max_wait), even in sparse
    traffic, so requests that arrive together are still batched together."""
    run = Recorder()
    batcher = make(run, max_wait_ms=1000.0)
    try:
        await asyncio.sleep(0.1)
        early, late = batcher.reserve(), batcher.reserve()
        first = asyncio.ensure_future(batcher.submit(1, far(), early))
        await asyncio.sleep(0.2)  # the second request is still "decoding"
        assert not first.done(), "the batcher dispatched while an admitted request was on its way"
        second = await batcher.submit(2, far(), late)
        (_, one), (_, two) = await first, second
    finally:
        batcher.stop()
    assert run.batches == [[1, 2]]
    assert one.batch_size == two.batch_size == 2


async def test_a_released_reservation_ends_the_wait() -> None:
    """A request refused after reserving (bad body, deadline) releases its slot: the lone item waiting for it goes."""
    window = 2.0
    batcher = make(Recorder(), max_wait_ms=window * 1000)
    try:
        await asyncio.sleep(window + 0.05)
        mine, doomed = batcher.reserve(), batcher.reserve()
        pending = asyncio.ensure_future(batcher.submit(5, far(), mine))
        await asyncio.sleep(0.1)
        assert not pending.done(), "the batcher dispatched while an admitted request was on its way"
        released = time.monotonic()
        doomed.release()
        # The window has 1.9 s left: an end within half of it is the release's doing, on any machine.
        out, timings = await asyncio.wait_for(pending, timeout=window / 2)
        report_timing("batcher_released_reservation", time.monotonic() - released, 0.01, "release to dispatch")
        assert (out, timings.batch_size) == (10, 1)
    finally:
        batcher.stop()


async def test_full_queue_is_refused_at_once_with_retry_after() -> None:
    gate = threading.Event()
    batcher = make(Recorder(gate=gate), max_batch_size=1, max_wait_ms=0.0, capacity=2)
    try:
        first = asyncio.ensure_future(batcher.submit(0, far()))  # taken by the worker, blocked on the gate
        await asyncio.sleep(0.1)
        queued = [asyncio.ensure_future(batcher.submit(i, far())) for i in (1, 2)]
        await asyncio.sleep(0.05)
        with pytest.raises(QueueFull) as refused:  # at once: the worker is still held, so a wait would never end
            await asyncio.wait_for(batcher.submit(3, far()), timeout=5)
        assert not gate.is_set()
        assert not first.done()
        assert refused.value.headers["Retry-After"] == "1"
        gate.set()
        assert [out for out, _ in await asyncio.gather(first, *queued)] == [0, 2, 4]
    finally:
        gate.set()
        batcher.stop()


async def test_expired_items_are_dropped_before_compute() -> None:
    gate = threading.Event()
    run = Recorder(gate=gate)
    batcher = make(run, max_batch_size=1, max_wait_ms=0.0)
    try:
        blocker = asyncio.ensure_future(batcher.submit(0, far()))
        await asyncio.sleep(0.1)
        with pytest.raises(DeadlineExceeded):
            await batcher.submit(99, time.monotonic() + 0.2)
        gate.set()
        await blocker
        await asyncio.sleep(0.2)
    finally:
        gate.set()
        batcher.stop()
    assert [99] not in run.batches, "an item past its deadline must not be computed"


async def test_a_failing_batch_fails_its_items_and_the_worker_survives() -> None:
    calls = {"n": 0}

    def flaky(items: Sequence[int]) -> tuple[list[int], float, float]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return list(items), 0.0, 0.0

    batcher: MicroBatcher[int, int] = MicroBatcher(
        flaky, max_batch_size=1, max_wait_ms=0, capacity=8, metrics=ServiceMetrics("t")
    )
    batcher.start()
    try:
        with pytest.raises(RuntimeError, match="boom"):
            await batcher.submit(1, far())
        out, _ = await batcher.submit(5, far())
    finally:
        batcher.stop()
    assert out == 5


async def test_one_bad_item_fails_only_itself_with_a_4xx() -> None:
    """The batch raises because of one item; its items are retried alone, so only the bad one fails (422)."""
    batches: list[list[int]] = []

    def poisoned(items: Sequence[int]) -> tuple[list[int], float, float]:
        batches.append(list(items))
        if 13 in items:
            raise TypeError("cannot handle 13")
        return [2 * i for i in items], 0.0, 0.0

    batcher: MicroBatcher[int, int] = MicroBatcher(
        poisoned, max_batch_size=8, max_wait_ms=200, capacity=64, metrics=ServiceMetrics("iso")
    )
    batcher.start()
    try:
        results = await asyncio.gather(*(batcher.submit(i, far()) for i in (1, 2, 13, 4, 5)), return_exceptions=True)
    finally:
        batcher.stop()
    assert [r[0] if isinstance(r, tuple) else r for r in results[:2] + results[3:]] == [2, 4, 8, 10]
    assert isinstance(results[2], UnprocessableInput)
    assert results[2].status_code == 422
    assert "13" not in results[2].message  # the client gets a fixed message; the log gets the detail
    assert batches[0] == [1, 2, 13, 4, 5], "the items must have shared a batch first"


async def test_when_every_item_fails_alone_the_model_is_at_fault() -> None:
    def broken(items: Sequence[int]) -> tuple[list[int], float, float]:
        raise RuntimeError("model fault")

    batcher: MicroBatcher[int, int] = MicroBatcher(
        broken, max_batch_size=4, max_wait_ms=100, capacity=8, metrics=ServiceMetrics("broken")
    )
    batcher.start()
    try:
        results = await asyncio.gather(*(batcher.submit(i, far()) for i in range(3)), return_exceptions=True)
    finally:
        batcher.stop()
    assert all(isinstance(r, RuntimeError) for r in results), results


async def test_reservations_count_against_the_queue_before_any_item_is_queued() -> None:
    gate = threading.Event()
    batcher = make(Recorder(gate=gate), max_batch_size=1, max_wait_ms=0.0, capacity=2)
    try:
        first, second = batcher.reserve(), batcher.reserve()
        with pytest.raises(QueueFull):
            batcher.reserve()  # two requests are still decoding: a third is refused before it does any work
        with pytest.raises(QueueFull):  # at once, while the worker is held
            await asyncio.wait_for(batcher.submit(9, far()), timeout=5)
        first.release()
        first.release()  # at most once
        gate.set()
        out, _ = await batcher.submit(3, far(), second)  # the promised slot becomes the item's
        assert out == 6
        with batcher.reserve(), batcher.reserve():
            pass  # both slots are free again: nothing leaked
    finally:
        gate.set()
        batcher.stop()

"""Dynamic micro-batching: a bounded queue drained by one inference thread, off the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from serving.errors import DeadlineExceeded, QueueFull, ServingError, UnprocessableInput
from serving.metrics import ServiceMetrics

log = logging.getLogger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")


@dataclass
class BatchTimings:
    """What one item spent in each stage, reported back to the client and to the metrics."""

    queue_wait_s: float = 0.0
    inference_s: float = 0.0
    postprocess_s: float = 0.0
    batch_size: int = 0


Settle = Callable[[Any, "BaseException | None"], None]
"""How an item's outcome reaches whoever waits for it: (result, None) or (None, error); called on the worker thread."""


@dataclass
class _Item(Generic[In, Out]):
    payload: In
    deadline: float
    settle: Settle
    abandoned: Callable[[], bool]  # True once nobody waits for the answer (the client left): skipped before compute
    enqueued: float = field(default_factory=time.monotonic)
    gap: float = 0.0  # seconds since the item before it arrived


BatchFn = Callable[[Sequence[In]], tuple[Sequence[Out], float, float]]
"""Runs one batch; returns (outputs in input order, inference seconds, postprocess seconds)."""


class MicroBatcher(Generic[In, Out]):
    """Collects items into batches of up to `max_batch_size`, waiting at most `max_wait_ms` after the first one.

    The wait is adaptive: a lone item goes at once, without waiting out the window, when nothing suggests another
    one is coming within it: no admitted request still holds a reservation (`reserve`: reading, fetching or
    decoding its item) and the item before it arrived more than a window earlier (sparse traffic, the common
    case). Under load, items arrive closer together than the window and batches form as before.

    `submit` never blocks: a full queue raises QueueFull at once. Items whose deadline passed are dropped before
    compute and fail with DeadlineExceeded. A single worker thread runs the model, so the event loop stays free.
    A batch that raises is retried one item at a time, so one bad item fails only itself (see `_execute`).
    """

    def __init__(
        self,
        run_batch: BatchFn[In, Out],
        *,
        max_batch_size: int,
        max_wait_ms: float,
        capacity: int,
        metrics: ServiceMetrics,
        retry_after_s: int = 1,
    ) -> None:
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.capacity = capacity
        self._metrics = metrics
        self._retry_after = str(retry_after_s)
        self._queue: deque[_Item[In, Out]] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._reserved = 0  # slots promised to requests still reading, fetching or decoding their item
        self._busy = False
        self._last_arrival = time.monotonic()
        self._thread: threading.Thread | None = None
        # Reservations held outside this process (serving.ipc: the fronts' admitted requests), for the lone-item rule.
        self.external_reserved: Callable[[], int] = lambda: 0

    # -- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._last_arrival = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="inference-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def depth(self) -> int:
        return len(self._queue)

    @property
    def idle(self) -> bool:
        with self._cond:
            return not self._queue and not self._busy

    # -- producer side (event loop) --------------------------------------------------------------------------
    def _refuse_if_full(self) -> None:
        if len(self._queue) + self._reserved >= self.capacity:
            self._metrics.rejected.labels("queue_full").inc()
            raise QueueFull(
                f"the inference queue is full ({self.capacity} items); retry later",
                headers={"Retry-After": self._retry_after},
            )

    def reserve(self) -> Reservation:
        """Promise a request a queue slot before it reads, fetches or decodes anything: QueueFull at once if none is
        left, so a refusal never waits for work. Release the reservation, or pass it to `submit`."""
        with self._cond:
            self._refuse_if_full()
            self._reserved += 1
        return Reservation(self._release)

    def _release(self) -> None:
        with self._cond:
            self._reserved -= 1
            self._cond.notify()  # the worker may be waiting for this request's item, which is not coming

    def enqueue(
        self,
        payload: In,
        deadline: float,
        settle: Settle,
        abandoned: Callable[[], bool],
        reservation: Reservation | None = None,
    ) -> None:
        """Queue one item whose outcome goes to `settle` (on the worker thread); QueueFull at once when full. What
        `submit` builds on, and what the engine process (serving.engine) calls for the fronts' items."""
        item: _Item[In, Out] = _Item(payload, deadline, settle, abandoned)
        with self._cond:
            if reservation is not None and reservation.take():
                self._reserved -= 1  # the promised slot becomes this item's
            else:
                self._refuse_if_full()
            item.gap, self._last_arrival = item.enqueued - self._last_arrival, item.enqueued
            self._queue.append(item)
            self._metrics.queue_depth.set(len(self._queue))
            self._cond.notify()

    async def submit(
        self, payload: In, deadline: float, reservation: Reservation | None = None
    ) -> tuple[Out, BatchTimings]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[Out, BatchTimings]] = loop.create_future()
        self.enqueue(payload, deadline, _settle_future(loop, future), future.done, reservation)
        remaining = deadline - time.monotonic()
        try:
            # On timeout wait_for cancels the future, and the worker skips cancelled items before compute.
            return await asyncio.wait_for(future, timeout=max(remaining, 0.0))
        except TimeoutError:
            self._metrics.rejected.labels("deadline").inc()
            raise DeadlineExceeded("the request's deadline passed before it was served") from None

    # -- consumer side (worker thread) -----------------------------------------------------------------------
    def _take_batch(self) -> list[_Item[In, Out]]:
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if self._stopping and not self._queue:
                return []
            first_at = time.monotonic()
            flush_at = first_at + self.max_wait_s
            while len(self._queue) < self.max_batch_size and not self._stopping:
                reserved = self._reserved + self.external_reserved()
                if reserved == 0 and len(self._queue) == 1 and self._queue[0].gap > self.max_wait_s:
                    break  # a lone item in sparse traffic, nothing admitted behind it: waiting only adds latency
                left = flush_at - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch: list[_Item[In, Out]] = []
            while self._queue and len(batch) < self.max_batch_size:
                batch.append(self._queue.popleft())
            self._busy = True
            self._metrics.queue_depth.set(len(self._queue))
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take_batch()
            if not batch:
                return
            try:
                self._execute(batch)
            finally:
                with self._cond:
                    self._busy = False

    def _execute(self, batch: list[_Item[In, Out]]) -> None:
        now = time.monotonic()
        live: list[_Item[In, Out]] = []
        for item in batch:
            if item.abandoned():  # the client went away
                continue
            if item.deadline <= now:
                _resolve(item, exc=DeadlineExceeded("the request's deadline passed while it was queued"))
                continue
            live.append(item)
        if not live:
            return
        self._metrics.batch_size.observe(len(live))
        try:
            outputs, inference_s, postprocess_s = self._run_checked(live)
        except Exception as exc:  # a model fault fails this batch, not the worker
            if len(live) == 1:
                log.exception("batch of 1 failed")
                _resolve(live[0], exc=exc)
            else:
                log.warning("batch of %d failed (%r): retrying its items one by one", len(live), exc)
                self._execute_one_by_one(live, now)
            return
        self._metrics.inference_seconds.observe(inference_s)
        self._metrics.postprocess_seconds.observe(postprocess_s)
        for item, output in zip(live, outputs, strict=True):
            wait = now - item.enqueued
            self._metrics.queue_wait_seconds.observe(wait)
            _resolve(item, result=(output, BatchTimings(wait, inference_s, postprocess_s, len(live))))

    def _run_checked(self, items: Sequence[_Item[In, Out]]) -> tuple[Sequence[Out], float, float]:
        outputs, inference_s, postprocess_s = self._run_batch([i.payload for i in items])
        if len(outputs) != len(items):
            raise RuntimeError(f"the model returned {len(outputs)} outputs for {len(items)} inputs")
        return outputs, inference_s, postprocess_s

    def _execute_one_by_one(self, items: list[_Item[In, Out]], now: float) -> None:
        """Isolate the bad items of a failed batch. Items that fail alone while others succeed are the input's fault
        (422 `unprocessable_input`); when every item fails alone, the model is at fault and each keeps its error."""
        failures: list[tuple[_Item[In, Out], Exception]] = []
        succeeded = 0
        for item in items:
            if item.abandoned():
                continue
            try:
                (output,), inference_s, postprocess_s = self._run_checked([item])
            except Exception as item_exc:
                failures.append((item, item_exc))
                continue
            succeeded += 1
            wait = now - item.enqueued
            self._metrics.queue_wait_seconds.observe(wait)
            _resolve(item, result=(output, BatchTimings(wait, inference_s, postprocess_s, 1)))
        for item, failure in failures:
            if isinstance(failure, ServingError) or not succeeded:
                if not succeeded:
                    log.error("every item of a failed batch also failed alone", exc_info=failure)
                _resolve(item, exc=failure)
            else:
                self._metrics.rejected.labels("unprocessable").inc()
                log.warning("an item failed alone while the rest of its batch succeeded: %r", failure)
                _resolve(
                    item,
                    exc=UnprocessableInput(
                        "the model could not process this input", detail=f"{type(failure).__name__}: {failure}"
                    ),
                )


class Reservation:
    """A queue slot promised to one request (see `MicroBatcher.reserve`, and serving.ipc's front slots); released at
    most once, or taken once by the item it was promised to."""

    def __init__(self, on_release: Callable[[], None]) -> None:
        self._on_release: Callable[[], None] | None = on_release

    def take(self) -> bool:
        """Claim the slot for an item (True), or False when it was already taken or released."""
        held, self._on_release = self._on_release is not None, None
        return held

    def release(self) -> None:
        on_release, self._on_release = self._on_release, None
        if on_release is not None:
            on_release()

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _resolve(item: _Item[Any, Any], *, result: Any = None, exc: BaseException | None = None) -> None:
    item.settle(result, exc)


def _settle_future(loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any]) -> Settle:
    """A Settle that hands the outcome to `future` on its event loop (from the worker thread)."""

    def settle(result: Any, exc: BaseException | None) -> None:
        def on_loop() -> None:
            if future.done():
                return
            if exc is not None:
                future.set_exception(exc)
            else:
                future.set_result(result)

        with contextlib.suppress(RuntimeError):  # a closed loop: the client is long gone
            loop.call_soon_threadsafe(on_loop)

    return settle

"""The engine/front split's wire: items and outputs as bytes in shared-memory slots, fixed-size frames on a socket.

Each front process owns one slot file in the run directory (a memory-backed emptyDir at /dev/shm in the pod): a
64-byte header, then `count` slots of `in_bytes` (the packed item; an error's JSON on the way back) and `out_bytes`
(the packed output). A slot belongs to the front while free or reserved, and to the engine from the request frame
until the reply frame: neither side touches it out of turn, so no lock is needed. Frames are fixed-size structs on
a Unix stream socket, one connection per front, preceded by one JSON hello each way. No pickling, no queues.

Deadlines cross as CLOCK_MONOTONIC seconds (`time.monotonic`), the same clock in every process of a machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import mmap
import os
import socket
import struct
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from serving.batcher import BatchTimings, Reservation
from serving.errors import DeadlineExceeded, NotReady, QueueFull, ServingError
from serving.metrics import ServiceMetrics
from serving.settings import ServingSettings

if TYPE_CHECKING:
    from serving.model import Model

log = logging.getLogger(__name__)

ENGINE_SOCKET = "engine.sock"
METRICS_DIR = "metrics"
REQUEST = struct.Struct("<IIBxxxd")  # slot, item bytes, item kind, deadline (monotonic seconds)
REPLY = struct.Struct("<IBxHfffI")  # slot, status, batch size, queue wait, inference, postprocess (s), payload bytes
OK, FAILED = 0, 1
HEADER_BYTES = 64  # [0:8] int64: requests this front has admitted whose item has not reached the engine yet
_HELLO_LENGTH = struct.Struct("<I")
_MAX_HELLO = 16 * 1024 * 1024


def run_dir(settings: ServingSettings, service: str) -> Path:
    """Where one split service keeps its engine socket, slot files and multiprocess metrics."""
    return settings.ipc_dir / f"{service}-{settings.port}"


SettingsT = TypeVar("SettingsT", bound=ServingSettings)


def front_share(settings: SettingsT, fronts: int) -> SettingsT:
    """A front's part of the pod's limits: the queue capacity and MAX_INFLIGHT are the pod's, split evenly (and
    FRONTS says into how many parts, so /v1/models can state the pod's)."""
    return settings.model_copy(
        update={
            "fronts": fronts,
            "queue_capacity": math.ceil(settings.queue_capacity / fronts),
            "max_inflight": math.ceil(settings.max_inflight / fronts),
        }
    )


class SlotFile:
    """One front's slots, mapped from a file by the front (which creates it) and by the engine."""

    def __init__(self, path: Path, count: int, in_bytes: int, out_bytes: int, *, create: bool) -> None:
        self.path, self.count, self.in_bytes, self.out_bytes = path, count, in_bytes, out_bytes
        self.stride = in_bytes + out_bytes
        size = HEADER_BYTES + count * self.stride
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
        fd = os.open(path, flags, 0o600)
        try:
            if create:
                os.ftruncate(fd, size)
            elif os.fstat(fd).st_size != size:
                raise ValueError(f"{path} is {os.fstat(fd).st_size} bytes, expected {size}")
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self._view = memoryview(self._map)
        self._header = self._view[:8].cast("q")

    @property
    def reserved(self) -> int:
        return int(self._header[0])

    @reserved.setter
    def reserved(self, value: int) -> None:
        self._header[0] = value

    def input(self, slot: int, nbytes: int | None = None) -> memoryview:
        start = HEADER_BYTES + slot * self.stride
        return self._view[start : start + (self.in_bytes if nbytes is None else nbytes)]

    def output(self, slot: int, nbytes: int | None = None) -> memoryview:
        start = HEADER_BYTES + slot * self.stride + self.in_bytes
        return self._view[start : start + (self.out_bytes if nbytes is None else nbytes)]

    def hello(self) -> dict[str, Any]:
        return {"path": str(self.path), "count": self.count, "in_bytes": self.in_bytes, "out_bytes": self.out_bytes}

    @classmethod
    def attach(cls, hello: dict[str, Any]) -> SlotFile:
        return cls(Path(hello["path"]), hello["count"], hello["in_bytes"], hello["out_bytes"], create=False)


# -- errors cross as JSON: the code names the ServingError subclass, so the client gets the engine's exact answer ----
def _error_classes(base: type[ServingError] = ServingError) -> dict[str, type[ServingError]]:
    found = {base.code: base}
    for sub in base.__subclasses__():
        found.update(_error_classes(sub))
    return found


def encode_error(exc: BaseException) -> bytes:
    if isinstance(exc, ServingError):
        fields = {"code": exc.code, "message": exc.message, "detail": exc.detail, "headers": exc.headers}
    else:  # a model fault: the front answers 500 and logs what the engine saw
        fields = {"code": ServingError.code, "message": "inference failed", "detail": f"{type(exc).__name__}: {exc}"}
    return json.dumps(fields).encode()


def decode_error(data: bytes | memoryview) -> ServingError:
    fields = json.loads(bytes(data))
    cls = _error_classes().get(fields["code"], ServingError)
    error = cls.__new__(cls)  # past the subclasses' own constructors: the engine already chose every field
    ServingError.__init__(error, fields["message"], headers=fields.get("headers"), detail=fields.get("detail"))
    return error


def send_hello(sock: socket.socket, document: dict[str, Any]) -> None:
    data = json.dumps(document).encode()
    sock.sendall(_HELLO_LENGTH.pack(len(data)) + data)


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = sock.recv(left)
        if not chunk:
            raise ConnectionError("the peer closed the connection")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def recv_hello(sock: socket.socket) -> dict[str, Any]:
    (size,) = _HELLO_LENGTH.unpack(recv_exactly(sock, _HELLO_LENGTH.size))
    if size > _MAX_HELLO:
        raise ConnectionError(f"hello of {size} bytes")
    document: dict[str, Any] = json.loads(recv_exactly(sock, size))
    return document


class FrontSlot(Reservation):
    """A front's slot reserved for one admitted request (serving.app's `with runtime.reserve()`)."""

    def __init__(self, client: EngineClient, index: int) -> None:
        super().__init__(lambda: client.release(index))
        self.index = index


class EngineClient:
    """A front's side of the split: admission by slot, submit an item, await the engine's answer.

    The same surface as MicroBatcher (reserve, submit, idle, depth, stop), so serving.app's Runtime uses either.
    A slot is free, reserved (a request is reading, fetching or decoding its item), or at the engine. No free slot
    is QueueFull (503 + Retry-After) at once, before any work. A request whose deadline passes answers 504 while
    its slot stays at the engine until the engine replies (it skips the expired item before compute).
    """

    def __init__(
        self,
        sock: socket.socket,
        slots: SlotFile,
        model: Model[Any, Any, Any],
        metrics: ServiceMetrics,
        retry_after_s: int,
    ) -> None:
        self.sock, self.slots, self.model, self.metrics = sock, slots, model, metrics
        self.capacity = slots.count
        self._retry_after = str(retry_after_s)
        self._free: deque[int] = deque(range(slots.count))
        self._reserved = 0
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._at_engine: set[int] = set()
        self._buffer = bytearray()
        self.lost: str | None = None  # why the engine connection ended, once it has
        self.on_lost: list[Any] = []
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._on_readable)

    @classmethod
    async def connect(
        cls, directory: Path, model: Model[Any, Any, Any], settings: ServingSettings, metrics: ServiceMetrics
    ) -> EngineClient:
        """Wait for the engine (it listens once its model is loaded and warm), adopt its model, map the slots."""
        path = directory / ENGINE_SOCKET
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
                await asyncio.sleep(0.05)
        hello = await asyncio.to_thread(recv_hello, sock)
        model.adopt(hello["model"])
        in_bytes, out_bytes = model.slot_sizes()
        count = settings.queue_capacity  # this front's share (front_share)
        slots = SlotFile(directory / f"front-{os.getpid()}.slots", count, in_bytes, out_bytes, create=True)
        await asyncio.to_thread(send_hello, sock, {"pid": os.getpid(), "slots": slots.hello()})
        sock.setblocking(False)
        log.info("connected to the engine: %d slots of %d + %d bytes", count, in_bytes, out_bytes)
        return cls(sock, slots, model, metrics, settings.retry_after_s)

    # -- the MicroBatcher surface --------------------------------------------------------------------------------
    @property
    def idle(self) -> bool:
        return not self._at_engine

    @property
    def depth(self) -> int:
        return len(self._at_engine)

    def _take_free(self) -> int:
        if self.lost is not None:
            raise NotReady("the inference engine is not available", headers={"Retry-After": self._retry_after})
        if not self._free:
            self.metrics.rejected.labels("queue_full").inc()
            raise QueueFull(
                f"the inference queue is full ({self.capacity} items in this process); retry later",
                headers={"Retry-After": self._retry_after},
            )
        return self._free.popleft()

    def reserve(self) -> FrontSlot:
        slot = FrontSlot(self, self._take_free())
        self._set_reserved(+1)
        return slot

    def release(self, index: int) -> None:
        self._set_reserved(-1)
        self._free.append(index)

    def _set_reserved(self, delta: int) -> None:
        self._reserved += delta
        self.slots.reserved = self._reserved  # read by the engine's batcher (its lone-item rule)

    async def submit(
        self, item: Any, deadline: float, reservation: Reservation | None = None
    ) -> tuple[Any, BatchTimings]:
        if isinstance(reservation, FrontSlot) and reservation.take():
            index = reservation.index
            self._set_reserved(-1)
        else:
            index = self._take_free()
        try:
            kind, data = self.model.pack_item(item)
            nbytes = len(data) if isinstance(data, bytes) else data.nbytes
            if nbytes > self.slots.in_bytes:
                raise ServingError("the item does not fit its slot", detail=f"{nbytes} > {self.slots.in_bytes} bytes")
            self.slots.input(index, nbytes)[:] = data
            future: asyncio.Future[Any] = self._loop.create_future()
            self._waiting[index] = future
            self._at_engine.add(index)
            self.sock.send(REQUEST.pack(index, nbytes, kind, deadline))  # 20 bytes: the socket buffer has room
        except BaseException:
            if index not in self._at_engine:
                self._free.append(index)
            raise
        try:
            return await asyncio.wait_for(future, timeout=max(deadline - time.monotonic(), 0.0))
        except TimeoutError:
            self.metrics.rejected.labels("deadline").inc()
            raise DeadlineExceeded("the request's deadline passed before it was served") from None

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._loop.remove_reader(self.sock.fileno())
        self.sock.close()
        with contextlib.suppress(OSError):
            self.slots.path.unlink()

    # -- replies -------------------------------------------------------------------------------------------------
    def _on_readable(self) -> None:
        try:
            data = self.sock.recv(64 * REPLY.size)
        except BlockingIOError:
            return
        except OSError as exc:
            self._lose(f"{type(exc).__name__}: {exc}")
            return
        if not data:
            self._lose("the engine closed the connection")
            return
        self._buffer.extend(data)
        whole = len(self._buffer) - len(self._buffer) % REPLY.size
        for offset in range(0, whole, REPLY.size):
            self._settle(*REPLY.unpack_from(self._buffer, offset))
        del self._buffer[:whole]

    def _settle(self, index: int, status: int, batch: int, wait: float, infer: float, post: float, n: int) -> None:
        future = self._waiting.pop(index, None)
        outcome: Any
        try:
            if status == OK:
                output = self.model.unpack_output(self.slots.output(index, n))
                outcome = (output, BatchTimings(wait, infer, post, batch))
            else:
                outcome = decode_error(self.slots.input(index, n))
        except Exception as exc:  # a reply this front cannot read: that request fails, the others go on
            outcome = exc
        finally:  # read out before the slot is free again
            self._at_engine.discard(index)
            self._free.append(index)
        if future is None or future.done():
            return  # its request already answered 504 (deadline) or its client left
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)

    def _lose(self, why: str) -> None:
        if self.lost is not None:
            return
        self.lost = why
        log.error("lost the inference engine: %s", why)
        with contextlib.suppress(Exception):
            self._loop.remove_reader(self.sock.fileno())
        for index, future in self._waiting.items():
            if not future.done():
                future.set_exception(NotReady("the inference engine went away", headers={"Retry-After": "1"}))
            self._at_engine.discard(index)
        self._waiting.clear()
        for callback in self.on_lost:
            callback()

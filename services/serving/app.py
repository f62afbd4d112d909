"""The FastAPI app every service shares: lifespan (load, warm-up, batcher), probes, metrics, model info, errors."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import re
import signal
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any, Generic, TypeVar

import anyio
import torch
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.batcher import BatchTimings, MicroBatcher, Reservation
from serving.errors import (
    ClientClosedRequest,
    DeadlineExceeded,
    Draining,
    InvalidRequest,
    NotReady,
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
    ServingError,
    UnsupportedMediaType,
    error_response,
    install_error_handlers,
)
from serving.ipc import EngineClient, run_dir
from serving.looplag import LoopLag
from serving.metrics import ServiceMetrics, multiprocess
from serving.model import Model
from serving.settings import ServingSettings

log = logging.getLogger(__name__)

PREDICT_PATH = "/v1/predict"
# The Open Inference Protocol's infer path (serving.v2): admitted, timed and counted like /v1/predict.
V2_INFER_PATH = re.compile(r"/v2/models/[^/]+(?:/versions/[^/]+)?/infer")
V2_MODEL_PATH = re.compile(r"/v2/models/[^/]+(?:/versions/[^/]+)?(/ready|/config)?")
DEADLINE_KEY = "serving.deadline"  # set in the ASGI scope on arrival: one deadline for every stage of a request
MAX_JSON_DEPTH = 32
OPEN_CONNECTIONS_KEY = "open_connections"  # app.state: how many connections the server holds (serving.server)
KNOWN_PATHS = frozenset(
    {"/healthz", "/readyz", "/metrics", "/v1/models", PREDICT_PATH, "/docs", "/openapi.json"}
    | {"/v2", "/v2/health/live", "/v2/health/ready"}
)


def endpoint_of(path: str) -> tuple[str, bool]:
    """The metrics label of a path (model names folded into `{name}`, so labels stay few) and whether it is a
    prediction, which admission, the deadline and the in-flight count apply to."""
    if path in KNOWN_PATHS:
        return path, path == PREDICT_PATH
    if V2_INFER_PATH.fullmatch(path):
        return "/v2/models/{name}/infer", True
    model_path = V2_MODEL_PATH.fullmatch(path)
    if model_path:
        return "/v2/models/{name}" + (model_path.group(1) or ""), False
    return "other", False


SettingsT = TypeVar("SettingsT", bound=ServingSettings)
ResourcesT = TypeVar("ResourcesT")


@dataclass
class Runtime(Generic[SettingsT, ResourcesT]):
    """Everything a request handler needs, created in the lifespan and reached through a runtime dependency.

    Typed by the service's own settings class and by what its resource factory opens (the image service's URL
    fetcher; `None` for a service without one), so handlers read both without casts or string keys.
    """

    service: str
    settings: SettingsT
    model: Model[Any, Any, Any]
    metrics: ServiceMetrics
    batcher: MicroBatcher[Any, Any] | EngineClient | None = None  # EngineClient: a front of the split
    ready: bool = False
    load_error: str | None = None  # set when the model failed to load: the server then exits (see serving.server)
    draining: bool = False
    inflight: int = 0
    opened: ResourcesT | None = None
    preprocess_limiter: anyio.CapacityLimiter | None = None
    loop_lag: LoopLag = field(default_factory=LoopLag)

    @property
    def resources(self) -> ResourcesT:
        """What the service's resource factory opened; NotReady (503) before the load has finished."""
        if self.opened is None:
            raise NotReady("the model is not loaded yet")
        return self.opened

    def announce_drain(self) -> None:
        """Log the drain and export readiness 0: from the event loop, never from the signal handler that set
        `draining` (metrics and logging take locks the interrupted code may hold; serving.server.DrainingServer)."""
        log.info("draining: readiness is now 503, waiting for %d accepted requests", self.inflight)
        self.metrics.ready.set(0)

    @property
    def drained(self) -> bool:
        return self.inflight == 0 and (self.batcher is None or self.batcher.idle)

    def deadline(self) -> float:
        return time.monotonic() + self.settings.request_timeout_s

    def deadline_of(self, request: Request) -> float:
        """The request's deadline, fixed when it arrived (see MetricsMiddleware)."""
        deadline: float | None = request.scope.get(DEADLINE_KEY)
        return deadline if deadline is not None else self.deadline()

    async def preprocess(self, raw: Any, deadline: float) -> tuple[Any, float]:
        """The model's preprocessing within the deadline, timed: in a worker thread (at most `preprocess_threads` at
        once), or on the event loop for a model whose preprocessing costs less than a thread hop (`inline`)."""
        start = time.perf_counter()
        self.metrics.stages.labels("preprocess").inc()
        try:
            with anyio.fail_after(remaining(deadline, "before preprocessing")):
                if self.model.preprocess_inline:
                    item = self.model.preprocess(raw)
                else:
                    item = await anyio.to_thread.run_sync(self.model.preprocess, raw, limiter=self.preprocess_limiter)
        except TimeoutError:
            self.metrics.rejected.labels("deadline").inc()
            raise DeadlineExceeded("the request's deadline passed while preprocessing") from None
        elapsed = time.perf_counter() - start
        self.metrics.preprocess_seconds.observe(elapsed)
        return item, elapsed

    def reserve(self) -> Reservation:
        """A batch queue slot for one item, taken before any work (QueueFull, 503, at once when there is none)."""
        if self.batcher is None or not self.ready:
            raise NotReady("the model is not loaded yet")
        reservation = self.batcher.reserve()
        self.metrics.stages.labels("admitted").inc()
        return reservation

    async def read_body(self, request: Request, deadline: float) -> bytes:
        """The request's body, capped at `max_body_bytes` (see read_body_capped), counted as work begun."""
        self.metrics.stages.labels("body").inc()
        return await read_body_capped(request, self.settings.max_body_bytes, deadline)

    async def infer(
        self, item: Any, deadline: float, reservation: Reservation | None = None
    ) -> tuple[Any, BatchTimings]:
        if self.batcher is None or not self.ready:
            raise NotReady("the model is not loaded yet")
        return await self.batcher.submit(item, deadline, reservation)


def remaining(deadline: float, where: str) -> float:
    """Seconds left before `deadline`; DeadlineExceeded (504) when none are."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise DeadlineExceeded(f"the request's deadline passed {where}")
    return left


async def ensure_client_waits(request: Request) -> None:
    """Stop working for a client that has gone away (its answer would be thrown away): 499, not a fault."""
    if await request.is_disconnected():
        raise ClientClosedRequest("the client closed the connection before the answer")


async def get_runtime(request: Request) -> Runtime[Any, Any]:
    # async: FastAPI runs a plain `def` dependency in its thread pool, a thread hop per request for an attribute read.
    runtime: Runtime[Any, Any] = request.app.state.runtime
    return runtime


# The shared endpoints' view; a service annotates its own handlers with Runtime[ItsSettings, ItsResources].
RuntimeDep = Annotated[Runtime[Any, Any], Depends(get_runtime)]


async def read_body_capped(request: Request, limit: int, deadline: float | None = None) -> bytes:
    """The request body, refusing (413) anything above `limit` bytes without reading it all; a client that has not
    sent it by `deadline` gets 408, one that went away 499."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is larger than {limit} bytes")
    body = bytearray()
    left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
    try:
        with anyio.fail_after(left):
            async for chunk in request.stream():
                body.extend(chunk)
                if len(body) > limit:
                    raise PayloadTooLarge(f"request body is larger than {limit} bytes")
    except ClientDisconnect:
        raise ClientClosedRequest("the client closed the connection before sending its whole body") from None
    except TimeoutError:
        raise RequestTimeout("the request body did not arrive before the request's deadline") from None
    return bytes(body)


RequestModel = TypeVar("RequestModel", bound=BaseModel)
T = TypeVar("T")


def content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


# A JSON string (skipped whole, possessively, so brackets inside strings do not count) or one bracket.
_JSON_NESTING = re.compile(rb'"(?:[^"\\]++|\\.)*+"|[\[\]{}]')


def json_too_deep(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when arrays/objects nest deeper than `limit` (checked before parsing: deep input makes parsers recurse)."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    depth = 0
    for match in _JSON_NESTING.finditer(body):
        token = match.group()
        if token in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return True
        elif token in (b"]", b"}"):
            depth -= 1
    return False


def require_exactly_one(request: BaseModel, *names: str) -> None:
    """The "exactly one of" rule of a JSON body, by the keys sent: one of `names`, not null (the OpenAPI document
    states it as `oneOf` of `required`, with non-nullable fields, so an explicit null is refused, not ignored)."""
    sent = [name for name in names if name in request.model_fields_set]
    if len(sent) != 1 or getattr(request, sent[0]) is None:
        raise ValueError(f"send exactly one of {' or '.join(names)}, not null")


def parse_json_body(request: Request, body: bytes, model: type[RequestModel]) -> RequestModel:
    """Validate a JSON body against `model`: wrong type is a 415, any other problem a 400, never a 500."""
    if content_type(request) != "application/json":
        raise UnsupportedMediaType(f"content type {content_type(request) or '(none)'!r} is not accepted here")
    return parse_json(body, model)


def parse_json(body: bytes, model: type[RequestModel]) -> RequestModel:
    """Validate JSON bytes against `model`; every problem is a 400 InvalidRequest, never a 500."""
    if json_too_deep(body):
        raise InvalidRequest(f"body nests arrays/objects deeper than {MAX_JSON_DEPTH} levels")
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequest(f"body is not valid JSON: {exc}") from exc
    except RecursionError:
        raise InvalidRequest("body nests too deeply") from None
    if not isinstance(document, dict):
        raise InvalidRequest("body must be a JSON object")
    try:
        return model.model_validate(document)
    except RecursionError:
        raise InvalidRequest("body nests too deeply") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "body"
        raise InvalidRequest(f"{where}: {first['msg']}") from None


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    """Every error answer: `{"error": {"code": ..., "message": ...}}`."""

    error: ErrorDetail


_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}}
PREDICT_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "Invalid request, image or URL (`invalid_request`, `invalid_image`)."},
    403: {"model": ErrorBody, "description": "The image URL is not allowed (`url_forbidden`)."},
    408: {
        "model": ErrorBody,
        "description": "The headers (header deadline) or the body (request deadline) were late (`request_timeout`).",
    },
    413: {"model": ErrorBody, "description": "Body or fetched image too large (`payload_too_large`)."},
    415: {"model": ErrorBody, "description": "Content type not accepted (`unsupported_media_type`)."},
    422: {"model": ErrorBody, "description": "The model failed on this input alone (`unprocessable_input`)."},
    431: {"model": ErrorBody, "description": "Request line and headers over the limits (`headers_too_large`)."},
    503: {
        "model": ErrorBody,
        "description": "Refused before any work: `overloaded` (also past the connection cap), `queue_full`, "
        "`draining` or `not_ready`.",
        "headers": _RETRY_AFTER,
    },
    504: {"model": ErrorBody, "description": "The request's deadline passed (`deadline_exceeded`)."},
}
# What only a service that fetches image URLs answers: the image host (allowed by the policy) failed.
FETCH_ERRORS: dict[int | str, dict[str, Any]] = {
    502: {"model": ErrorBody, "description": "The image host could not be reached (`upstream_unavailable`)."},
    504: {
        "model": ErrorBody,
        "description": "The request's deadline passed (`deadline_exceeded`), or the image host did not connect or "
        "answer in time (`upstream_timeout`).",
    },
}


def json_request_body(model: type[BaseModel], **extra_types: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI `requestBody` for handlers that parse the body themselves (to keep errors in one format)."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}, **extra_types},
        }
    }


def make_batch_runner(
    model: Model[Any, Any, Any], finish: Callable[[Any], list[Any]] | None = None
) -> Callable[[Sequence[Any]], tuple[list[Any], float, float]]:
    """predict + synchronize (inference seconds), then `finish` (postprocess seconds): the model's postprocess, or
    the split engine's Model.engine_outputs."""
    finish = finish or model.postprocess

    def run(items: Sequence[Any]) -> tuple[list[Any], float, float]:
        start = time.perf_counter()
        outputs = model.predict(items)
        model.synchronize()
        mid = time.perf_counter()
        results = finish(outputs)
        return results, mid - start, time.perf_counter() - mid

    return run


async def in_daemon_thread(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` in a daemon thread of its own. Used for the model load: a SIGTERM during a long download or load
    must shut the process down at once, and anyio's worker threads (non-daemon) would hold the interpreter's exit."""
    loop = asyncio.get_running_loop()
    result: asyncio.Future[T] = loop.create_future()

    def settle(outcome: Callable[[], None]) -> None:
        if not result.done():
            outcome()

    def target() -> None:
        try:
            value = fn(*args)
        except BaseException as exc:  # handed to the awaiting task, which logs or raises it
            error = exc
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
                loop.call_soon_threadsafe(settle, lambda: result.set_exception(error))
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, lambda: result.set_result(value))

    threading.Thread(target=target, name=f"serving-{getattr(fn, '__name__', 'load')}", daemon=True).start()
    return await result


def load_and_warm_up(model: Model[Any, Any, Any], max_batch_size: int) -> tuple[float, float]:
    """Load the model, then warm it up; returns the seconds of each."""
    start = time.perf_counter()
    model.load()
    return time.perf_counter() - start, warm_up(model, max_batch_size)


def freeze_the_loaded_heap() -> None:
    """Move everything alive after the load (torch, the model, the app: about 390,000 objects for the image service)
    out of the collector's reach. Otherwise each full collection walks all of it, 190 ms with the event loop stopped,
    every few seconds under load, and every answer in flight waits that long: it was the whole tail of the 503s at
    twice the saturation. What requests allocate is still collected, in well under a millisecond."""
    gc.collect()
    gc.freeze()


def warm_up(model: Model[Any, Any, Any], max_batch_size: int) -> float:
    """Run every batch size the batcher can form once, so no client pays for first-use allocation."""
    item = model.warmup_item()
    start = time.perf_counter()
    for size in range(1, max_batch_size + 1):
        model.postprocess(model.predict([item] * size))
    model.synchronize()
    return time.perf_counter() - start


class MetricsMiddleware:
    """Counts requests by endpoint and status, times them, tracks in-flight predictions, refuses them while draining."""

    def __init__(self, app: ASGIApp, runtime_of: Callable[[], Runtime[Any, Any] | None]) -> None:
        self.app = app
        self.runtime_of = runtime_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime = self.runtime_of()
        if scope["type"] != "http" or runtime is None:
            await self.app(scope, receive, send)
            return
        endpoint, is_predict = endpoint_of(scope["path"])
        status = {"code": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                if runtime.draining and not any(k.lower() == b"connection" for k, _ in message.get("headers", ())):
                    # Keep-alive clients reconnect (to another replica) instead of reusing a connection that uvicorn
                    # closes when the drain ends: a request written into that close would never be read.
                    message = {**message, "headers": [*message.get("headers", ()), (b"connection", b"close")]}
            await send(message)

        start = time.perf_counter()
        try:
            refusal = self.refusal(runtime) if is_predict else None
            if refusal is not None:
                await error_response(refusal)(scope, receive, send_wrapper)
                return
            if is_predict:
                scope[DEADLINE_KEY] = time.monotonic() + runtime.settings.request_timeout_s
                runtime.inflight += 1
                runtime.metrics.inflight.inc()
            try:
                await self.app(scope, receive, send_wrapper)
            finally:
                if is_predict:
                    runtime.inflight -= 1
                    runtime.metrics.inflight.dec()
        finally:
            runtime.metrics.requests.labels(endpoint, str(status["code"])).inc()
            runtime.metrics.request_seconds.labels(endpoint).observe(time.perf_counter() - start)

    @staticmethod
    def refusal(runtime: Runtime[Any, Any]) -> ServingError | None:
        """Admission, before the body is read or anything fetched or decoded: refuse at once, or None to admit."""
        retry = {"Retry-After": str(runtime.settings.retry_after_s)}
        if runtime.draining:
            runtime.metrics.rejected.labels("draining").inc()
            return Draining("the server is shutting down; retry on another replica", headers=retry)
        if not runtime.ready:
            runtime.metrics.rejected.labels("not_ready").inc()
            return NotReady("the model is still loading; retry shortly", headers=retry)
        if runtime.inflight >= runtime.settings.max_inflight:
            runtime.metrics.rejected.labels("overloaded").inc()
            return Overloaded(
                f"the server is at its limit of {runtime.settings.max_inflight} requests in flight; retry later",
                headers=retry,
            )
        return None


async def connect_to_engine(runtime: Runtime[Any, Any], stack: AsyncExitStack) -> EngineClient:
    """A front's model: the engine's, adopted over the wire (serving.ipc), then its own preprocessing warmed up."""
    settings, model = runtime.settings, runtime.model
    client = await EngineClient.connect(run_dir(settings, runtime.service), model, settings, runtime.metrics)
    stack.callback(client.stop)

    def engine_lost() -> None:  # nothing left to serve with: drain what can still answer, then exit (supervisor)
        runtime.ready = False
        runtime.metrics.ready.set(0)
        os.kill(os.getpid(), signal.SIGTERM)

    client.on_lost.append(engine_lost)
    await anyio.to_thread.run_sync(model.warmup_item)  # Pillow's plugins and the resize path, before readiness
    return client


async def publish_process_gauges(runtime: Runtime[Any, Any], open_connections: Callable[[], int]) -> None:
    while True:
        await anyio.sleep(1.0)
        runtime.metrics.loop_lag.set(runtime.loop_lag.take_peak())
        runtime.metrics.connections.set(open_connections())


def create_service_app(
    *,
    service: str,
    title: str,
    settings: SettingsT,
    model_factory: Callable[[SettingsT], Model[Any, Any, Any]],
    register_routes: Callable[[FastAPI], None],
    resources: Callable[[SettingsT, AsyncExitStack, ServiceMetrics], Awaitable[ResourcesT]] | None = None,
) -> FastAPI:
    """Build a service app. Nothing heavy happens here: the model loads in the lifespan. `resources` opens what the
    handlers need beside the model (closed through the exit stack at shutdown, counting in the service's metrics);
    `Runtime.resources` holds it."""

    async def load(runtime: Runtime[SettingsT, ResourcesT], stack: AsyncExitStack) -> None:
        """Load, warm up, start the batcher, then turn ready. Runs while the listener already answers (503 loading).
        A front of the split connects to the engine instead: it is ready once the engine's model is warm."""
        model = runtime.model
        started = time.perf_counter()
        try:
            if settings.split:
                runtime.batcher = await connect_to_engine(runtime, stack)
                loaded, warm = 0.0, time.perf_counter() - started
            else:
                loaded, warm = await in_daemon_thread(load_and_warm_up, model, settings.max_batch_size)
            for note in model.notes:
                log.warning(note)
            if resources is not None:
                runtime.opened = await resources(settings, stack, runtime.metrics)
        except Exception as exc:
            log.exception("the model failed to load: the server exits")
            runtime.load_error = f"{type(exc).__name__}: {exc}"
            return
        if not settings.split:
            batcher: MicroBatcher[Any, Any] = MicroBatcher(
                make_batch_runner(model),
                max_batch_size=settings.max_batch_size,
                max_wait_ms=settings.max_wait_ms,
                capacity=settings.queue_capacity,
                metrics=runtime.metrics,
                retry_after_s=settings.retry_after_s,
            )
            batcher.start()
            stack.callback(batcher.stop)
            runtime.batcher = batcher
        freeze_the_loaded_heap()
        runtime.metrics.model_info.labels(model.name, model.version, str(model.device), model.precision).set(1)
        runtime.ready = not runtime.draining
        runtime.metrics.ready.set(int(runtime.ready))
        log.info(
            "ready: model %s %s on %s (%s), torch threads %d, load %.2fs, warm-up of batch sizes 1..%d %.2fs%s",
            model.name,
            model.version,
            model.device,
            model.precision,
            torch.get_num_threads(),
            loaded,
            settings.max_batch_size,
            warm,
            " (a front of the split: waited for the engine)" if settings.split else "",
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        threads = settings.resolved_torch_threads()
        torch.set_num_threads(1 if settings.split else threads)  # a front's torch only copies decoded pixels
        model = model_factory(settings)
        runtime: Runtime[SettingsT, ResourcesT] = Runtime(
            service=service, settings=settings, model=model, metrics=ServiceMetrics(service)
        )
        runtime.preprocess_limiter = anyio.CapacityLimiter(settings.preprocess_threads or threads)
        app.state.runtime = runtime
        open_connections: Callable[[], int] = getattr(app.state, OPEN_CONNECTIONS_KEY, lambda: 0)  # serving.server
        if not multiprocess():
            runtime.metrics.loop_lag.set_function(runtime.loop_lag.take_peak)
            runtime.metrics.connections.set_function(open_connections)
        # The exit stack outlives the loader's task group: the batcher and the resources close after the load stops.
        async with AsyncExitStack() as stack, anyio.create_task_group() as loader:
            loader.start_soon(load, runtime, stack)
            loader.start_soon(runtime.loop_lag.run)
            if multiprocess():  # no callback gauges across processes: each front writes its own every second
                loader.start_soon(publish_process_gauges, runtime, open_connections)
            log.info("listening while the model loads: /readyz answers 503 `loading` until it is warm")
            yield
            loader.cancel_scope.cancel()
            runtime.ready = False
            runtime.metrics.ready.set(0)

    app = FastAPI(title=title, version="1", lifespan=lifespan)
    app.add_middleware(MetricsMiddleware, runtime_of=lambda: getattr(app.state, "runtime", None))
    install_error_handlers(app)

    @app.get("/healthz", tags=["probes"], summary="Liveness: the process is up and its event loop answers.")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["probes"],
        summary="Readiness: 200 once loaded and warm; 503 before (the port opens at once), and while draining.",
        responses={503: {"description": "`loading`, `failed` (the model did not load; the process exits), `draining`"}},
    )
    async def readyz(runtime: RuntimeDep) -> JSONResponse:
        if runtime.draining:
            return JSONResponse({"status": "draining"}, 503)
        if runtime.load_error is not None:
            return JSONResponse({"status": "failed", "error": runtime.load_error}, 503)
        if not runtime.ready:
            return JSONResponse({"status": "loading"}, 503)
        return JSONResponse({"status": "ready"})

    @app.get(
        "/metrics",
        tags=["probes"],
        summary="Prometheus metrics (text exposition format).",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
    )
    async def metrics(runtime: RuntimeDep) -> Response:
        body, media_type = runtime.metrics.exposition()
        return Response(body, media_type=media_type)

    @app.get(
        "/v1/models", tags=["model"], summary="The served model: name, version, labels, device, precision, batching."
    )
    async def models(runtime: RuntimeDep) -> dict[str, Any]:
        if not runtime.ready:
            raise NotReady("the model is not loaded yet", headers={"Retry-After": str(runtime.settings.retry_after_s)})
        model, s = runtime.model, runtime.settings
        processes = s.fronts if s.split else 1  # a front's settings hold its share (serving.ipc.front_share)
        return {
            "name": model.name,
            "version": model.version,
            "labels": model.labels,
            "device": str(model.device),
            "requested_device": s.device,
            "precision": model.precision,
            "notes": model.notes,
            "batching": {
                "enabled": s.max_batch_size > 1,
                "max_batch_size": s.max_batch_size,
                "max_wait_ms": s.max_wait_ms,
                "queue_capacity": s.queue_capacity * processes,
            },
            "request_timeout_s": s.request_timeout_s,
            "max_inflight": s.max_inflight * processes,
            "fronts": processes if s.split else None,
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "openmp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            **model.describe(),
        }

    register_routes(app)
    return app

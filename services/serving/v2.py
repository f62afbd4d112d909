"""The Open Inference Protocol (KServe v2, Triton HTTP/REST) beside /v1/predict: routes, tensors, binary data, errors.

Both services speak it through one `V2Spec` each (what the input tensor holds, how an element becomes the model's
raw input, how an output becomes a probability row). Every infer request goes the way /v1/predict goes: admission
(MetricsMiddleware), the one deadline, the body cap, the preprocessing pool, the batcher, the metrics. A request of
n elements is admitted as n items: n batch queue slots are reserved, and it counts n towards MAX_INFLIGHT.

Errors keep our codes and take the protocol's shape: `{"error": "<message>", "code": "<machine-readable code>"}`
(`V2ErrorBodies` rewrites every error answer under /v2, whoever raised it, from `{"error": {"code", "message"}}`).
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import FastAPI, Path, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.app import PREDICT_ERRORS, RuntimeDep, ensure_client_waits, parse_json
from serving.app import Runtime as AnyRuntime
from serving.batcher import Reservation
from serving.errors import (
    InvalidRequest,
    ModelNotFound,
    NotReady,
    Overloaded,
    ServingError,
    UnsupportedMediaType,
)

V2_PREFIX = "/v2"
HEADER_LENGTH = "inference-header-content-length"  # the binary tensor extension's header (JSON part's length)
BINARY_CONTENT_TYPE = "application/octet-stream"
EXTENSIONS = ["binary_tensor_data", "classification", "model_configuration"]
OUTPUTS = ("labels", "scores", "probabilities")
DEFAULT_OUTPUTS = ("labels", "scores")
_LENGTH = struct.Struct("<I")  # each BYTES element of a binary section: a 4-byte little-endian length, then bytes


# -- what a service declares -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class V2Spec:
    """How one service's model looks over the protocol: one BYTES input of shape [-1], three outputs.

    Outputs: `labels` (BYTES [n, k]) and `scores` (FP32 [n, k]), the top k per element (k: the request parameter
    `top_k`, default `default_top_k`); `probabilities` (FP32 [n, len(labels)], in label order) when asked for.
    """

    input_name: str
    platform: str
    from_binary: Callable[[bytes], Any]  # one element of a binary section -> the model's raw input
    from_json: Callable[[str], Any]  # one element of the JSON form (a string) -> the model's raw input
    probabilities: Callable[[Any], Sequence[float]]  # one model output -> its probability row, in label order
    max_items: Callable[[Any], int]  # settings -> most elements one request may carry (the same limit as /v1)
    default_top_k: Callable[[Any], int]
    check: Callable[[list[Any], Any], None] = lambda items, settings: None  # the /v1 checks of a whole request
    json_form: str = "the element itself, as a string"


# -- request and response documents ----------------------------------------------------------------------------
Parameters = dict[str, Any]


class RequestInput(BaseModel):
    name: str
    shape: list[Annotated[int, Field(ge=0, le=2**31)]]
    datatype: str
    parameters: Parameters | None = None
    data: list[Any] | None = Field(default=None, description="JSON form: the elements, flat or nested.")


class RequestOutput(BaseModel):
    name: Literal["labels", "scores", "probabilities"]
    parameters: Parameters | None = Field(
        default=None, description="`binary_data` (bool); `classification` (int: top-n as `score:index:label`)."
    )


class InferRequest(BaseModel):
    """The JSON part of an infer request (the whole body, or its first Inference-Header-Content-Length bytes)."""

    id: str | None = None
    parameters: Parameters | None = Field(
        default=None, description="`top_k` (int, 1..number of labels); `binary_data_output` (bool)."
    )
    inputs: Annotated[list[RequestInput], Field(min_length=1, max_length=1)]
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters | None = None
    data: list[Any] | None = None


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[ResponseOutput]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class V2Error(BaseModel):
    """Every error under /v2: the protocol's `error` message, and our machine-readable `code` beside it."""

    error: str
    code: str


# -- parsing: JSON part, binary sections, BYTES elements --------------------------------------------------------
def flatten(data: list[Any]) -> list[Any]:
    """The elements of a JSON `data` array, flat or nested (row-major)."""
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            flat.append(value)
        else:
            stack.pop()
    return flat


def split_bytes_elements(section: bytes, where: str) -> list[bytes]:
    """A binary BYTES section: elements, each a 4-byte little-endian length and that many bytes."""
    elements: list[bytes] = []
    offset = 0
    while offset < len(section):
        if offset + 4 > len(section):
            raise InvalidRequest(f"{where}: truncated binary data: {len(section) - offset} bytes left, not a length")
        (size,) = _LENGTH.unpack_from(section, offset)
        offset += 4
        if offset + size > len(section):
            raise InvalidRequest(
                f"{where}: truncated binary data: element {len(elements)} says {size} bytes, "
                f"{len(section) - offset} are left"
            )
        elements.append(section[offset : offset + size])
        offset += size
    return elements


def header_length(request: Request, body_size: int) -> int | None:
    """Inference-Header-Content-Length: the JSON part's size, or None when the whole body is JSON."""
    raw = request.headers.get(HEADER_LENGTH)
    if raw is None:
        return None
    if not raw.strip().isdigit():
        raise InvalidRequest(f"Inference-Header-Content-Length must be a byte count, not {raw[:40]!r}")
    length = int(raw)
    if length == 0 or length > body_size:
        raise InvalidRequest(
            f"Inference-Header-Content-Length is {length} but the body has {body_size} bytes: "
            "the JSON part must be within the body"
        )
    return length


def parse_infer(request: Request, body: bytes, spec: V2Spec) -> tuple[InferRequest, list[Any]]:
    """The infer request and its input's elements (raw model inputs), validated against the model's metadata."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise UnsupportedMediaType(f"Content-Encoding {encoding!r} is not accepted; send the body uncompressed")
    length = header_length(request, len(body))
    document = parse_json(body if length is None else body[:length], InferRequest)
    binary = memoryview(body)[length:] if length is not None else memoryview(b"")
    (tensor,) = document.inputs
    where = f"input {tensor.name!r}"
    if tensor.name != spec.input_name:
        raise InvalidRequest(f"unknown input {tensor.name!r}: this model's only input is {spec.input_name!r}")
    if tensor.datatype != "BYTES":
        raise InvalidRequest(f"{where} has datatype {tensor.datatype!r}; this model takes BYTES")
    if len(tensor.shape) != 1:
        raise InvalidRequest(f"{where} has shape {tensor.shape}; this model takes shape [-1] (one element per item)")
    binary_size = (tensor.parameters or {}).get("binary_data_size")
    if binary_size is not None:
        if tensor.data is not None:
            raise InvalidRequest(f"{where} has both `data` and `binary_data_size`")
        if not isinstance(binary_size, int) or isinstance(binary_size, bool) or binary_size < 0:
            raise InvalidRequest(f"{where}: binary_data_size must be a non-negative integer")
        if length is None:
            raise InvalidRequest(f"{where} has binary_data_size, but there is no Inference-Header-Content-Length")
        if binary_size > len(binary):
            raise InvalidRequest(
                f"{where}: truncated binary data: binary_data_size is {binary_size}, {len(binary)} bytes follow"
            )
        if binary_size < len(binary):
            raise InvalidRequest(f"{len(binary) - binary_size} bytes of binary data follow the last input's")
        raw_elements = split_bytes_elements(bytes(binary), where)
        convert: Callable[[Any], Any] = spec.from_binary
    else:
        if tensor.data is None:
            raise InvalidRequest(f"{where} has neither `data` nor `parameters.binary_data_size`")
        if len(binary):
            raise InvalidRequest(f"{len(binary)} bytes of binary data follow, but no input has binary_data_size")
        raw_elements = flatten(tensor.data)
        if not all(isinstance(e, str) for e in raw_elements):
            raise InvalidRequest(f"{where}: BYTES elements in JSON are strings ({spec.json_form})")
        convert = spec.from_json
    (count,) = tensor.shape
    if count != len(raw_elements):
        raise InvalidRequest(f"{where} has shape [{count}] but carries {len(raw_elements)} elements")
    if count == 0:
        raise InvalidRequest(f"{where} is empty")
    items = []
    for index, element in enumerate(raw_elements):
        try:
            items.append(convert(element))
        except ServingError as exc:
            raise _at(exc, f"{where}[{index}]") from None
    return document, items


def _at(exc: ServingError, where: str) -> ServingError:
    """The same error (status and code), its message saying which element it is about."""
    exc.message = f"{where}: {exc.message}"
    return exc


# -- admission of n items, and the infer path itself ------------------------------------------------------------
@contextmanager
def admitted_items(runtime: AnyRuntime[Any, Any], count: int) -> Iterator[list[Reservation]]:
    """Admit a request of `count` items as `count` predictions: MetricsMiddleware counted one towards MAX_INFLIGHT,
    the rest count here (503 `overloaded` when they do not fit), and each gets a batch queue slot (503 `queue_full`
    when there are not that many; slots taken before the refusal are given back)."""
    settings, metrics, extra = runtime.settings, runtime.metrics, count - 1
    if runtime.inflight + extra > settings.max_inflight:
        metrics.rejected.labels("overloaded").inc()
        raise Overloaded(
            f"{count} items do not fit the limit of {settings.max_inflight} predictions in flight; retry later",
            headers={"Retry-After": str(settings.retry_after_s)},
        )
    runtime.inflight += extra
    metrics.inflight.inc(extra)
    slots: list[Reservation] = []
    try:
        for _ in range(count):
            slots.append(runtime.reserve())
        yield slots
    finally:
        for slot in slots:
            slot.release()
        runtime.inflight -= extra
        metrics.inflight.dec(extra)


async def run_items(
    request: Request, runtime: AnyRuntime[Any, Any], raws: list[Any], slots: list[Reservation], where: str
) -> list[Any]:
    """Preprocess every item (concurrently, in the preprocessing pool), then submit them all to the batcher at once,
    so the items of one request can share batches. The first failing item (in order) fails the request."""
    deadline = runtime.deadline_of(request)

    async def each(coros: list[Any]) -> list[Any]:
        results = await asyncio.gather(*coros, return_exceptions=True)
        for index, result in enumerate(results):
            if isinstance(result, ServingError):
                raise _at(result, f"{where}[{index}]")
            if isinstance(result, BaseException):
                raise result
        return results

    items = [item for item, _ in await each([runtime.preprocess(raw, deadline) for raw in raws])]
    await ensure_client_waits(request)
    outputs = await each([runtime.infer(item, deadline, slot) for item, slot in zip(items, slots, strict=True)])
    return [output for output, _ in outputs]


def top_k_of(document: InferRequest, labels: int, default: int) -> int:
    value = (document.parameters or {}).get("top_k", default)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= labels:
        raise InvalidRequest(f"parameter top_k must be an integer from 1 to {labels}, not {value!r}")
    return value


def bytes_section(elements: Sequence[bytes]) -> bytes:
    return b"".join(_LENGTH.pack(len(e)) + e for e in elements)


def encode_response(
    document: InferRequest, model: Any, probabilities: np.ndarray, top_k: int
) -> tuple[dict[str, Any], list[bytes]]:
    """The response document and its binary sections (one per output asked for as binary, in output order)."""
    labels: list[str] = model.labels
    binary_default = bool((document.parameters or {}).get("binary_data_output", False))
    requested = document.outputs or [RequestOutput(name=name) for name in DEFAULT_OUTPUTS]  # type: ignore[arg-type]
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :top_k]
    outputs, sections = [], []
    for output in requested:
        params = output.parameters or {}
        binary = params.get("binary_data", binary_default)
        if not isinstance(binary, bool):
            raise InvalidRequest(f"output {output.name!r}: binary_data must be true or false")
        classes = params.get("classification", 0)
        if not isinstance(classes, int) or isinstance(classes, bool) or not 0 <= classes <= len(labels):
            raise InvalidRequest(f"output {output.name!r}: classification must be an integer from 0 to {len(labels)}")
        datatype, values = "FP32", None
        if classes:
            if output.name == "labels":
                raise InvalidRequest("output 'labels' holds no scores: ask for classification on 'probabilities'")
            best = np.argsort(-probabilities, axis=1, kind="stable")[:, :classes]
            values = [
                f"{probabilities[row, index]:f}:{index}:{labels[index]}".encode()
                for row in range(len(best))
                for index in best[row]
            ]
            datatype, shape = "BYTES", [len(best), classes]
        elif output.name == "labels":
            values = [labels[index].encode() for row in order for index in row]
            datatype, shape = "BYTES", [len(order), top_k]
        elif output.name == "scores":
            array = np.take_along_axis(probabilities, order, axis=1).astype("<f4")
            shape = list(array.shape)
        else:
            array = probabilities.astype("<f4")
            shape = list(array.shape)
        entry: dict[str, Any] = {"name": output.name, "datatype": datatype, "shape": shape}
        if binary:
            section = bytes_section(values) if values is not None else array.tobytes()
            entry["parameters"] = {"binary_data_size": len(section)}
            sections.append(section)
        else:
            entry["data"] = [v.decode() for v in values] if values is not None else array.ravel().tolist()
        outputs.append(entry)
    answer: dict[str, Any] = {"model_name": model.name, "model_version": model.version, "outputs": outputs}
    if document.id is not None:
        answer["id"] = document.id
    return answer, sections


def infer_response(answer: dict[str, Any], sections: list[bytes]) -> Response:
    header = json.dumps(answer, separators=(",", ":")).encode()
    if not sections:
        return Response(header, media_type="application/json")
    return Response(
        b"".join([header, *sections]),
        media_type=BINARY_CONTENT_TYPE,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )


# -- error bodies ------------------------------------------------------------------------------------------------
class V2ErrorBodies:
    """Rewrites every error answer under /v2 from `{"error": {"code", "message"}}` (serving.errors, admission) to the
    protocol's `{"error": "<message>", "code": "<code>"}`, so clients that read `error` as a string (tritonclient,
    kserve) show the message, and the code stays machine-readable. Other paths pass untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not (path == V2_PREFIX or path.startswith(V2_PREFIX + "/")):
            await self.app(scope, receive, send)
            return
        held: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def rewrite(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] >= 400:
                held["start"] = message
                return
            if message["type"] == "http.response.body" and "start" in held:
                chunks.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                body = v2_error_body(b"".join(chunks))
                headers = [(k, v) for k, v in held["start"].get("headers", []) if k.lower() != b"content-length"]
                await send({**held["start"], "headers": [*headers, (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
            await send(message)

        await self.app(scope, receive, rewrite)


def v2_error_body(body: bytes) -> bytes:
    try:
        document = json.loads(body)
        detail = document["error"]
        code, message = str(detail["code"]), str(detail["message"])
    except (ValueError, KeyError, TypeError):
        return body  # not one of ours (already v2-shaped, or not JSON): pass it on as it is
    return json.dumps({"error": message, "code": code}).encode()


# -- routes -------------------------------------------------------------------------------------------------------
_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}}
_NOT_READY = {"model": V2Error, "description": "`not_ready` or `draining`.", "headers": _RETRY_AFTER}
_NOT_FOUND = {"model": V2Error, "description": "No such model or version (`model_not_found`)."}
# /v1/predict's answers (serving.app.PREDICT_ERRORS: one list, so a new refusal is documented on both protocols) in
# the v2 error body; v2's own 400, 404 and 415. No 403: v2 takes no URLs.
INFER_ERRORS: dict[int | str, dict[str, Any]] = {
    **{status: {**answer, "model": V2Error} for status, answer in PREDICT_ERRORS.items() if status != 403},
    400: {"model": V2Error, "description": "Invalid request, tensor or element (`invalid_request`, `invalid_image`)."},
    404: _NOT_FOUND,
    415: {"model": V2Error, "description": "A compressed body (`unsupported_media_type`)."},
}
INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": InferRequest.model_json_schema()},
            BINARY_CONTENT_TYPE: {
                "schema": {"type": "string", "format": "binary"},
                "description": "The binary tensor extension: the JSON request (its length in the "
                "Inference-Header-Content-Length header), then each binary input's bytes.",
            },
        },
    }
}
INFER_OK = {
    200: {
        "description": "JSON, or (outputs asked for as binary) the JSON response followed by each binary output's "
        "bytes, its length in the Inference-Header-Content-Length header.",
        "content": {
            "application/json": {"schema": InferResponse.model_json_schema()},
            BINARY_CONTENT_TYPE: {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
ModelName = Annotated[str, Path(description="The served model's name (GET /v2/models/... or /v1/models has it).")]
ModelVersion = Annotated[str, Path(description="The served model's version.")]


def register_v2(app: FastAPI, spec: V2Spec) -> None:
    """Add the protocol's routes (with and without `/versions/{version}`) and its error bodies to a service app."""
    app.add_middleware(V2ErrorBodies)
    app.openapi = lambda: openapi_naming_the_model(app)  # type: ignore[method-assign]

    def ready_model(runtime: AnyRuntime[Any, Any], name: str, version: str | None) -> Any:
        retry = {"Retry-After": str(runtime.settings.retry_after_s)}
        if not runtime.ready:
            raise NotReady("the model is not loaded yet", headers=retry)
        model = runtime.model
        if name != model.name:
            raise ModelNotFound(f"unknown model {name[:200]!r}; this service serves {model.name!r}")
        if version is not None and version != model.version:
            raise ModelNotFound(f"unknown version {version[:200]!r} of {model.name!r}; it serves {model.version!r}")
        return model

    def metadata(runtime: AnyRuntime[Any, Any], model: Any) -> dict[str, Any]:
        k = spec.default_top_k(runtime.settings)
        return {
            "name": model.name,
            "versions": [model.version],
            "platform": spec.platform,
            "inputs": [{"name": spec.input_name, "datatype": "BYTES", "shape": [-1]}],
            "outputs": [
                {"name": "labels", "datatype": "BYTES", "shape": [-1, k]},
                {"name": "scores", "datatype": "FP32", "shape": [-1, k]},
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(model.labels)]},
            ],
        }

    def config(runtime: AnyRuntime[Any, Any], model: Any) -> dict[str, Any]:
        """Triton's model configuration (perf_analyzer reads it): no implicit batch dimension, the shapes as above."""
        types = {"BYTES": "TYPE_STRING", "FP32": "TYPE_FP32"}
        meta = metadata(runtime, model)
        return {
            "name": model.name,
            "platform": spec.platform,
            "backend": "python",
            "max_batch_size": 0,
            "input": [
                {"name": t["name"], "data_type": types[t["datatype"]], "dims": t["shape"]} for t in meta["inputs"]
            ],
            "output": [
                {"name": t["name"], "data_type": types[t["datatype"]], "dims": t["shape"]} for t in meta["outputs"]
            ],
            "dynamic_batching": {"max_queue_delay_microseconds": int(runtime.settings.max_wait_ms * 1000)},
        }

    @app.get("/v2", tags=["v2"], summary="Server metadata (Open Inference Protocol).", response_model=ServerMetadata)
    async def server_metadata(runtime: RuntimeDep) -> dict[str, Any]:
        return {"name": runtime.service, "version": app.version, "extensions": EXTENSIONS}

    @app.get("/v2/health/live", tags=["v2"], summary="Liveness: the process is up and its event loop answers.")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.get(
        "/v2/health/ready",
        tags=["v2"],
        summary="Readiness: 200 once loaded and warm; 503 before, and while draining.",
        responses={503: _NOT_READY},
    )
    async def ready(runtime: RuntimeDep) -> dict[str, bool]:
        retry = {"Retry-After": str(runtime.settings.retry_after_s)}
        if runtime.draining or not runtime.ready:
            raise NotReady(
                "the server is draining" if runtime.draining else "the model is not loaded yet", headers=retry
            )
        return {"ready": True}

    async def model_metadata(_: Request, runtime: AnyRuntime[Any, Any], name: str, version: str | None) -> Any:
        return metadata(runtime, ready_model(runtime, name, version))

    async def model_ready(_: Request, runtime: AnyRuntime[Any, Any], name: str, version: str | None) -> Any:
        model = ready_model(runtime, name, version)
        if runtime.draining:
            raise NotReady("the server is draining", headers={"Retry-After": str(runtime.settings.retry_after_s)})
        return {"name": model.name, "ready": True}

    async def model_config(_: Request, runtime: AnyRuntime[Any, Any], name: str, version: str | None) -> Any:
        return config(runtime, ready_model(runtime, name, version))

    async def infer(request: Request, runtime: AnyRuntime[Any, Any], name: str, version: str | None) -> Response:
        model = ready_model(runtime, name, version)
        settings = runtime.settings
        # The body comes first here: how many items a request holds (its admission) is written in it.
        body = await runtime.read_body(request, runtime.deadline_of(request))
        document, raws = parse_infer(request, body, spec)
        where, limit = f"input {spec.input_name!r}", spec.max_items(settings)
        if len(raws) > limit:
            raise InvalidRequest(f"{where} has {len(raws)} elements: more than the limit of {limit}")
        try:
            spec.check(raws, settings)
        except ServingError as exc:
            raise _at(exc, where) from None
        top_k = top_k_of(document, len(model.labels), spec.default_top_k(settings))
        await ensure_client_waits(request)
        with admitted_items(runtime, len(raws)) as slots:
            outputs = await run_items(request, runtime, raws, slots, where)
        probabilities = np.asarray([spec.probabilities(output) for output in outputs], dtype=np.float32)
        return infer_response(*encode_response(document, model, probabilities, top_k))

    model_routes: list[tuple[str, str, Callable[..., Any], dict[str, Any]]] = [
        ("", "GET", model_metadata, {"summary": "Model metadata.", "response_model": ModelMetadata}),
        ("/ready", "GET", model_ready, {"summary": "Model readiness: 200 once loaded and warm; 503 before."}),
        ("/config", "GET", model_config, {"summary": "Triton's model configuration extension (perf_analyzer)."}),
        (
            "/infer",
            "POST",
            infer,
            {
                "summary": f"Inference: {spec.input_name} (BYTES [-1]) in; top-k labels and scores (or every "
                "probability) out. JSON, or the binary tensor extension.",
                "responses": {**INFER_OK, **INFER_ERRORS},
                "response_class": Response,
                "openapi_extra": INFER_BODY,
            },
        ),
    ]
    for suffix, method, handler, options in model_routes:
        add_model_route(app, suffix, method, handler, options)


def openapi_naming_the_model(app: FastAPI) -> dict[str, Any]:
    """FastAPI's OpenAPI document, with the served model's name and version as the only values (and examples) of
    the v2 paths' `{name}` and `{version}` (so a client, or schemathesis, finds the real model). Cached once the
    model is loaded; before that the document names no model and is built anew on each request."""
    if app.openapi_schema:
        return app.openapi_schema
    document = get_openapi(title=app.title, version=app.version, routes=app.routes)
    runtime = getattr(app.state, "runtime", None)
    if runtime is None or not runtime.ready:
        return document
    examples = {"name": runtime.model.name, "version": runtime.model.version}
    for path, operations in document.get("paths", {}).items():
        if not path.startswith("/v2/models/"):
            continue
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                if parameter.get("in") == "path" and parameter.get("name") in examples:
                    parameter["schema"]["enum"] = [examples[parameter["name"]]]  # the only one served (else 404)
                    parameter["example"] = examples[parameter["name"]]
    app.openapi_schema = document
    return document


def add_model_route(
    app: FastAPI, suffix: str, method: str, handler: Callable[..., Any], options: dict[str, Any]
) -> None:
    """Register `handler` at /v2/models/{name}<suffix> and at /v2/models/{name}/versions/{version}<suffix>."""

    async def unversioned(request: Request, runtime: RuntimeDep, name: ModelName) -> Any:
        return await handler(request, runtime, name, None)

    async def versioned(request: Request, runtime: RuntimeDep, name: ModelName, version: ModelVersion) -> Any:
        return await handler(request, runtime, name, version)

    options = {"responses": {404: _NOT_FOUND, 503: _NOT_READY}, **options, "tags": ["v2"]}
    label = handler.__name__
    app.add_api_route(f"/v2/models/{{name}}{suffix}", unversioned, methods=[method], name=label, **options)
    app.add_api_route(
        f"/v2/models/{{name}}/versions/{{version}}{suffix}",
        versioned,
        methods=[method],
        name=f"{label}_version",
        **options,
    )

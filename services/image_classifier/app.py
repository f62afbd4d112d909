"""The image classifier's FastAPI app: `create_app()` is the uvicorn factory; /v1/predict takes URL, base64, bytes."""

from __future__ import annotations

import base64
import binascii
import re
import time
from contextlib import AsyncExitStack
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from pydantic import BaseModel, Field, model_validator
from pydantic.json_schema import SkipJsonSchema

from image_classifier.model import ImageClassifier
from image_classifier.settings import Settings
from serving.app import (
    FETCH_ERRORS,
    PREDICT_ERRORS,
    Runtime,
    content_type,
    create_service_app,
    ensure_client_waits,
    get_runtime,
    json_request_body,
    parse_json_body,
    require_exactly_one,
)
from serving.errors import InvalidRequest, Overloaded, UnsupportedMediaType
from serving.fetch import SafeFetcher
from serving.metrics import ServiceMetrics
from serving.v2 import V2Spec, register_v2

SERVICE = "image_classifier"
RAW_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/webp"})


class PredictRequest(BaseModel):
    """JSON body: exactly one of `image_url` (what production sends) or `image_b64`."""

    model_config = {
        "json_schema_extra": {"oneOf": [{"required": ["image_url"]}, {"required": ["image_b64"]}]},
    }

    image_url: Annotated[str, Field(max_length=4096)] | SkipJsonSchema[None] = Field(
        default=None, examples=["https://images.example.com/cat.jpg"]
    )
    image_b64: str | SkipJsonSchema[None] = Field(
        default=None, description="Base64 (standard alphabet) of a JPEG/PNG/WebP image."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> PredictRequest:
        require_exactly_one(self, "image_url", "image_b64")
        return self


class Prediction(BaseModel):
    label: str
    score: float


class PredictResponse(BaseModel):
    predictions: list[Prediction]
    model: dict[str, str]
    timings_ms: dict[str, float | int]  # batch_size is a count


_LINE_BREAKS = re.compile(r"[\r\n]+")


def decode_b64(data: str, what: str = "image_b64") -> bytes:
    """Standard base64; line breaks (MIME and GNU `base64` wrap at 76 columns) are allowed, nothing else is."""
    try:
        return base64.b64decode(_LINE_BREAKS.sub("", data), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest(f"{what} is not valid base64: {exc}") from exc


# The Open Inference Protocol (serving.v2): IMAGE, BYTES [-1], each element an encoded image.
V2 = V2Spec(
    input_name="IMAGE",
    platform="pytorch_torchvision",
    from_binary=bytes,
    from_json=lambda element: decode_b64(element, "the element"),
    probabilities=lambda top: top.probabilities,
    max_items=lambda settings: settings.max_images,
    default_top_k=lambda settings: settings.top_k,
    json_form="the image's base64: JSON cannot carry raw bytes",
)


ImageRuntime = Runtime[Settings, SafeFetcher]
ImageRuntimeDep = Annotated[ImageRuntime, Depends(get_runtime)]


async def image_bytes(request: Request, runtime: ImageRuntime, deadline: float) -> bytes:
    """The image the client means, from whichever of the three request forms it used."""
    body = await runtime.read_body(request, deadline)
    if content_type(request) in RAW_IMAGE_TYPES:
        return body
    if content_type(request) != "application/json":
        raise UnsupportedMediaType(
            f"content type {content_type(request) or '(none)'!r} is not accepted; send application/json "
            f"or one of {sorted(RAW_IMAGE_TYPES)}"
        )
    parsed = parse_json_body(request, body, PredictRequest)
    if parsed.image_b64 is not None:
        return decode_b64(parsed.image_b64)
    assert parsed.image_url is not None
    await ensure_client_waits(request)
    runtime.metrics.stages.labels("fetch").inc()
    try:
        return await runtime.resources.fetch(parsed.image_url, deadline)
    except Overloaded:
        runtime.metrics.rejected.labels("fetch_overloaded").inc()  # the fetch bound, after the body was read
        raise


def register_routes(app: FastAPI) -> None:
    @app.post(
        "/v1/predict",
        response_model=PredictResponse,
        responses={**PREDICT_ERRORS, **FETCH_ERRORS},
        tags=["model"],
        summary="Classify one image given as {image_url}, {image_b64}, or a raw image body.",
        openapi_extra=json_request_body(
            PredictRequest, **{t: {"schema": {"type": "string", "format": "binary"}} for t in sorted(RAW_IMAGE_TYPES)}
        ),
    )
    async def predict(request: Request, runtime: ImageRuntimeDep) -> dict[str, Any]:
        start = time.perf_counter()
        deadline = runtime.deadline_of(request)
        with runtime.reserve() as slot:  # accept or refuse before reading, fetching or decoding anything
            data = await image_bytes(request, runtime, deadline)
            fetched = time.perf_counter()
            await ensure_client_waits(request)
            item, preprocess_s = await runtime.preprocess(data, deadline)
            await ensure_client_waits(request)
            predictions, timings = await runtime.infer(item, deadline, slot)
        model = runtime.model
        return {
            "predictions": predictions,
            "model": {"name": model.name, "version": model.version, "device": str(model.device)},
            "timings_ms": {
                "read": round((fetched - start) * 1000, 3),
                "preprocess": round(preprocess_s * 1000, 3),
                "queue_wait": round(timings.queue_wait_s * 1000, 3),
                "inference": round(timings.inference_s * 1000, 3),
                "postprocess": round(timings.postprocess_s * 1000, 3),
                "batch_size": timings.batch_size,
                "total": round((time.perf_counter() - start) * 1000, 3),
            },
        }

    register_v2(app, V2)


async def open_fetcher(settings: Settings, stack: AsyncExitStack, metrics: ServiceMetrics) -> SafeFetcher:
    fetcher = SafeFetcher(
        max_bytes=settings.fetch_max_bytes,
        allowed_hosts=settings.fetch_allowed_hosts,
        connect_timeout_s=settings.fetch_connect_timeout_s,
        read_timeout_s=settings.fetch_read_timeout_s,
        max_redirects=settings.fetch_max_redirects,
        max_concurrency=settings.fetch_max_concurrency,
        retry_after_s=settings.retry_after_s,
        on_outcome=lambda outcome: metrics.fetches.labels(outcome).inc(),
    )
    return await stack.enter_async_context(fetcher)


def create_app(settings: Settings | None = None) -> FastAPI:
    """uvicorn factory: `uvicorn --factory image_classifier.app:create_app`."""
    return create_service_app(
        service=SERVICE,
        title="Image classifier",
        settings=settings or Settings(),
        model_factory=ImageClassifier,
        register_routes=register_routes,
        resources=open_fetcher,
    )

"""The text classifier's FastAPI app: `create_app()` is the uvicorn factory; POST /v1/predict takes text or texts."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from pydantic import BaseModel, Field, model_validator
from pydantic.json_schema import SkipJsonSchema

from serving.app import (
    PREDICT_ERRORS,
    Runtime,
    create_service_app,
    ensure_client_waits,
    get_runtime,
    json_request_body,
    parse_json_body,
    require_exactly_one,
)
from serving.errors import InvalidRequest
from serving.v2 import V2Spec, register_v2
from text_classifier.model import TextClassifier
from text_classifier.settings import Settings

SERVICE = "text_classifier"


class PredictRequest(BaseModel):
    """Exactly one of `text` or `texts`."""

    model_config = {"json_schema_extra": {"oneOf": [{"required": ["text"]}, {"required": ["texts"]}]}}

    text: str | SkipJsonSchema[None] = Field(default=None, examples=["is this still available?"])
    texts: list[str] | SkipJsonSchema[None] = Field(default=None, examples=[["hello there", "WIN FREE CRYPTO NOW"]])

    @model_validator(mode="after")
    def _exactly_one(self) -> PredictRequest:
        require_exactly_one(self, "text", "texts")
        return self

    def items(self) -> list[str]:
        return [self.text] if self.text is not None else list(self.texts or [])


class TextPrediction(BaseModel):
    label: str
    score: float
    scores: dict[str, float]


class PredictResponse(BaseModel):
    predictions: list[TextPrediction]
    model: dict[str, str]
    timings_ms: dict[str, float | int]  # batch_size is a count


# Control characters other than tab/newline/CR, DEL, and unpaired surrogates (which no encoder can take):
# refused before a text enters a batch, where it could fail the batch.
FORBIDDEN_CHARACTERS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")


def check_texts(texts: list[str], settings: Settings) -> None:
    if not texts:
        raise InvalidRequest("texts is empty")
    if len(texts) > settings.max_texts:
        raise InvalidRequest(f"{len(texts)} texts is more than the limit of {settings.max_texts}")
    for index, text in enumerate(texts):
        if not text.strip():
            raise InvalidRequest(f"text {index} is empty")
        if len(text) > settings.max_text_chars:
            raise InvalidRequest(f"text {index} is longer than {settings.max_text_chars} characters")
        bad = FORBIDDEN_CHARACTERS.search(text)
        if bad:
            raise InvalidRequest(
                f"text {index} has a character that is not allowed (U+{ord(bad.group()):04X} at {bad.start()}): "
                "control characters and unpaired surrogates are refused"
            )


def utf8(element: bytes) -> str:
    try:
        return element.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"not UTF-8 text: {exc.reason} at byte {exc.start}") from None


def probabilities(prediction: dict[str, Any]) -> list[float]:
    """A prediction's scores in label order (the `scores` dict keeps the model's label order)."""
    return list(prediction["scores"].values())


# The Open Inference Protocol (serving.v2): TEXT, BYTES [-1], each element one UTF-8 text; top-1 by default.
V2 = V2Spec(
    input_name="TEXT",
    platform="pytorch_transformers",
    from_binary=utf8,
    from_json=str,
    probabilities=probabilities,
    max_items=lambda settings: settings.max_texts,
    default_top_k=lambda settings: 1,
    check=check_texts,
)

TextRuntimeDep = Annotated[Runtime[Settings, None], Depends(get_runtime)]


def register_routes(app: FastAPI) -> None:
    @app.post(
        "/v1/predict",
        response_model=PredictResponse,
        responses={k: v for k, v in PREDICT_ERRORS.items() if k != 403},  # no URLs here
        tags=["model"],
        summary="Classify one text ({text}) or several ({texts}); one prediction per text, in order.",
        openapi_extra=json_request_body(PredictRequest),
    )
    async def predict(request: Request, runtime: TextRuntimeDep) -> dict[str, Any]:
        start = time.perf_counter()
        deadline = runtime.deadline_of(request)
        settings = runtime.settings
        body = await runtime.read_body(request, deadline)
        texts = parse_json_body(request, body, PredictRequest).items()
        check_texts(texts, settings)
        await ensure_client_waits(request)
        model = runtime.model
        # Each text is one batch item, so a multi-text request fills batches the same way many clients do.
        items = [item for item, _ in [await runtime.preprocess(t, deadline) for t in texts]]
        results = await asyncio.gather(*(runtime.infer(item, deadline) for item in items))
        slowest = max(results, key=lambda r: r[1].queue_wait_s + r[1].inference_s)[1]
        return {
            "predictions": [prediction for prediction, _ in results],
            "model": {"name": model.name, "version": model.version, "device": str(model.device)},
            "timings_ms": {
                "queue_wait": round(slowest.queue_wait_s * 1000, 3),
                "inference": round(slowest.inference_s * 1000, 3),
                "postprocess": round(slowest.postprocess_s * 1000, 3),
                "batch_size": slowest.batch_size,
                "total": round((time.perf_counter() - start) * 1000, 3),
            },
        }

    register_v2(app, V2)


def create_app(settings: Settings | None = None) -> FastAPI:
    """uvicorn factory: `uvicorn --factory text_classifier.app:create_app`."""
    return create_service_app(
        service=SERVICE,
        title="Text classifier",
        settings=settings or Settings(),
        model_factory=TextClassifier,
        register_routes=register_routes,
    )

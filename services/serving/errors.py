"""Typed serving errors and the one place where they (and everything else) are mapped to HTTP responses."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class ServingError(Exception):
    """Base class: each subclass carries its HTTP status and a stable machine-readable code."""

    status_code = 500
    code = "internal_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class InvalidRequest(ServingError):
    status_code, code = 400, "invalid_request"


class InvalidImage(ServingError):
    status_code, code = 400, "invalid_image"


class UnsupportedMediaType(ServingError):
    status_code, code = 415, "unsupported_media_type"


class PayloadTooLarge(ServingError):
    status_code, code = 413, "payload_too_large"


class UrlForbidden(ServingError):
    status_code, code = 403, "url_forbidden"


class FetchFailed(ServingError):
    status_code, code = 400, "fetch_failed"


class QueueFull(ServingError):
    status_code, code = 503, "queue_full"


class Draining(ServingError):
    status_code, code = 503, "draining"


class NotReady(ServingError):
    status_code, code = 503, "not_ready"


class DeadlineExceeded(ServingError):
    status_code, code = 504, "deadline_exceeded"


class ModelLoadError(ServingError):
    code = "model_load_error"


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    return {"error": {"code": code, "message": message}}


def install_error_handlers(app: FastAPI) -> None:
    """Map typed errors, validation errors, HTTP errors and unexpected faults to `{"error": {...}}` bodies."""

    @app.exception_handler(ServingError)
    async def _serving_error(_: Request, exc: ServingError) -> JSONResponse:
        if exc.status_code >= 500 and exc.status_code != 503:
            log.warning("request failed: %s", exc.message)
        return JSONResponse(error_body(exc.code, exc.message), exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err.get('loc', ()) if p != 'body') or 'body'}: {err.get('msg')}"
            for err in exc.errors()
        )
        return JSONResponse(error_body("invalid_request", problems or "invalid request"), 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(error_body(code, str(exc.detail)), exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return JSONResponse(error_body("internal_error", "internal server error"), 500)

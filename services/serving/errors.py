"""Typed serving errors and the one place where they (and everything else) are mapped to HTTP responses."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

log = logging.getLogger(__name__)


class ServingError(Exception):
    """Base class: each subclass carries its HTTP status and a stable machine-readable code."""

    status_code = 500
    code = "internal_error"
    log_traceback = True  # for a 5xx other than 503: where in our code it happened

    def __init__(self, message: str, *, headers: dict[str, str] | None = None, detail: str | None = None) -> None:
        super().__init__(detail or message)
        self.message = message  # what the client sees
        self.detail = detail or message  # what the log sees (may name addresses, ports, library errors)
        self.headers = headers or {}


class InvalidRequest(ServingError):
    status_code, code = 400, "invalid_request"


class InvalidImage(ServingError):
    status_code, code = 400, "invalid_image"


class ModelNotFound(ServingError):
    """A model name (or version) this service does not serve (the Open Inference Protocol's paths name it)."""

    status_code, code = 404, "model_not_found"


class UnsupportedMediaType(ServingError):
    status_code, code = 415, "unsupported_media_type"


class PayloadTooLarge(ServingError):
    status_code, code = 413, "payload_too_large"


class UnprocessableInput(ServingError):
    """The model failed on this input alone, while the other items of its batch succeeded."""

    status_code, code = 422, "unprocessable_input"


class UrlForbidden(ServingError):
    """A target the policy does not allow: not http(s), credentials, not allow-listed and not public, or a host that
    is not allow-listed and does not resolve (resolution is part of the check, so answers cannot map names). Refused
    before any connection, with one public answer for every such case; the reason goes to the log."""

    status_code, code = 403, "url_forbidden"
    PUBLIC_MESSAGE = "the image URL is not allowed"

    def __init__(self, detail: str) -> None:
        super().__init__(self.PUBLIC_MESSAGE, detail=detail)


class UpstreamUnavailable(ServingError):
    """A target the policy allows could not be reached (DNS failure of an allow-listed host, connection refused or
    reset, an upstream 5xx): the image host's outage, not the client's mistake."""

    status_code, code = 502, "upstream_unavailable"
    log_traceback = False  # the upstream failed, not our code: the reason is in the message
    PUBLIC_MESSAGE = "the image host could not be reached"

    def __init__(self, detail: str) -> None:
        super().__init__(self.PUBLIC_MESSAGE, detail=detail)


class FetchFailed(ServingError):
    status_code, code = 400, "fetch_failed"


class QueueFull(ServingError):
    status_code, code = 503, "queue_full"


class Overloaded(ServingError):
    """Refused at admission, before any work: too many requests in flight (or image URLs being fetched)."""

    status_code, code = 503, "overloaded"


class Draining(ServingError):
    """Refused because the server is shutting down: the connection closes after the answer, so a keep-alive client
    reconnects (to another replica) rather than reuse it."""

    status_code, code = 503, "draining"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message, headers={**(headers or {}), "Connection": "close"})


class ClientClosedRequest(ServingError):
    """The client went away before its answer (nginx's 499): counted as such, never logged as an error."""

    status_code, code = 499, "client_closed_request"


class RequestTimeout(ServingError):
    """The client did not send its request line and headers before the header deadline (answered by the connection,
    see serving.protocol), or its body before the request's deadline."""

    status_code, code = 408, "request_timeout"


class NotReady(ServingError):
    status_code, code = 503, "not_ready"


class DeadlineExceeded(ServingError):
    status_code, code = 504, "deadline_exceeded"


class UpstreamTimeout(DeadlineExceeded):
    """A target the policy allows did not connect or answer in time (connect or read timeout, or the request's
    deadline passed while fetching it)."""

    status_code, code = 504, "upstream_timeout"
    log_traceback = False  # the upstream failed, not our code: the reason is in the message


class HeadersTooLarge(ServingError):
    """The request line and headers are larger, or more numerous, than the server's limits (nginx and Envoy: 431)."""

    status_code, code = 431, "headers_too_large"


class ModelLoadError(ServingError):
    code = "model_load_error"


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    return {"error": {"code": code, "message": message}}


def error_response(exc: ServingError) -> JSONResponse:
    """The one mapping of a typed error to its answer: status, `{"error": ...}` body and headers (Retry-After, ...).
    Used by the exception handler and by admission, which refuses before any route runs."""
    if exc.status_code >= 500 and exc.status_code != 503:
        # A fault or a deadline: the traceback says where it happened. Refusals (503) are load, not faults.
        log.warning("request failed (%s): %s", exc.code, exc.detail, exc_info=exc if exc.log_traceback else None)
    elif exc.detail != exc.message:
        log.info("request refused (%s): %s", exc.code, exc.detail)
    return JSONResponse(error_body(exc.code, exc.message), exc.status_code, headers=exc.headers)


def install_error_handlers(app: FastAPI) -> None:
    """Map typed errors, validation errors, HTTP errors and unexpected faults to `{"error": {...}}` bodies."""

    @app.exception_handler(ServingError)
    async def _serving_error(_: Request, exc: ServingError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(ClientDisconnect)
    async def _client_gone(_: Request, exc: ClientDisconnect) -> JSONResponse:
        return error_response(ClientClosedRequest("the client closed the connection before the answer"))

    @app.exception_handler(RecursionError)
    async def _too_deep(_: Request, exc: RecursionError) -> JSONResponse:
        # Input nested deeper than any parser or validator should follow is the client's problem, not a fault.
        log.info("request refused: nested too deeply (%s)", exc)
        return JSONResponse(error_body(InvalidRequest.code, "the request is nested too deeply"), 400)

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

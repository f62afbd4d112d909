"""Connection-level limits on uvicorn's httptools protocol: a header-read deadline, header size and count caps, and a
per-process connection cap, each answered with a JSON error and a closed connection before any ASGI code runs.

uvicorn has none of these (httptools accepts a 1 MB header, or 10,000 of them, and a connection that never finishes
its headers is held for ever), and nothing in front of a pod on an NLB does this job. The class below extends
uvicorn's own `HttpToolsProtocol` by a few parser callbacks and one timer, so everything else (keep-alive, pipelining,
flow control, the graceful drain on SIGTERM) stays uvicorn's.

- **Header deadline.** The request line and headers must be complete `header_timeout_s` after the connection opened,
  or after its previous answer (so keep-alive idle time counts: uvicorn's own `timeout_keep_alive` is reset by every
  byte, and a client that sends one byte every few seconds used to keep it for ever). A connection with part of a
  request gets 408 `request_timeout`; one with none (idle) is closed without an answer, as an idle keep-alive
  connection is, so that a client that is just writing a request into it does not take the 408 for its answer.
- **Header limits.** Past `max_header_bytes` (request line and headers) or `max_headers`: 431 `headers_too_large`.
  Counted as the bytes arrive, so an oversized head is refused after at most one read beyond the limit, without
  being buffered whole.
- **Connection cap.** Past `max_connections` open connections in this process, a request gets 503 `overloaded` with
  Retry-After and its connection is closed; probes and the metrics scrape (`PROBE_PATHS`) are served up to
  `PROBE_MARGIN` connections more, so the kubelet still sees a live, ready pod while clients are refused. Past that
  margin a new connection is answered 503 at once and closed.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from serving.errors import HeadersTooLarge, InvalidRequest, Overloaded, RequestTimeout, ServingError, error_body
from serving.settings import ServingSettings

log = logging.getLogger(__name__)

# What the kubelet's probes and the Datadog scrape ask for (the manifests' probes use these paths on the serving port).
PROBE_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
# Connections past max_connections that only a probe or a scrape may use: the kubelet's three probes and the Agent
# each open one at a time, so 16 leaves room for several rounds of them arriving together.
PROBE_MARGIN = 16
# After an error answer the connection reads and drops what the client still sends, for up to this long, before it
# closes: closing with unread bytes would reset it, and a client still sending (a 1 MB header) would then lose the
# answer to the reset (nginx's lingering close does the same).
LINGER_S = 2.0
# Per request line and per header: the method, the spaces and ": ", and the line ends, which the parser's callbacks
# do not report.
LINE_OVERHEAD = 4


@dataclass(frozen=True)
class ConnectionLimits:
    """What one connection may do before its request reaches the app; the defaults are ServingSettings' defaults."""

    header_timeout_s: float
    max_header_bytes: int
    max_headers: int
    max_connections: int
    retry_after_s: int

    @classmethod
    def of(cls, settings: ServingSettings) -> ConnectionLimits:
        return cls(
            header_timeout_s=settings.header_timeout_s,
            max_header_bytes=settings.max_header_bytes,
            max_headers=settings.max_headers,
            max_connections=settings.max_connections,
            retry_after_s=settings.retry_after_s,
        )


@dataclass(frozen=True)
class _Binding:
    limits: ConnectionLimits
    on_refusal: Callable[[str], None]  # counts a refusal by reason


class _Answered(Exception):
    """Raised from a parser callback once the connection has been answered: stops the parser at that byte."""


def _ignore(reason: str) -> None:
    return None


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits above; bind the limits with `limited_protocol`."""

    binding: ClassVar[_Binding | None] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        assert self.binding is not None, "bind the limits with limited_protocol()"
        self._bound = self.binding.limits
        self._on_refusal = self.binding.on_refusal
        self._head_timer: asyncio.TimerHandle | None = None
        self._linger: asyncio.TimerHandle | None = None
        self._between_requests = True  # no byte of a request since the connection opened or its last request ended
        self._in_head = True  # the bytes arriving now belong to a request line or headers
        self._head_bytes_read = 0  # bytes received while the head is incomplete (it may be buffered in the parser)
        self._head_bytes = 0  # the request line and the complete headers, as the parser reported them
        self._headers = 0
        self._over_cap = False
        self._answered = False

    # -- the connection ------------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        open_now = len(self.connections)  # this one included
        if open_now > self._bound.max_connections + PROBE_MARGIN:
            self._answer(self._overloaded(), "too_many_connections", linger=False)  # shed it now: no lingering
            return
        self._over_cap = open_now > self._bound.max_connections
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._linger is not None:
            self._linger.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # uvicorn's data_received, but its answers are ours (JSON, counted) and a refused head stops the parser.
        if self._answered:
            return
        self._unset_keepalive_if_required()
        if self._in_head:
            self._head_bytes_read += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError as exc:
            if not isinstance(exc.__context__, _Answered):
                self._answer(InvalidRequest("invalid HTTP request", detail=f"invalid HTTP request: {exc}"), None)
            return
        if self._in_head and self._head_bytes_read > self._bound.max_header_bytes:
            self._answer(self._too_large(f"more than {self._bound.max_header_bytes} bytes"), "headers_too_large")

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.timeout_keep_alive_task is not None:  # uvicorn armed its keep-alive timer: idle, waiting for a head
            self._arm()

    # -- the parser's callbacks ------------------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._between_requests = False

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self._grow(len(url) + LINE_OVERHEAD)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers += 1
        if self._headers > self._bound.max_headers:
            self._refuse(self._too_large(f"more than {self._bound.max_headers} headers"), "headers_too_large")
        self._grow(len(name) + len(value) + LINE_OVERHEAD)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm()
        self._in_head = False
        if self._over_cap and httptools.parse_url(self.url).path.decode("latin-1") not in PROBE_PATHS:
            self._refuse(self._overloaded(), "too_many_connections")
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._between_requests, self._in_head = True, True
        self._head_bytes_read = self._head_bytes = self._headers = 0

    # -- limits ----------------------------------------------------------------------------------------------------
    def _grow(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self._bound.max_header_bytes:
            self._refuse(self._too_large(f"more than {self._bound.max_header_bytes} bytes"), "headers_too_large")

    def _too_large(self, what: str) -> HeadersTooLarge:
        return HeadersTooLarge(f"the request line and headers are too large ({what})")

    def _overloaded(self) -> Overloaded:
        return Overloaded(
            f"the server is at its limit of {self._bound.max_connections} connections; retry later",
            headers={"Retry-After": str(self._bound.retry_after_s)},
        )

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(self._bound.header_timeout_s, self._head_deadline)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_deadline(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self._answered:
            return
        if self._between_requests:
            self._answered = True
            self._on_refusal("idle_timeout")
            self.transport.close()
            return
        late = RequestTimeout(f"the request line and headers did not arrive within {self._bound.header_timeout_s:g}s")
        self._answer(late, "header_timeout")

    def _refuse(self, error: ServingError, reason: str) -> None:
        """Answer from inside a parser callback, and stop the parser."""
        self._answer(error, reason)
        raise _Answered

    def _answer(self, error: ServingError, reason: str | None, linger: bool = True) -> None:
        """Answer `error` as `{"error": ...}` JSON and close the connection (after LINGER_S at most, dropping what the
        client still sends), unless a response is being written on it (a pipelined request's head went wrong): then
        that response is the last one."""
        self._disarm()
        self._answered = True
        if reason is not None:
            self._on_refusal(reason)
        log.info("connection refused (%s): %s", error.code, error.detail)
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False
            self.flow.pause_reading()
            return
        body = json.dumps(error_body(error.code, error.message)).encode()
        headers = [
            *self.server_state.default_headers,
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
            *((name.lower().encode(), value.encode()) for name, value in error.headers.items()),
        ]
        head = b"".join([STATUS_LINE[error.status_code], *(name + b": " + value + b"\r\n" for name, value in headers)])
        self.transport.write(head + b"\r\n" + body)
        if linger and self.transport.can_write_eof():
            self.transport.write_eof()  # the client reads the answer, then the end; its own close ends ours
            self._linger = self.loop.call_later(LINGER_S, self.transport.close)
        else:
            self.transport.close()


def limited_protocol(
    limits: ConnectionLimits, on_refusal: Callable[[str], None] = _ignore
) -> type[LimitedHttpToolsProtocol]:
    """The protocol class to give uvicorn (`Config(http=...)`), bound to `limits` and to a refusal counter."""

    class Bound(LimitedHttpToolsProtocol):
        binding = _Binding(limits, on_refusal)

    return Bound

"""Connection-level limits and honest fetch failures on a real image service process, over raw loopback sockets:
slowloris connections are answered 408 and closed while a normal client is served, oversized heads get 431, the
connection cap refuses with a JSON 503 (probes still pass) and recovers, and each way an allowed image host fails is
its own 5xx and fetch outcome. Deadlines are set short here (1 s); every wait is bounded far above them."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from image_classifier.demo import render_sample
from loadkit import SCALE, Call, Http11Client, p99, record
from serving.protocol import PROBE_MARGIN
from testkit import UPSTREAM_FAILURES, FailingUpstreams, Server, encode, run_server

HEADER_TIMEOUT_S = 1.0
PATIENCE_S = 60.0  # how long a test waits for what the server must do within HEADER_TIMEOUT_S
PARTIAL_HEAD = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-One: 1\r\n"  # the request line and two headers, then nothing
SLOWLORIS_CONNECTIONS = int(50 * SCALE)  # `invoke services.chaos` (scale 10): 500
STORM_FETCHES = 200  # concurrent image_url requests in the slow-upstream storm (the probe)
MAX_CONNECTIONS = 8


@dataclass
class Answer:
    """What the server wrote on a connection before closing it (status 0: nothing)."""

    status: int
    headers: dict[str, str]
    body: bytes
    closed: bool  # the server closed the connection after it

    @property
    def code(self) -> str | None:
        try:
            return str(json.loads(self.body)["error"]["code"])
        except (ValueError, KeyError, TypeError):
            return None


def connect(server: Server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=PATIENCE_S)


def read_answer(sock: socket.socket) -> Answer:
    """One answer, then whether the connection is closed (read to the end for a `Connection: close` answer)."""
    data, closed = b"", False
    try:
        while not _complete(data):
            chunk = sock.recv(65536)
            if not chunk:
                closed = True
                break
            data += chunk
        if not closed and b"connection: close" in data.partition(b"\r\n\r\n")[0].lower():
            closed = sock.recv(65536) == b""
    except ConnectionResetError:
        closed = True
    if b"\r\n\r\n" not in data:
        return Answer(0, {}, data, closed)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return Answer(int(lines[0].split()[1]), headers, body, closed)


def _complete(data: bytes) -> bool:
    head, found, body = data.partition(b"\r\n\r\n")
    if not found:
        return False
    length = re.search(rb"content-length: *(\d+)", head, re.IGNORECASE)
    return len(body) >= (int(length.group(1)) if length else 0)


def ask(server: Server, head: bytes) -> Answer:
    with connect(server) as sock:
        sock.sendall(head)
        return read_answer(sock)


def get(path: str, *headers: bytes) -> bytes:
    return b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n"


def metric(server: Server, name: str, **labels: str) -> float:
    """One sample of the service's /metrics (0 when absent)."""
    text = ask(server, get("/metrics")).body.decode()
    selector = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = rf"^image_classifier_{name}" + (rf"\{{{re.escape(selector)}\}}" if labels else "") + r" (\S+)$"
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


@pytest.fixture(scope="module")
def failing() -> Iterator[FailingUpstreams]:
    with FailingUpstreams() as upstreams:
        yield upstreams


@pytest.fixture(scope="module")
def limited(
    bundles: dict[str, Path], failing: FailingUpstreams, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """An image service with a 1 s header deadline, default header limits, and every failing upstream allowed."""
    env = {
        "MODEL_URI": str(bundles["image-demo"]),
        "HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
        "FETCH_ALLOWED_HOSTS": failing.allow_list,
        "FETCH_CONNECT_TIMEOUT_S": "0.5",
        "FETCH_READ_TIMEOUT_S": "0.5",
        "REQUEST_TIMEOUT_S": "3",
    }
    with run_server("image_classifier", env, tmp_path_factory.mktemp("limited")) as server:
        yield server


# -- the header deadline -------------------------------------------------------------------------------------------
def test_slowloris_connections_get_408_and_are_closed_while_a_normal_client_is_served(limited: Server) -> None:
    before = metric(limited, "rejected_total", reason="header_timeout")
    with ExitStack() as stack:
        held = [stack.enter_context(connect(limited)) for _ in range(SLOWLORIS_CONNECTIONS)]
        for sock in held:
            sock.sendall(PARTIAL_HEAD)
        image = encode(render_sample("square", 4))
        with limited.client() as client:  # served meanwhile, on a connection of its own
            served = [client.get("/healthz").status_code, client.get("/readyz").status_code]
            predicted = client.post("/v1/predict", content=image, headers={"content-type": "image/jpeg"})
        answers = [read_answer(sock) for sock in held]  # each blocks until the server answers or closes
    held_open = sum(not (a.status == 408 and a.closed) for a in answers)
    record(
        "slowloris",
        {
            "connections": SLOWLORIS_CONNECTIONS,
            "header_timeout_s": HEADER_TIMEOUT_S,
            "answers": {str(k): v for k, v in Counter(a.status for a in answers).items()},
            "held_after_deadline": held_open,
            "normal_client": [*served, predicted.status_code],
        },
    )
    assert served == [200, 200]
    assert predicted.status_code == 200, predicted.text
    assert {(a.status, a.code, a.closed) for a in answers} == {(408, "request_timeout", True)}, answers[:3]
    assert metric(limited, "rejected_total", reason="header_timeout") - before == SLOWLORIS_CONNECTIONS


def test_the_deadline_covers_a_kept_alive_connection_that_trickles_its_next_request(limited: Server) -> None:
    """uvicorn's keep-alive timer restarts at every byte; the header deadline does not, so the trickle ends."""
    with connect(limited) as sock:
        sock.sendall(get("/healthz"))
        first = read_answer(sock)
        trickled = 0
        sock.settimeout(0.3)
        answer = None
        give_up = time.monotonic() + PATIENCE_S
        for byte in PARTIAL_HEAD * 1000:
            try:
                sock.sendall(bytes([byte]))
                trickled += 1
                if sock.recv(1, socket.MSG_PEEK):
                    break
            except TimeoutError:
                if time.monotonic() > give_up:
                    break
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
        sock.settimeout(PATIENCE_S)
        answer = read_answer(sock)
    assert first.status == 200
    assert (answer.status, answer.code, answer.closed) == (408, "request_timeout", True)
    assert trickled < len(PARTIAL_HEAD) * 1000


def test_an_idle_connection_is_closed_without_an_answer(limited: Server) -> None:
    with connect(limited) as sock:
        closed = read_answer(sock)
    assert (closed.status, closed.body, closed.closed) == (0, b"", True)


# -- header limits -------------------------------------------------------------------------------------------------
HEADS = {
    "one header of 1 MiB": (get("/healthz", b"X-Big: " + b"a" * (1 << 20)), 431),
    "10,000 headers": (get("/healthz", *(b"X-%d: v" % i for i in range(10_000))), 431),
    "101 headers": (get("/healthz", *(b"X-%d: v" % i for i in range(100))), 431),  # Host is the 101st
    "a request line of 70 KiB": (get("/healthz?" + "q" * 70_000), 431),
    "100 headers": (get("/healthz", *(b"X-%d: v" % i for i in range(99))), 200),
    "60 KiB of headers": (get("/healthz", *(b"X-%d: " % i + b"v" * 6000 for i in range(10))), 200),
}


HEAD_ANSWERS: dict[str, int] = {}


@pytest.mark.parametrize("name", list(HEADS))
def test_heads_past_the_limits_get_431_and_the_connection_is_closed(limited: Server, name: str) -> None:
    head, status = HEADS[name]
    answer = ask(limited, head)
    HEAD_ANSWERS[name] = answer.status
    record("header_limits", dict(HEAD_ANSWERS))
    assert answer.status == status, (name, answer)
    if status == 431:
        assert (answer.code, answer.closed) == ("headers_too_large", True)
        assert answer.headers["content-type"] == "application/json"
    assert ask(limited, get("/readyz")).status == 200  # and the server keeps serving


# -- honest fetch failures -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(UPSTREAM_FAILURES))
def test_each_upstream_failure_has_its_status_and_outcome(
    limited: Server, failing: FailingUpstreams, kind: str
) -> None:
    status, code = UPSTREAM_FAILURES[kind]
    before = metric(limited, "fetch_total", outcome=code)
    with limited.client() as client:
        response = client.post("/v1/predict", json={"image_url": failing.urls[kind]})
    assert (response.status_code, response.json()["error"]["code"]) == (status, code), response.text
    assert metric(limited, "fetch_total", outcome=code) - before == 1


def test_a_slow_upstream_storm_gets_fast_refusals_and_timeouts_only(limited: Server, failing: FailingUpstreams) -> None:
    """200 concurrent fetches of a trickling allowed host: the fetches admitted end 504 `upstream_timeout` at the
    deadline, the rest are refused 503 at once; nothing else. The refusal times are reported, not asserted."""

    async def storm() -> list[tuple[int, str | None, float]]:
        client = Http11Client(limited.url)
        call = Call.json("/v1/predict", {"image_url": failing.urls["trickle"]})
        shots = await asyncio.gather(*(client.send(call, PATIENCE_S) for _ in range(STORM_FETCHES)))
        client.close()
        return [(s.status, s.code, s.seconds) for s in shots]

    shots = asyncio.run(storm())
    statuses = Counter(f"{status} {code}" for status, code, _ in shots)
    refusals = sorted(seconds for status, _, seconds in shots if status == 503)
    record(
        "slow_upstream_storm",
        {
            "fetches": STORM_FETCHES,
            "statuses": dict(statuses),
            "refusal_p50_s": round(refusals[len(refusals) // 2], 4) if refusals else None,
            "refusal_p99_s": round(p99(refusals), 4) if refusals else None,
        },
    )
    assert set(statuses) <= {"503 overloaded", "504 upstream_timeout"}, statuses
    assert statuses["503 overloaded"] > 0
    assert statuses["504 upstream_timeout"] > 0


def test_a_forbidden_target_stays_403_and_is_counted(limited: Server) -> None:
    before = metric(limited, "fetch_total", outcome="url_forbidden")
    with limited.client() as client:
        response = client.post("/v1/predict", json={"image_url": "http://169.254.169.254/latest/meta-data/"})
    assert (response.status_code, response.json()["error"]["code"]) == (403, "url_forbidden")
    assert metric(limited, "fetch_total", outcome="url_forbidden") - before == 1


# -- the connection cap --------------------------------------------------------------------------------------------
@pytest.fixture
def capped(image_server_factory: Callable[..., AbstractContextManager[Server]]) -> Iterator[Server]:
    with image_server_factory(MAX_CONNECTIONS=str(MAX_CONNECTIONS), HEADER_TIMEOUT_S="120") as server:
        yield server


def wait_for(check: Callable[[], bool], what: str) -> None:
    give_up = time.monotonic() + PATIENCE_S
    while not check():
        assert time.monotonic() < give_up, what
        time.sleep(0.05)


def test_past_the_connection_cap_requests_get_503_probes_pass_and_it_recovers(capped: Server) -> None:
    with ExitStack() as stack:
        held = [stack.enter_context(connect(capped)) for _ in range(MAX_CONNECTIONS)]
        # /metrics is a probe path, so it is answered through the margin while the cap is full.
        wait_for(lambda: metric(capped, "open_connections") >= MAX_CONNECTIONS + 1, "the held connections count")
        refused = ask(capped, get("/v1/models"))
        probes = [ask(capped, get(path)).status for path in ("/healthz", "/readyz", "/metrics")]
        # Use up the probes' margin too (the last connection after the count is seen, as a scrape needs one): then
        # even a probe's connection is answered 503 at once.
        held += [stack.enter_context(connect(capped)) for _ in range(PROBE_MARGIN - 1)]
        wait_for(lambda: metric(capped, "open_connections") >= MAX_CONNECTIONS + PROBE_MARGIN, "the margin fills")
        held.append(stack.enter_context(connect(capped)))
        with connect(capped) as sock:
            at_once = read_answer(sock)  # answered without sending a byte
        for sock in held:
            sock.close()
    assert (refused.status, refused.code, refused.closed) == (503, "overloaded", True), refused
    assert refused.headers["retry-after"] == "1"
    assert probes == [200, 200, 200]
    assert (at_once.status, at_once.code, at_once.closed) == (503, "overloaded", True)
    # Recovery: once the held connections are gone, requests are served again.
    wait_for(lambda: ask(capped, get("/v1/models")).status == 200, "the cap frees up")
    refusals = metric(capped, "rejected_total", reason="too_many_connections")
    record(
        "connection_cap",
        {
            "max_connections": MAX_CONNECTIONS,
            "probe_margin": PROBE_MARGIN,
            "past_the_cap": refused.status,
            "probes_past_the_cap": probes,
            "past_the_margin": at_once.status,
            "recovered": True,
            "refusals_counted": refusals,
        },
    )
    assert refusals >= 2

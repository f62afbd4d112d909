"""Reliability on real processes: overload gives fast 503s, the image_url path recovers, bad items fail alone.

Every load here is bounded (a few hundred requests, a few seconds) and aimed at 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import pytest

from image_classifier.demo import render_sample
from loadkit import SCALE, Call, Http11Client, Shot, open_loop, p99, record, report_timing, saturation, statuses
from serving.looplag import LoopLag
from testkit import Samples, Server, WorkCounts, encode, run_server, scrape

PNG = encode(render_sample("circle", 7), "PNG")
JPEG = encode(render_sample("square", 8))
# What the 503s' p99 should be on cores of the service's own: a target the chaos report states as met or missed,
# never a bound CI asserts (a slower or busier machine misses any latency bound that holds on this one). CI asserts
# what a refusal is instead: a 503 with Retry-After, before the body is read and with no fetch or decode begun,
# proved by the service's own counters.
REFUSAL_TARGET_P99_S = 0.05
# One attack in CI proves the behaviour; the chaos run repeats it to show the spread of the timings.
ATTEMPTS = 3 if SCALE > 1 else 1


# An image origin in a process of its own, so its threads do not share a GIL with the load generator: HTTP/1.0, one
# connection per image (as in the field report), 20 ms per answer.
ORIGIN = """
import http.server, sys, time
body = open(sys.argv[1], "rb").read()
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/trickle":  # a slow upstream: one byte every 0.2 s of a 1,000-byte body
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            for _ in range(1000):
                self.wfile.write(b"t")
                self.wfile.flush()
                time.sleep(0.2)
            return
        time.sleep(0.02)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
print(server.server_address[1], flush=True)
server.serve_forever()
"""


@pytest.fixture(scope="module")
def image_origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    image = tmp_path_factory.mktemp("origin") / "img.png"
    image.write_bytes(PNG)
    process = subprocess.Popen([sys.executable, "-c", ORIGIN, str(image)], stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        yield f"127.0.0.1:{port}"
    finally:
        process.kill()
        process.wait(10)


def by_url(origin: str) -> Call:
    return Call.json("/v1/predict", {"image_url": f"http://{origin}/img.png"})


# A photo-sized PNG (no JPEG draft decoding to make it cheap): decoding costs real CPU, as in production, so a
# service that decides to refuse only after decoding shows it in its refusal times.
RAW = Call("/v1/predict", "image/png", encode(render_sample("square", 8, size=768), "PNG"))


@pytest.fixture(scope="module")
def image_service_for_load(
    bundles: dict[str, Path], image_origin: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """Default admission settings (64 requests in flight, 32 image URL fetches), batches of up to 8."""
    env = {"MODEL_URI": str(bundles["image-demo"]), "FETCH_ALLOWED_HOSTS": image_origin, "MAX_BATCH_SIZE": "8"}
    with run_server("image_classifier", env, tmp_path_factory.mktemp("load")) as server:
        yield server


async def test_image_url_path_recovers_right_after_an_overload(
    image_service_for_load: Server, image_origin: str
) -> None:
    """Regression for the wedge: after a burst at twice the URL path's saturation, whose clients give up after 1.5 s
    (as a load balancer or impatient client does), one request to a healthy upstream must succeed at once."""
    server, send = image_service_for_load, by_url(image_origin)
    rate = 2 * await saturation(server.url, send, concurrency=32, seconds=1.5)
    shots = await open_loop(server.url, send, rate=rate, seconds=min(4.0 * SCALE, 800 * SCALE / rate), timeout_s=1.5)
    counts = statuses(shots)
    after = await Http11Client(server.url).send(by_url(image_origin), 30.0)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        ready = await client.get("/readyz")
        metrics = (await client.get("/metrics")).text
    log = server.log()
    print(f"overload {dict(counts)}; then one request: {after.status} in {after.seconds:.3f}s")
    record("url_recovery", {"overload": dict(counts), "after": after.status, "recovery_s": round(after.seconds, 3)})
    report_timing("url_recovery", after.seconds, 2.0, "one image_url request right after an overload of that path")
    assert after.status == 200, (after, counts)  # a wedged fetcher answers 503/504 or never, not 200
    assert ready.status_code == 200
    assert set(counts) <= {0, 200, 503}, counts  # 0: the client gave up (its own 1.5 s timeout)
    assert 'status="500"' not in metrics
    assert "ClientDisconnect" not in log
    assert '"level": "ERROR"' not in log


def measured_text(seconds: list[float]) -> str:
    return f"{sorted(seconds)[len(seconds) // 2]:.3f}/{p99(seconds):.3f}s" if seconds else "-"


def metric(response: httpx.Response, status: str) -> float:
    """The count of /v1/predict answers with `status` in a /metrics response (0 when there are none)."""
    prefix = f'image_classifier_requests_total{{endpoint="/v1/predict",status="{status}"}} '
    return next((float(line.removeprefix(prefix)) for line in response.text.splitlines() if line.startswith(prefix)), 0)


def check_overload(shots: list[Shot], deadline_s: float) -> None:
    """Every answer is a 200 or a 503 with Retry-After, both happen, and none came after its request's deadline."""
    counts = statuses(shots)
    refused = [s for s in shots if s.status == 503]
    assert set(counts) <= {200, 503}, counts
    assert counts[200] > 0, counts
    assert refused, counts
    assert all(s.retry_after == "1" and s.code in {"overloaded", "queue_full"} for s in refused)
    assert max(s.seconds for s in shots) < deadline_s, "a request outlived its deadline"


async def counted(url: str, before: Samples, answered: int) -> WorkCounts:
    """The service's own counts since `before`, once it has counted all `answered` answers (it counts each just after
    sending it, so a scrape can overtake the last few)."""
    for _ in range(100):
        work = WorkCounts.between("image_classifier", before, await asyncio.to_thread(scrape, url))
        if sum(work.answers.values()) >= answered:
            return work
        await asyncio.sleep(0.1)
    return work


def check_refusals_did_no_work(shots: list[Shot], work: WorkCounts, fetches: bool) -> None:
    """What refused requests cost, from the service's own counters: a request refused at admission (in-flight limit
    or batch queue) read no body, fetched nothing and decoded nothing; only admitted requests began any work."""
    counts = statuses(shots)
    assert work.answers == {"200": counts[200], "503": counts[503]}, (work, counts)  # the service saw what we saw
    assert sum(work.refused.values()) == counts[503], work  # each 503 is a counted refusal
    admitted = work.stage("admitted")
    assert admitted == counts[200] + work.refused.get("fetch_overloaded", 0), work
    assert work.stage("body") == admitted, "a request refused at admission read its body"
    assert work.stage("fetch") == (admitted if fetches else 0), "a refused request fetched its image"
    assert work.stage("preprocess") == counts[200], "a refused request was decoded"


@pytest.mark.parametrize("path", ["raw", "image_url"])
async def test_twice_the_saturation_rate_gets_only_200s_and_503s_that_did_no_work(
    image_service_for_load: Server, image_origin: str, path: str
) -> None:
    url, send = image_service_for_load.url, RAW if path == "raw" else by_url(image_origin)
    models = await asyncio.to_thread(httpx.get, f"{url}/v1/models", timeout=30)
    deadline_s = float(models.json()["request_timeout_s"])
    rate = await saturation(url, send, concurrency=32, seconds=2.0)
    seconds = min(4.0 * SCALE, 1000 * SCALE / (2 * rate))  # at most about 1,000 requests (CI)
    attempts = []
    for _ in range(ATTEMPTS):
        generator = LoopLag()
        before = await asyncio.to_thread(scrape, url)
        shots = await open_loop(url, send, rate=2 * rate, seconds=seconds, lag=generator)
        work = await counted(url, before, len(shots))
        refused = [s.seconds for s in shots if s.status == 503]
        print(
            f"{path}: saturation {rate:.1f}/s; at 2x {dict(statuses(shots))}, 503 p50/p99 {measured_text(refused)}; "
            f"load generator's worst lateness {generator.peak_s * 1000:.1f} ms; service counted {work}"
        )
        attempts.append(
            {
                "saturation_per_s": round(rate, 1),
                "statuses_at_2x": dict(statuses(shots)),
                "refusal_p50_s": round(sorted(refused)[len(refused) // 2], 4) if refused else None,
                "refusal_p99_s": round(p99(refused), 4) if refused else None,
                "refusal_target_p99_s": REFUSAL_TARGET_P99_S,
                "slowest_s": round(max(s.seconds for s in shots), 3),
                "generator_worst_lag_s": round(generator.peak_s, 4),
                "work_started": work.started,
                "refused_by_reason": work.refused,
            }
        )
        record(f"overload_{path}", {"attempts": attempts})
        check_overload(shots, deadline_s)
        check_refusals_did_no_work(shots, work, fetches=path == "image_url")


async def test_a_client_that_gives_up_is_a_499_not_a_500(image_service_for_load: Server) -> None:
    """Clients that leave while their body is still arriving: counted as 499, never logged as an error."""

    async def slow_body() -> AsyncIterator[bytes]:
        yield JPEG[:100]
        await asyncio.sleep(5)
        yield JPEG[100:]

    server = image_service_for_load
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        before = metric(await client.get("/metrics"), "499")
        for _ in range(3):
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(
                    client.post("/v1/predict", content=slow_body(), headers={"content-type": "image/jpeg"}), 0.5
                )
        await asyncio.sleep(0.5)
        metrics = await client.get("/metrics")
    assert metric(metrics, "499") == before + 3
    assert metric(metrics, "500") == 0
    assert '"level": "ERROR"' not in server.log()


async def test_one_bad_text_fails_only_itself(bundles: dict[str, Path], tmp_path: Path) -> None:
    env = {"MODEL_URI": str(bundles["text-demo"]), "MAX_BATCH_SIZE": "16", "MAX_WAIT_MS": "300"}
    bad = b'{"text": "\\ud800"}'
    with run_server("text_classifier", env, tmp_path) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            for _ in range(3):  # rounds: the bad request lands in the same 300 ms batch window as the good ones
                answers = await asyncio.gather(
                    *(
                        client.post("/v1/predict", json={"text": f"hello number {i}, still for sale?"})
                        for i in range(8)
                    ),
                    client.post("/v1/predict", content=bad, headers={"content-type": "application/json"}),
                )
                assert [r.status_code for r in answers] == [200] * 8 + [400], [r.text for r in answers]
                assert answers[-1].json()["error"]["code"] == "invalid_request"


async def test_sigterm_during_an_overload_loses_no_accepted_request(
    image_server_factory: Callable[..., AbstractContextManager[Server]],
) -> None:
    with image_server_factory(MAX_BATCH_SIZE="8", DRAIN_TIMEOUT_S="20") as server:
        rate = 2 * await saturation(server.url, RAW, concurrency=32, seconds=1.5)
        seconds = min(3.0 * SCALE, 1000 * SCALE / rate)
        attack = asyncio.ensure_future(open_loop(server.url, RAW, rate=rate, seconds=seconds))
        await asyncio.sleep(seconds / 2)
        sigterm_at = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        shots = await attack
        exit_code = await asyncio.to_thread(server.process.wait, 30)
        log = server.log()
    # By when the request's bytes were written; a request never written (its connection was refused) came after.
    before = [s for s in shots if s.written_at is not None and s.written_at < sigterm_at - 0.05]
    after = [s for s in shots if s.written_at is None or s.written_at > sigterm_at + 0.05]
    # Written before SIGTERM: accepted and answered, or refused (503) at once; never cut off.
    lost = [s for s in before if s.status not in (200, 503)]
    figures = {
        "rate_per_s": round(rate, 1),
        "before_sigterm": dict(statuses(before)),
        "after_sigterm": dict(statuses(after)),
        "after_sigterm_unanswered": dict(Counter(s.error for s in after if s.status == 0)),
        "draining_503": sum(s.code == "draining" for s in after),
        "accepted_lost": len(lost),
        "exit_code": exit_code,
    }
    print(figures)
    record("sigterm_mid_overload", figures)
    assert not lost, lost[:5]
    assert statuses(before)[200] > 0
    # 0 after SIGTERM: a connection refused, closed or reset once the drain had ended (never accepted); never held.
    assert all(s.status in (200, 503) or s.error != "TimeoutError" for s in after), statuses(after)
    assert exit_code == 0
    assert "drained after" in log
    assert '"level": "ERROR"' not in log


async def test_a_trickling_upstream_is_cut_at_the_request_deadline(
    image_server_factory: Callable[..., AbstractContextManager[Server]], image_origin: str
) -> None:
    with image_server_factory(FETCH_ALLOWED_HOSTS=image_origin, REQUEST_TIMEOUT_S="2") as server:
        client = Http11Client(server.url)
        shots = await asyncio.gather(
            *(
                client.send(Call.json("/v1/predict", {"image_url": f"http://{image_origin}/trickle"}), 30.0)
                for _ in range(4)
            )
        )
        healthy = await client.send(by_url(image_origin), 30.0)
        client.close()
    record("slow_upstream", {"statuses": [s.status for s in shots], "seconds": [round(s.seconds, 2) for s in shots]})
    report_timing("trickle_cut", max(s.seconds for s in shots), 2.6, "a trickling image_url answered, deadline 2 s")
    assert [s.status for s in shots] == [504] * 4, shots
    # The deadline (2 s), not an earlier error, ended each one; uncut, the trickle would last 200 s.
    assert all(1.9 < s.seconds < 30 for s in shots), shots
    assert healthy.status == 200

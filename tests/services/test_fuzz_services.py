"""Seeded fuzzing of both services over real HTTP: malformed and hostile requests get a 4xx, never a 5xx or a reset.

At least 2,000 requests in all (CI-sized); the generators are seeded, so a failure names a reproducible case.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import struct
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import pytest

from image_classifier.demo import render_sample
from loadkit import SCALE, Call, Http11Client, Shot, record
from testkit import UPSTREAM_FAILURES, FailingUpstreams, Server, encode

SEED = 20261130
REQUESTS_PER_SERVICE = int(1100 * SCALE)  # CHAOS_SCALE=5: the 10k-case long version (both services)
UPSTREAM_CASES = int(80 * SCALE)  # against image hosts that fail (each case may wait for the 2 s deadline)
CONCURRENCY = 8
JPEG = encode(render_sample("triangle", 3))

HOSTILE_URLS = [
    "http://127.0.0.1:99999/",
    "http://127.0.0.1:abc/",
    "http://127.0.0.1:-1/",
    "http://[::1/",
    "http://[zz]/",
    "http://127.0.0.1:80:80/",
    "http://[::127.0.0.1]/",
    "http://[::ffff:169.254.169.254]/",
    "http://169.254.169.254/",
    "http://0x7f.1/",
    "http://127.0.0.1/a\x07b",
    "http://127.0.0.1/?q=\x00",
    "http://127.0.0.1/" + "a" * 70_000,
    "http://2130706433/",
    "http://017700000001/",
    "http://[64:ff9b::a9fe:a9fe]/",
    "http://10.0.0.1/",
    "http://user:pw@127.0.0.1/",
    "file:///etc/passwd",
    "gopher://127.0.0.1:70/",
    "ftp://127.0.0.1/",
    "http:///x",
    "http://no-such-host.invalid/x.jpg",
    "http://%00/",
    "http://a b/",
    "http://[fe80::1%25eth0]/",
    "//127.0.0.1/",
    "http://127.0.0.1:0/",
    "http://[2002:7f00:1::]/",
    "javascript:alert(1)",
    "",
    " ",
    "http://" + "a" * 300 + ".invalid/",
]


def json_escaped(rng: random.Random, size: int) -> str:
    """A JSON string body with escapes a Python client could not send raw: lone surrogates, NUL, controls."""
    pieces = []
    for _ in range(size):
        roll = rng.random()
        if roll < 0.2:
            pieces.append(f"\\u{rng.choice([0xD800, 0xDBFF, 0xDC00, 0xDFFF, 0, 7, 27, 0x7F, 0xFFFE]):04x}")
        elif roll < 0.3:
            pieces.append(rng.choice(['\\"', "\\\\", "\\n", "[", "{", "}", "]"]))
        else:
            pieces.append(
                chr(rng.choice([rng.randrange(32, 127), rng.randrange(0xA0, 0xD7FF)]))
                .replace('"', "'")
                .replace("\\", "/")
            )
    return '"' + "".join(pieces) + '"'


def nested(rng: random.Random, key: str) -> bytes:
    depth = rng.choice([10, 33, 100, 1000, 5000, rng.randrange(1, 3000)])
    opener, closer = rng.choice([("[", "]"), ('{"a":', "}")])
    return f'{{"{key}": {opener * depth}1{closer * depth}}}'.encode()


def random_json(rng: random.Random, depth: int = 0) -> object:
    roll = rng.random()
    if depth > 3 or roll < 0.4:
        return rng.choice([None, True, 0, -1, 2**70, 1.5e308, "", "x" * rng.randrange(0, 50), [], {}])
    if roll < 0.7:
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(0, 4))]
    return {rng.choice(["text", "texts", "image_url", "image_b64", "x"]): random_json(rng, depth + 1) for _ in range(3)}


V2_SHARE = 0.25  # of each service's cases: Open Inference Protocol requests (serving.v2)


def v2_section(elements: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def v2_case(rng: random.Random, model: str, input_name: str, element: bytes) -> Call:
    """A /v2 infer request built valid, then mangled in one or two places (so each mangling reaches the code
    past every check before it): elements cut or random, sections cut or padded, header lengths anywhere, wrong
    names, datatypes, shapes, sizes, outputs, parameters, JSON forms, hostile JSON, other paths."""
    count = rng.choice([1, 1, 2, 4])
    elements = [element] * count
    tensor: dict[str, object] = {"name": input_name, "shape": [count], "datatype": "BYTES", "parameters": {}}
    document: dict[str, object] = {"inputs": [tensor]}
    state: dict[str, Any] = {"cut": None, "pad": b"", "length": None, "header": None, "no_length": False}
    path = f"/v2/models/{model}/infer"
    manglers = [
        lambda: elements.__setitem__(0, element[: rng.randrange(len(element) + 1)]),
        lambda: elements.__setitem__(rng.randrange(count), rng.randbytes(rng.randrange(64))),
        lambda: state.__setitem__("cut", rng.randrange(4 * count + 1)),
        lambda: state.__setitem__("pad", rng.randbytes(rng.randrange(1, 16))),
        lambda: state.__setitem__("length", rng.choice([0, -1, 3, 10**9, "x", "", " 12", "1e3"])),
        lambda: state.__setitem__("no_length", True),
        lambda: tensor.__setitem__("name", rng.choice(["INPUT0", "", input_name.lower(), 7])),
        lambda: tensor.__setitem__("datatype", rng.choice(["FP32", "UINT8", "bytes", "", None, "STRING"])),
        lambda: tensor.__setitem__("shape", rng.choice([[count, 1], [], [-1], [2**40], [count + 1], ["1"], None])),
        lambda: tensor.__setitem__("parameters", {"binary_data_size": rng.choice([-1, "x", None, 1.5, True, 2**70])}),
        lambda: document.__setitem__("outputs", [{"name": rng.choice(["labels", "probabilities", "logits", 7]),
                                                  "parameters": {rng.choice(["binary_data", "classification"]):
                                                                 rng.choice([True, 0, 2, 99, -1, "yes", None])}}]),
        lambda: document.__setitem__("parameters", {rng.choice(["top_k", "binary_data_output"]):
                                                    rng.choice([0, 1, 3, 99, -1, "3", True, None, 2.5])}),
        lambda: tensor.__setitem__("data", rng.choice([[base64.b64encode(element).decode()] * count, ["%%%"],
                                                       [[["a"]]], [1, 2], "x", None, [None]])),
        lambda: document.__setitem__("inputs", rng.choice([[], [tensor, tensor], "x", [None]])),
        lambda: state.__setitem__("header", json_escaped(rng, 40).encode()),
        lambda: state.__setitem__("header", nested(rng, "inputs")),
    ]  # fmt: skip
    for _ in range(rng.choice([0, 1, 1, 1, 2])):
        rng.choice(manglers)()
    data = v2_section(elements)
    cut = state["cut"]
    data = (data[:cut] if isinstance(cut, int) else data) + state["pad"]
    parameters = tensor.get("parameters")
    if isinstance(parameters, dict) and not parameters and "data" not in tensor:
        parameters["binary_data_size"] = len(data)
    header = state["header"] or json.dumps(document).encode()
    assert isinstance(header, bytes)
    length = state["length"] if state["length"] is not None else len(header)
    headers = () if state["no_length"] else (("Inference-Header-Content-Length", str(length)),)
    if rng.random() < 0.05:
        path = rng.choice(
            ["/v2/models/nope/infer", f"/v2/models/{model}/versions/0/infer", f"/v2/models/{model}%2F/infer"]
        )
    content_type = rng.choice(["application/octet-stream", "application/json", ""])
    return Call(path, content_type, header + (b"" if "data" in tensor else data), headers=headers)


def image_case(rng: random.Random) -> Call:
    if rng.random() < V2_SHARE:
        return v2_case(rng, "image-demo", "IMAGE", JPEG)
    roll = rng.random()
    if roll < 0.25:
        url = rng.choice(HOSTILE_URLS)
        if rng.random() < 0.3:
            url = url.replace("127.0.0.1", rng.choice(["127.0.0.1", "[::1]", "0", "localhost.invalid"]))
            url = url.rstrip("/") + f":{rng.choice([rng.randrange(-5, 70000), 'x', ''])}/"
        return Call.json("/v1/predict", {"image_url": url})
    if roll < 0.35:
        return Call("/v1/predict", "application/json", f'{{"image_url": {json_escaped(rng, 12)}}}'.encode())
    if roll < 0.5:
        data = base64.b64encode(JPEG[: rng.randrange(0, len(JPEG))]).decode()
        mangled = rng.choice(
            [
                data,
                data[:-1],
                data + "=",
                data.replace("A", "-"),
                "\n".join(data[i : i + 76] for i in range(0, len(data), 76)),
            ]
        )
        return Call.json("/v1/predict", {"image_b64": mangled})
    if roll < 0.6:
        return Call("/v1/predict", "application/json", nested(rng, rng.choice(["image_url", "image_b64", "x"])))
    if roll < 0.75:
        body = bytearray(JPEG)
        for _ in range(rng.randrange(1, 20)):
            body[rng.randrange(len(body))] = rng.randrange(256)
        return Call(
            "/v1/predict",
            rng.choice(["image/jpeg", "image/png", "image/webp"]),
            bytes(body[: rng.randrange(1, len(body))]),
        )
    if roll < 0.85:
        return Call.json("/v1/predict", random_json(rng))
    if roll < 0.93:
        return Call(
            "/v1/predict",
            rng.choice(
                ["text/plain", "", "application/x-www-form-urlencoded", "image/gif", "application/json; charset=utf-16"]
            ),
            rng.randbytes(rng.randrange(0, 200)),
        )
    return Call(
        rng.choice(
            ["/v1/predict", "/v1/models", "/nope", "/v1/predict/../metrics", "/v2/models/image-demo/infer", "/v2"]
        ),
        "application/json",
        b"{}",
        rng.choice(["GET", "PUT", "DELETE", "PATCH"]),
    )


def text_case(rng: random.Random) -> Call:
    if rng.random() < V2_SHARE:
        return v2_case(rng, "text-demo", "TEXT", json_escaped(rng, rng.randrange(1, 20)).encode()[1:-1])
    roll = rng.random()
    if roll < 0.35:
        return Call(
            "/v1/predict", "application/json", f'{{"text": {json_escaped(rng, rng.randrange(1, 30))}}}'.encode()
        )
    if roll < 0.5:
        texts = ", ".join(json_escaped(rng, rng.randrange(0, 10)) for _ in range(rng.randrange(0, 40)))
        return Call("/v1/predict", "application/json", f'{{"texts": [{texts}]}}'.encode())
    if roll < 0.6:
        return Call("/v1/predict", "application/json", nested(rng, rng.choice(["text", "texts", "x"])))
    if roll < 0.8:
        return Call.json("/v1/predict", random_json(rng))
    if roll < 0.9:
        return Call(
            "/v1/predict", rng.choice(["application/json", "text/plain", ""]), rng.randbytes(rng.randrange(0, 300))
        )
    return Call(
        "/v1/predict",
        "application/json",
        rng.choice(
            [
                b'{"text": NaN}',
                b'{"text": "a", "text": 1}',
                b'{"texts": ["a"]' + b", 1" * 50 + b"]}",
                b'{"text": 1e999999}',
                b'{"text":"\\ud800\\udc00"}',
            ]
        ),
    )


def rss_kib(server: Server) -> int:
    status = open(f"/proc/{server.process.pid}/status").read()  # noqa: SIM115
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")))


async def fuzz(
    server: Server, make: Callable[[random.Random], Call], seed: int
) -> tuple[Counter[int], list[tuple[Shot, Call]], int, int]:
    rng = random.Random(seed)
    cases = [make(rng) for _ in range(REQUESTS_PER_SERVICE)]
    client = Http11Client(server.url)
    bad: list[tuple[Shot, Call]] = []
    counts: Counter[int] = Counter()
    rss_after_warmup = 0

    async def worker(mine: list[Call]) -> None:
        for call in mine:
            shot = await client.send(call, 30.0)
            counts[shot.status] += 1
            if shot.status >= 500 or shot.status == 0:
                bad.append((shot, call))

    warmup, rest = cases[:200], cases[200:]
    await asyncio.gather(*(worker(warmup[i::CONCURRENCY]) for i in range(CONCURRENCY)))
    rss_after_warmup = rss_kib(server)
    await asyncio.gather(*(worker(rest[i::CONCURRENCY]) for i in range(CONCURRENCY)))
    client.close()
    return counts, bad, rss_after_warmup, rss_kib(server)


@pytest.mark.parametrize(("service", "case", "seed"), [("image", image_case, SEED), ("text", text_case, SEED + 1)])
async def test_fuzzed_requests_never_get_a_5xx(
    request: pytest.FixtureRequest, service: str, case: Callable[[random.Random], Call], seed: int
) -> None:
    server: Server = request.getfixturevalue(f"{service}_service")
    counts, bad, rss_before, rss_after = await fuzz(server, case, seed)
    growth = rss_after - rss_before
    print(f"{service}: {sorted(counts.items())}, RSS growth {growth // 1024} MiB")
    record(
        f"fuzz_{service}",
        {
            "statuses": dict(sorted(counts.items())),
            "rss_growth_kib": growth,
            "cases": REQUESTS_PER_SERVICE,
            "rss_before_kib": rss_before,
            "rss_after_kib": rss_after,
        },
    )
    assert not bad, [(s.status, s.code, c.method, c.path, c.content_type, c.body[:200]) for s, c in bad[:5]]
    assert sum(counts.values()) == REQUESTS_PER_SERVICE
    assert growth < 64 * 1024, f"RSS grew by {growth // 1024} MiB"


# -- the answers that only failing image hosts may cause ------------------------------------------------------------
HEAD_ABUSE = [
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(150)) + b"\r\n",
    b"POST /v1/predict?" + b"q" * 70_000 + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
]


async def raw_status(server: Server, head: bytes) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(head)
        line = await asyncio.wait_for(reader.readline(), 30)
        return int(line.split()[1]) if line else 0
    except (OSError, IndexError, ValueError):
        return 0
    finally:
        writer.close()


async def test_failing_image_hosts_get_502_or_504_and_nothing_else_does(
    image_server_factory: Callable[..., AbstractContextManager[Server]],
) -> None:
    """Seeded mix of URLs of allowed image hosts that fail in every way, hostile URLs and oversized heads: a failing
    host is answered exactly its 502 or 504 (never 403), everything else a 4xx, oversized heads 431."""
    rng = random.Random(SEED + 2)
    with FailingUpstreams() as failing:
        settings = {"FETCH_ALLOWED_HOSTS": failing.allow_list, "REQUEST_TIMEOUT_S": "2"}
        timeouts = {"FETCH_CONNECT_TIMEOUT_S": "0.3", "FETCH_READ_TIMEOUT_S": "0.3"}
        with image_server_factory(**settings, **timeouts) as server:
            client = Http11Client(server.url)
            outcomes: Counter[tuple[str, int]] = Counter()
            wrong: list[tuple[str, str, int]] = []

            async def one(case: int) -> None:
                roll = rng.random()
                if roll < 0.5:
                    kind = rng.choice(list(UPSTREAM_FAILURES))
                    shot = await client.send(Call.json("/v1/predict", {"image_url": failing.urls[kind]}), 30.0)
                    status, ok = shot.status, (shot.status, shot.code) == UPSTREAM_FAILURES[kind]
                elif roll < 0.85:
                    kind, url = "hostile url", rng.choice(HOSTILE_URLS)
                    status = (await client.send(Call.json("/v1/predict", {"image_url": url}), 30.0)).status
                    ok = 400 <= status < 500
                else:
                    kind = "oversized head"
                    status = await raw_status(server, rng.choice(HEAD_ABUSE))
                    ok = status == 431
                outcomes[(kind, status)] += 1
                if not ok:
                    wrong.append((kind, str(case), status))

            async def worker(mine: range) -> None:
                for case in mine:
                    await one(case)

            await asyncio.gather(*(worker(range(i, UPSTREAM_CASES, CONCURRENCY)) for i in range(CONCURRENCY)))
            client.close()
    figures = {f"{kind} {status}": n for (kind, status), n in sorted(outcomes.items())}
    print(figures)
    record("fuzz_upstreams", {"cases": UPSTREAM_CASES, "outcomes": figures})
    assert not wrong, wrong[:10]
    assert sum(outcomes.values()) == UPSTREAM_CASES

"""SSRF-safe fetching against a real loopback origin: allow-list, private addresses, redirects, caps, failures."""

from __future__ import annotations

import contextlib
import ipaddress
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ops.perf.localservice import free_port
from serving.errors import FetchFailed, PayloadTooLarge, ServingError, UpstreamUnavailable, UrlForbidden
from serving.fetch import FETCHED, SafeFetcher, is_forbidden_address
from testkit import UNRESOLVABLE_HOST, UPSTREAM_FAILURES, FailingUpstreams, Origin


def port_of(origin: Origin) -> int:
    return int(origin.url.rsplit(":", 1)[1])


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "::1",
        "fd00:ec2::254",
        "fe80::1",
        "::ffff:127.0.0.1",
        "::127.0.0.1",  # IPv4-compatible (::/96)
        "::a9fe:a9fe",
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "64:ff9b::a9fe:a9fe",  # NAT64 of the metadata address
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
        "224.0.0.1",
        "100.100.100.200",
    ],
)
def test_non_public_addresses_are_forbidden(address: str) -> None:
    assert is_forbidden_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "64:ff9b::808:808"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert not is_forbidden_address(ipaddress.ip_address(address))


async def fetch(url: str, **kwargs: object) -> bytes:
    options: dict[str, object] = {"max_bytes": 1024, "allowed_hosts": frozenset({"127.0.0.1:*"}), **kwargs}
    async with SafeFetcher(**options) as fetcher:  # type: ignore[arg-type]
        return await fetcher.fetch(url)


async def test_allow_listed_loopback_host_is_fetched(origin: Origin) -> None:
    origin.files["/ok.bin"] = b"x" * 100
    assert await fetch(f"{origin.url}/ok.bin") == b"x" * 100


async def test_loopback_is_refused_without_the_allow_list(origin: Origin) -> None:
    origin.files["/secret"] = b"s"
    with pytest.raises(UrlForbidden, match="non-public"):
        await fetch(f"{origin.url}/secret", allowed_hosts=frozenset())


async def test_the_allow_list_is_per_host_and_port(origin: Origin) -> None:
    origin.files["/ok.bin"] = b"fine"
    port = port_of(origin)
    assert await fetch(f"{origin.url}/ok.bin", allowed_hosts=frozenset({f"127.0.0.1:{port}"})) == b"fine"
    # A bare host means its default port only; another port of an allowed host is refused before connecting.
    for allowed in ({"127.0.0.1"}, {f"127.0.0.1:{port + 1 if port < 65535 else port - 1}"}):
        hits = len(origin.hits)
        with pytest.raises(UrlForbidden, match="non-public"):
            await fetch(f"{origin.url}/ok.bin", allowed_hosts=frozenset(allowed))
        assert len(origin.hits) == hits, "a refused target must not be contacted"


async def test_refused_targets_look_the_same_to_the_client_and_are_never_contacted(origin: Origin) -> None:
    errors = []
    hits = len(origin.hits)
    for url in (
        f"{origin.url}/ok.bin",  # not allow-listed
        f"http://{UNRESOLVABLE_HOST}/x",  # not allow-listed and unresolvable: resolution is part of the check
        f"http://localhost:{port_of(origin)}/ok.bin",  # a name for a forbidden address
        "http://[::127.0.0.1]/x",  # IPv4-compatible IPv6
    ):
        with pytest.raises(UrlForbidden) as refused:
            await fetch(url, allowed_hosts=frozenset())
        errors.append((refused.value.status_code, refused.value.code, refused.value.message))
    assert len(set(errors)) == 1, errors
    assert errors[0][:2] == (403, "url_forbidden")
    assert len(origin.hits) == hits


@pytest.fixture(scope="module")
def failing() -> Iterator[FailingUpstreams]:
    with FailingUpstreams() as upstreams:
        yield upstreams


@pytest.mark.parametrize("kind", list(UPSTREAM_FAILURES))
async def test_an_allowed_target_that_fails_is_a_5xx_counted_by_outcome(failing: FailingUpstreams, kind: str) -> None:
    """Only a target that passed the check can be reported unreachable: 502 or 504, never the 403 of a refusal."""
    outcomes: Counter[str] = Counter()
    options = {
        "max_bytes": 4096,
        "connect_timeout_s": 0.5,
        "read_timeout_s": 0.5,
        "on_outcome": lambda o: outcomes.update([o]),
    }
    async with SafeFetcher(allowed_hosts=frozenset(failing.allow_list.split(",")), **options) as fetcher:  # type: ignore[arg-type]
        with pytest.raises(ServingError) as failed:
            await fetcher.fetch(failing.urls[kind], time.monotonic() + 2.0)
    assert (failed.value.status_code, failed.value.code) == UPSTREAM_FAILURES[kind], failed.value.detail
    assert outcomes == Counter({failed.value.code: 1})


async def test_every_outcome_is_counted_once(origin: Origin) -> None:
    origin.files["/counted.bin"] = b"c" * 10
    outcomes: Counter[str] = Counter()
    for url in (f"{origin.url}/counted.bin", f"{origin.url}/nope", "http://10.0.0.1/x", "http://[zz]/"):
        with contextlib.suppress(ServingError):
            await fetch(url, on_outcome=lambda o: outcomes.update([o]))
    assert outcomes == Counter({FETCHED: 1, "fetch_failed": 1, "url_forbidden": 1, "invalid_request": 1})


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:99999/",
        "http://127.0.0.1:abc/",
        "http://127.0.0.1:-1/",
        "http://[::1/",
        "http://[zz]/",
        "http://127.0.0.1:80:80/",
        "http://127.0.0.1:0/",
        "http://ex%41mple.com/",
        "http://\ud800.com/",
        "http://127.0.0.1/\ud800",
        "http://127.0.0.1/a\x07b",
        "http://127.0.0.1/?q=\x00",
        "http://127.0.0.1/" + "a" * 70_000,
    ],
)
async def test_malformed_urls_are_invalid_requests(url: str) -> None:
    from serving.errors import InvalidRequest

    with pytest.raises(InvalidRequest):
        await fetch(url)


async def test_localhost_name_resolves_to_a_forbidden_address(origin: Origin) -> None:
    port = origin.url.rsplit(":", 1)[1]
    with pytest.raises(UrlForbidden):
        await fetch(f"http://localhost:{port}/secret", allowed_hosts=frozenset({"127.0.0.1"}))


async def test_redirect_to_metadata_address_is_refused_before_connecting(origin: Origin) -> None:
    origin.redirects["/hop"] = "http://169.254.169.254/latest/meta-data/"
    with pytest.raises(UrlForbidden, match=r"169\.254\.169\.254"):
        await fetch(f"{origin.url}/hop")


async def test_relative_redirects_are_followed_and_checked(origin: Origin) -> None:
    origin.files["/final.bin"] = b"done"
    origin.redirects["/a"] = "/final.bin"
    assert await fetch(f"{origin.url}/a") == b"done"


async def test_redirect_loops_stop(origin: Origin) -> None:
    origin.redirects["/loop"] = "/loop"
    with pytest.raises(FetchFailed, match="too many redirects"):
        await fetch(f"{origin.url}/loop")


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/x", "gopher://127.0.0.1:70/", "http:///nohost"])
async def test_only_http_urls_with_hosts(url: str) -> None:
    with pytest.raises(UrlForbidden):
        await fetch(url)


async def test_credentials_in_url_are_refused(origin: Origin) -> None:
    with pytest.raises(UrlForbidden, match="credentials"):
        await fetch(origin.url.replace("http://", "http://user:pw@") + "/ok.bin")


async def test_oversized_body_is_refused(origin: Origin) -> None:
    origin.files["/big.bin"] = b"b" * 5000
    with pytest.raises(PayloadTooLarge):
        await fetch(f"{origin.url}/big.bin")


async def test_missing_file_is_a_fetch_failure_and_unreachable_hosts_are_upstream_failures(origin: Origin) -> None:
    with pytest.raises(FetchFailed, match="404"):
        await fetch(f"{origin.url}/nope")
    with pytest.raises(UpstreamUnavailable, match="ConnectError"):
        await fetch(f"http://127.0.0.1:{free_port()}/x")  # allowed (127.0.0.1:*), nothing listening
    with pytest.raises(UpstreamUnavailable, match="resolve"):
        await fetch(f"http://{UNRESOLVABLE_HOST}/x", allowed_hosts=frozenset({UNRESOLVABLE_HOST}))
    with pytest.raises(UrlForbidden, match="resolve"):
        await fetch(f"http://{UNRESOLVABLE_HOST}/x", allowed_hosts=frozenset())


@settings(max_examples=150)
@given(prefix=st.sampled_from([":", "/", "?", "#", ":80", ":99999"]), tail=st.text(max_size=40))
async def test_any_url_on_a_refused_host_is_a_clean_4xx(prefix: str, tail: str) -> None:
    """Whatever follows the host, the answer is a typed 4xx and nothing is contacted (loopback is not allowed)."""
    from serving.errors import ServingError

    async with SafeFetcher(max_bytes=1024) as fetcher:
        with pytest.raises(ServingError) as refused:
            await fetcher.fetch(f"http://127.0.0.1{prefix}{tail}")
    assert 400 <= refused.value.status_code < 500

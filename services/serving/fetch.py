"""SSRF-safe fetching of client-supplied URLs (compare TorchServe CVE-2023-43654) that cannot wedge under overload.

Safety: only http(s); every address a host resolves to must be public unless the host *and port* are allow-listed;
the connection is pinned to the checked address (no DNS rebinding); every redirect is checked again; size is capped.
Every target the policy refuses gets the same public error (403), before any connection, so answers cannot map ports
or hosts; a host that is not allow-listed and does not resolve is one of them (resolution is part of the check).
Only a target that passed the check can be reported as unreachable: 502 (DNS failure of an allow-listed host,
refused, reset, an upstream 5xx) or 504 (connect or read timeout, the request's deadline), so an image host's outage
is a 5xx that alerts, not a client error. Each outcome is counted (`on_outcome`, the `<service>_fetch_total` counter).

Liveness: a fetch runs under the request's deadline (in total, not per read), and concurrent fetches are bounded by
`max_concurrency`, which is also the connection pool's size, so a request never waits inside httpcore's pool. That
matters: httpcore 1.0.x leaks a pool slot for good when a request that is waiting in the pool is cancelled or hits its
pool timeout just as a new connection is assigned to it (encode/httpcore#1093, #550); enough of those and every
later fetch fails with PoolTimeout until a restart. So the network I/O of a fetch runs in a task of its own that is
never cancelled from outside (the caller stops *waiting* at its deadline; the task stops itself through timeouts
derived from the same deadline), and should a PoolTimeout happen anyway the client is replaced and the fetch retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import SplitResult, urljoin, urlsplit, urlunsplit

import httpx

from serving.errors import (
    FetchFailed,
    InvalidRequest,
    Overloaded,
    PayloadTooLarge,
    ServingError,
    UpstreamTimeout,
    UpstreamUnavailable,
    UrlForbidden,
)

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Cloud metadata endpoints, named explicitly even where the generic checks below already cover them.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200")
)
# IPv6 ranges that carry an IPv4 address: the embedded address is what the packets may end up reaching.
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated (RFC 4291); never a legitimate image host
NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052 well-known prefix, used by EKS IPv6 clusters
REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
FETCHED = "ok"  # the outcome of a fetch that returned a body; every other outcome is its error's code
DEFAULT_PORTS = {"http": 80, "https": 443}
ANY_PORT = -1
SCHEME_DEFAULT_PORT = 0


def is_forbidden_address(ip: IPAddress) -> bool:
    """True for loopback, private, link-local, CGNAT, multicast, reserved, unspecified and metadata addresses,
    also when wrapped in IPv6 (IPv4-mapped, IPv4-compatible, NAT64, 6to4, Teredo)."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in IPV4_COMPATIBLE:
            return True
        embedded: list[ipaddress.IPv4Address] = []
        if ip.ipv4_mapped is not None:
            embedded.append(ip.ipv4_mapped)
        if ip in NAT64:
            embedded.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if ip.sixtofour is not None:
            embedded.append(ip.sixtofour)
        if ip.teredo is not None:
            embedded.extend(ip.teredo)
        if any(is_forbidden_address(v4) for v4 in embedded):
            return True
        if ip.ipv4_mapped is not None:
            return False
    return ip in METADATA_ADDRESSES or not ip.is_global or ip.is_multicast


def _normal_host(host: str) -> str:
    """Lower-case names; IP literals in their canonical form (so 127.000.0.1 and ::0:1 cannot dodge a match)."""
    host = host.strip().strip("[]").lower().rstrip(".")
    with contextlib.suppress(ValueError):
        return str(ipaddress.ip_address(host))
    return host


def parse_allowed_targets(entries: Iterable[str]) -> frozenset[tuple[str, int]]:
    """Parse allow-list entries into (host, port) pairs.

    - `host` (a name or an IP literal): that host on its scheme's default port only (80 for http, 443 for https);
    - `host:port`, `[v6]:port`: exactly that port;
    - `host:*`, `[v6]:*`: any port of that host (meant for development and local benchmarks only).
    A bare IPv6 literal may be written with or without brackets. Raises ValueError for malformed entries.
    """
    targets: set[tuple[str, int]] = set()
    for raw in entries:
        entry = raw.strip().lower()
        if not entry:
            continue
        port_text: str | None = None
        if entry.startswith("["):
            host, bracket, rest = entry[1:].partition("]")
            if not bracket or (rest and not rest.startswith(":")):
                raise ValueError(f"allow-list entry {raw!r}: expected [ipv6] or [ipv6]:port")
            port_text = rest[1:] if rest else None
        elif entry.count(":") == 1:
            host, port_text = entry.split(":")
        else:
            host = entry  # a name, an IPv4 literal, or a bare IPv6 literal
        host = _normal_host(host)
        if not host or any(c in host for c in "/@[]%\\ "):
            raise ValueError(f"allow-list entry {raw!r}: no valid host")
        if port_text is None:
            port = SCHEME_DEFAULT_PORT
        elif port_text == "*":
            port = ANY_PORT
        elif port_text.isdigit() and 0 < int(port_text) < 65536:
            port = int(port_text)
        else:
            raise ValueError(f"allow-list entry {raw!r}: the port must be 1-65535 or *")
        targets.add((host, port))
    return frozenset(targets)


@dataclass(frozen=True)
class Target:
    """A parsed, policy-checked URL: what to connect to and what to say in the Host header."""

    parts: SplitResult
    host: str
    port: int

    @property
    def is_default_port(self) -> bool:
        return self.port == DEFAULT_PORTS[self.parts.scheme]


def parse_target(url: str) -> Target:
    """Parse a URL defensively: a malformed one is an InvalidRequest (400), a disallowed form a UrlForbidden."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port
        httpx.URL(url)  # what httpx would refuse later (control characters, surrogates, length) is refused here
    except (ValueError, UnicodeError, httpx.InvalidURL):
        raise InvalidRequest("image_url is not a valid URL") from None
    if parts.scheme not in DEFAULT_PORTS:
        raise UrlForbidden(f"scheme {parts.scheme!r} is not allowed; use http or https")
    if not host:
        raise UrlForbidden("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise UrlForbidden("credentials in URLs are not allowed")
    if any(c in host for c in "\\%\x00 "):
        raise InvalidRequest("image_url has an invalid host")
    try:
        ascii_host = host if host.isascii() else host.encode("idna").decode("ascii")
    except UnicodeError:
        raise InvalidRequest("image_url has an invalid host") from None
    if port == 0:
        raise InvalidRequest("image_url is not a valid URL")
    return Target(parts, _normal_host(ascii_host), port if port is not None else DEFAULT_PORTS[parts.scheme])


@dataclass
class _ClientHolder:
    """One httpx client and the fetches using it, so a replaced client is closed only when its last fetch ends."""

    client: httpx.AsyncClient
    users: int = 0
    retired: bool = False


@dataclass
class SafeFetcher:
    """Fetches a URL's body with SSRF protections; raises typed serving errors the API maps to 4xx (or 503/504)."""

    max_bytes: int
    allowed_hosts: frozenset[str] = field(default_factory=frozenset)
    connect_timeout_s: float = 2.0
    read_timeout_s: float = 5.0
    max_redirects: int = 3
    max_concurrency: int = 32
    retry_after_s: int = 1
    on_outcome: Callable[[str], None] | None = None  # told each fetch's outcome: FETCHED or the error's code
    client_resets: int = 0
    _allowed: frozenset[tuple[str, int]] = frozenset()
    _holder: _ClientHolder | None = None
    _ssl: ssl.SSLContext | None = None
    _inflight: int = 0
    _tasks: set[asyncio.Task[bytes]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._allowed = parse_allowed_targets(self.allowed_hosts)

    async def __aenter__(self) -> SafeFetcher:
        self._ssl = ssl.create_default_context()  # built once: it is the slow part of making a client
        self._holder = _ClientHolder(self._new_client())
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self.connect_timeout_s + self.read_timeout_s)
        if self._holder is not None:
            await self._holder.client.aclose()

    def _new_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            follow_redirects=False,
            verify=self._ssl or True,
            timeout=httpx.Timeout(self.read_timeout_s, connect=self.connect_timeout_s, pool=1.0),
            # The pool is as large as the fetch concurrency, so no request ever queues in it (see the module doc).
            limits=httpx.Limits(max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency),
            trust_env=False,  # a proxy would defeat the address checks
        )

    @property
    def inflight(self) -> int:
        """Fetches holding a slot: waiting callers plus fetches still finishing after their caller gave up."""
        return self._inflight

    # -- the caller's side -------------------------------------------------------------------------------------
    async def fetch(self, url: str, deadline: float | None = None) -> bytes:
        """The body at `url` or a typed error, never later than `deadline` (time.monotonic()), whatever the upstream."""
        try:
            body = await self._fetch_within(url, deadline)
        except ServingError as exc:
            self._count(exc.code)
            raise
        except Exception:
            self._count("internal_error")
            raise
        self._count(FETCHED)
        return body

    def _count(self, outcome: str) -> None:
        if self.on_outcome is not None:
            self.on_outcome(outcome)

    async def _fetch_within(self, url: str, deadline: float | None) -> bytes:
        if deadline is None:
            deadline = time.monotonic() + self.connect_timeout_s + self.read_timeout_s
        target = parse_target(url)  # malformed and disallowed URLs are refused without taking a slot
        literal = _literal(target.host)
        if literal is not None:  # so is a forbidden IP literal: a refusal must not turn into a 503 under load
            self._check(target, [literal])
        if self._inflight >= self.max_concurrency:
            raise Overloaded(
                f"too many image URLs are being fetched ({self.max_concurrency}); retry later",
                headers={"Retry-After": str(self.retry_after_s)},
            )
        self._inflight += 1
        task = asyncio.ensure_future(self._fetch(url, deadline))
        self._tasks.add(task)
        task.add_done_callback(self._fetch_done)
        try:
            # shield: the caller's deadline or cancellation must never cancel httpx mid-pool (see the module doc).
            return await asyncio.wait_for(asyncio.shield(task), timeout=max(deadline - time.monotonic(), 0.0))
        except TimeoutError:
            raise UpstreamTimeout("the request's deadline passed while fetching the image URL") from None

    def _fetch_done(self, task: asyncio.Task[bytes]) -> None:
        self._inflight -= 1
        self._tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved here, so an abandoned fetch's error is not reported as never retrieved

    # -- the fetch task ----------------------------------------------------------------------------------------
    async def _fetch(self, url: str, deadline: float) -> bytes:
        current = url
        for _ in range(self.max_redirects + 1):
            target = parse_target(current)
            location, body = await self._hop(target, deadline)
            if location is None:
                return body
            try:
                current = urljoin(current, location)
            except ValueError:
                raise FetchFailed("the image URL redirected to an invalid location") from None
        raise FetchFailed(f"too many redirects (more than {self.max_redirects})")

    async def _hop(self, target: Target, deadline: float) -> tuple[str | None, bytes]:
        address = await self._checked_address(target)
        parts = target.parts
        netloc = f"[{address}]" if address.version == 6 else str(address)
        if not target.is_default_port:
            netloc += f":{target.port}"
        pinned = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
        host_header = parts.hostname or target.host
        if ":" in host_header:
            host_header = f"[{host_header}]"
        if not target.is_default_port:
            host_header += f":{target.port}"
        for attempt in (1, 2):
            holder = self._holder
            assert holder is not None, "use SafeFetcher as an async context manager"
            holder.users += 1
            try:
                return await self._send(holder.client, pinned, host_header, target, deadline)
            except httpx.PoolTimeout:
                # Cannot happen while the pool is as large as our concurrency bound, unless httpcore lost slots:
                # replace the client (once per wedge) and retry; the request never left this process.
                self._replace_client(holder)
                if attempt == 2:
                    raise FetchFailed("the image URL could not be fetched (connection pool exhausted)") from None
            finally:
                holder.users -= 1
                if holder.retired and holder.users == 0:
                    _spawn_close(holder.client)
        raise AssertionError("unreachable")

    def _replace_client(self, wedged: _ClientHolder) -> None:
        if self._holder is not wedged:
            return  # another fetch already replaced it
        self.client_resets += 1
        log.warning("the image URL client's connection pool lost its connections: replacing the client")
        wedged.retired = True
        self._holder = _ClientHolder(self._new_client())

    def _allow_listed(self, target: Target) -> bool:
        return (
            (target.host, target.port) in self._allowed
            or (target.host, ANY_PORT) in self._allowed
            or (target.is_default_port and (target.host, SCHEME_DEFAULT_PORT) in self._allowed)
        )

    async def _checked_address(self, target: Target) -> IPAddress:
        host = target.host
        literal = _literal(host)
        if literal is not None:
            addresses = [literal]
        else:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(host, target.port, type=socket.SOCK_STREAM)
            except (OSError, UnicodeError) as exc:
                raise self._unresolvable(target, f"could not resolve host {host!r}") from exc
            addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
        if not addresses:
            raise self._unresolvable(target, f"host {host!r} has no addresses")
        self._check(target, addresses)
        return addresses[0]

    def _check(self, target: Target, addresses: list[IPAddress]) -> None:
        """The address policy: every address public, unless the target is allow-listed."""
        if not self._allow_listed(target):
            forbidden = [a for a in addresses if is_forbidden_address(a)]
            if forbidden:
                raise UrlForbidden(
                    f"{target.host}:{target.port} resolves to a non-public address ({forbidden[0]}) and is not "
                    "allow-listed"
                )

    def _unresolvable(self, target: Target, detail: str) -> ServingError:
        """A name that does not resolve: an outage when the policy allows the name, else a refusal like any other
        (the addresses were never checked, and the answers must not say which names exist)."""
        return UpstreamUnavailable(detail) if self._allow_listed(target) else UrlForbidden(detail)

    async def _send(
        self, client: httpx.AsyncClient, url: str, host_header: str, target: Target, deadline: float
    ) -> tuple[str | None, bytes]:
        """Send one hop; returns (redirect location, b"") or (None, body). Every wait is bounded by `deadline`."""
        left = _left(deadline)
        timeout = httpx.Timeout(
            min(self.read_timeout_s, left), connect=min(self.connect_timeout_s, left), pool=min(1.0, left)
        )
        try:
            request = client.build_request(
                "GET",
                url,
                headers={"Host": host_header, "Accept": "image/*"},
                extensions={"sni_hostname": target.host},
                timeout=timeout,
            )
        except (ValueError, UnicodeError, httpx.InvalidURL):
            raise InvalidRequest("image_url is not a valid URL") from None
        try:
            response = await client.send(request, stream=True)
        except httpx.PoolTimeout:
            raise
        except httpx.TimeoutException as exc:  # connect, write or read (the answer's head) timed out
            what = "connecting to" if isinstance(exc, httpx.ConnectTimeout) else "waiting for"
            raise UpstreamTimeout(f"timed out {what} {target.host}:{target.port}") from exc
        except httpx.HTTPError as exc:  # refused, reset, TLS failure, not HTTP
            raise UpstreamUnavailable(f"could not fetch from {target.host}:{target.port} ({exc!r})") from exc
        try:
            if response.status_code in REDIRECT_CODES:
                location = response.headers.get("location")
                if not location:
                    raise FetchFailed("redirect without a Location header")
                return location, b""
            if response.status_code >= 500:
                raise UpstreamUnavailable(f"{target.host}:{target.port} answered HTTP {response.status_code}")
            if response.status_code != 200:
                raise FetchFailed(f"the image URL answered HTTP {response.status_code}")
            declared = response.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > self.max_bytes:
                raise PayloadTooLarge(f"the image at the URL is larger than {self.max_bytes} bytes")
            body = bytearray()
            try:
                async for chunk in response.aiter_bytes():
                    body.extend(chunk)
                    if len(body) > self.max_bytes:
                        raise PayloadTooLarge(f"the image at the URL is larger than {self.max_bytes} bytes")
                    if time.monotonic() >= deadline:  # a trickling upstream: the deadline is for the whole body
                        raise UpstreamTimeout("the request's deadline passed while fetching the image URL")
            except httpx.TimeoutException as exc:
                if time.monotonic() >= deadline:
                    raise UpstreamTimeout("the request's deadline passed while fetching the image URL") from exc
                raise UpstreamTimeout(f"timed out reading from {target.host}:{target.port}") from exc
            except httpx.HTTPError as exc:
                raise UpstreamUnavailable(f"failed reading from {target.host}:{target.port} ({exc!r})") from exc
            return None, bytes(body)
        finally:
            await response.aclose()


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise UpstreamTimeout("the request's deadline passed while fetching the image URL")
    return left


_closing: set[asyncio.Task[None]] = set()


def _spawn_close(client: httpx.AsyncClient) -> None:
    async def close() -> None:
        with contextlib.suppress(Exception):
            await client.aclose()

    task = asyncio.ensure_future(close())
    _closing.add(task)
    task.add_done_callback(_closing.discard)

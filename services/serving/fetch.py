"""SSRF-safe fetching of client-supplied URLs (compare TorchServe CVE-2023-43654).

Only http(s); every address a host resolves to must be public unless the host is allow-listed; the connection is
pinned to the checked address (no DNS rebinding); every redirect is checked again; size and time are capped.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx

from serving.errors import FetchFailed, PayloadTooLarge, UrlForbidden

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Cloud metadata endpoints, named explicitly even where the generic checks below already cover them.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200")
)
REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})


def is_forbidden_address(ip: IPAddress) -> bool:
    """True for loopback, private, link-local, CGNAT, multicast, reserved, unspecified and metadata addresses."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip in METADATA_ADDRESSES or not ip.is_global or ip.is_multicast


@dataclass
class SafeFetcher:
    """Fetches a URL's body with SSRF protections; raises typed serving errors the API maps to 4xx."""

    max_bytes: int
    allowed_hosts: frozenset[str] = field(default_factory=frozenset)
    connect_timeout_s: float = 2.0
    read_timeout_s: float = 5.0
    max_redirects: int = 3
    _client: httpx.AsyncClient | None = None

    async def __aenter__(self) -> SafeFetcher:
        self._client = httpx.AsyncClient(
            follow_redirects=False,
            timeout=httpx.Timeout(self.read_timeout_s, connect=self.connect_timeout_s),
            trust_env=False,  # a proxy would defeat the address checks
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def fetch(self, url: str) -> bytes:
        current = url
        for _ in range(self.max_redirects + 1):
            request = await self._pinned_request(current)
            location, body = await self._send(request)
            if location is None:
                return body
            current = urljoin(current, location)
        raise FetchFailed(f"too many redirects (more than {self.max_redirects})")

    async def _pinned_request(self, url: str) -> httpx.Request:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise UrlForbidden(f"scheme {parts.scheme!r} is not allowed; use http or https")
        host = parts.hostname
        if not host:
            raise UrlForbidden("the URL has no host")
        if parts.username or parts.password:
            raise UrlForbidden("credentials in URLs are not allowed")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        address = await self._checked_address(host, port)
        netloc = f"[{address}]" if address.version == 6 else str(address)
        if parts.port:
            netloc += f":{parts.port}"
        pinned = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
        host_header = host if not parts.port else f"{host}:{parts.port}"
        assert self._client is not None, "use SafeFetcher as an async context manager"
        return self._client.build_request(
            "GET", pinned, headers={"Host": host_header, "Accept": "image/*"}, extensions={"sni_hostname": host}
        )

    async def _checked_address(self, host: str, port: int) -> IPAddress:
        try:
            literal: IPAddress | None = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None:
            addresses = [literal]
        else:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError as exc:
                raise FetchFailed(f"could not resolve host {host!r}") from exc
            addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
        if host.lower() not in self.allowed_hosts:
            forbidden = [a for a in addresses if is_forbidden_address(a)]
            if forbidden:
                raise UrlForbidden(f"host {host!r} resolves to a non-public address ({forbidden[0]})")
        if not addresses:
            raise FetchFailed(f"host {host!r} has no addresses")
        return addresses[0]

    async def _send(self, request: httpx.Request) -> tuple[str | None, bytes]:
        """Send one hop; returns (redirect location, b"") or (None, body)."""
        assert self._client is not None
        try:
            response = await self._client.send(request, stream=True)
        except httpx.TimeoutException as exc:
            raise FetchFailed("timed out fetching the image URL") from exc
        except httpx.HTTPError as exc:
            raise FetchFailed(f"could not connect to the image URL ({type(exc).__name__})") from exc
        try:
            if response.status_code in REDIRECT_CODES:
                location = response.headers.get("location")
                if not location:
                    raise FetchFailed("redirect without a Location header")
                return location, b""
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
            except httpx.HTTPError as exc:
                raise FetchFailed(f"failed reading the image URL ({type(exc).__name__})") from exc
            return None, bytes(body)
        finally:
            await response.aclose()

"""Test helpers: real service processes on free loopback ports, a loopback origin server, image encoding."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from ops.serve import wait_ready

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)  # type: ignore[arg-type]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


@contextmanager
def run_server(module: str, prefix: str, env: dict[str, str], tmp: Path) -> Iterator[Server]:
    """A real `python -m <service>` process on a free loopback port; stopped (SIGTERM, then kill) afterwards."""
    port = free_port()
    full_env = {
        **os.environ,
        f"{prefix}HOST": "127.0.0.1",
        f"{prefix}PORT": str(port),
        f"{prefix}LOG_FORMAT": "json",
        **{f"{prefix}{k}": v for k, v in env.items()},
    }
    log_path = tmp / f"{module}-{port}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", module], env=full_env, cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT
        )
        server = Server(f"http://127.0.0.1:{port}", process, log_path)
        try:
            wait_ready(server.url, process, timeout_s=240)
            yield server
        except Exception:
            sys.stderr.write(server.log()[-4000:])
            raise
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


# -- a loopback HTTP server for image URLs ------------------------------------------------------------------------
@dataclass
class Origin:
    """Serves `files` by path; `redirects` maps a path to a Location; everything on 127.0.0.1."""

    url: str
    files: dict[str, bytes] = field(default_factory=dict)
    redirects: dict[str, str] = field(default_factory=dict)
    hits: list[str] = field(default_factory=list)


def encode(image: object, fmt: str = "JPEG", **save: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)  # type: ignore[attr-defined]
    return buffer.getvalue()

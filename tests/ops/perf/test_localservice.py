"""LocalService's reading of a running process: which HTTP parser and event loop it has loaded (/proc/PID/maps)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from ops.perf.localservice import LocalService

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


@contextmanager
def _process(imports: str) -> Iterator[LocalService]:
    """A python process that imports `imports`, says so, and sleeps; wrapped as a LocalService's process."""
    code = f"{imports}\nprint('up', flush=True)\nimport time\ntime.sleep(60)\n"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"up"
        service = LocalService()
        service.proc = proc
        yield service
    finally:
        proc.kill()
        proc.wait(10)


def test_http_runtime_sees_httptools_and_uvloop_when_they_are_loaded() -> None:
    with _process("import httptools, uvloop") as service:
        runtime = service.http_runtime()
    assert (runtime["http"], runtime["loop"]) == ("httptools", "uvloop")
    assert "parser" in runtime["evidence"]
    assert "loop" in runtime["evidence"]


def test_http_runtime_reports_the_fallbacks_when_neither_is_loaded() -> None:
    with _process("import asyncio, h11") as service:
        time.sleep(0.05)
        runtime = service.http_runtime()
    assert (runtime["http"], runtime["loop"]) == ("h11", "asyncio")

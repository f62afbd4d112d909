"""Image plans are pure: the base tags (fingerprints) and the build plan come from the checkout's files alone."""

from __future__ import annotations

import socket
import subprocess
from typing import Any

import pytest

from ops import core
from ops.images import build
from ops.images.versions import BASES


def _refuse(what: str) -> Any:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"computing a plan tried to {what}: {args[:2]}")

    return refuse


@pytest.fixture
def no_process_no_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subprocess, "Popen", _refuse("start a process"))
    monkeypatch.setattr(socket.socket, "connect", _refuse("open a connection"))
    monkeypatch.setattr(socket.socket, "bind", _refuse("bind a socket"))
    monkeypatch.setattr(socket, "create_connection", _refuse("open a connection"))
    monkeypatch.setattr(socket, "getaddrinfo", _refuse("resolve a name"))


@pytest.mark.usefixtures("no_process_no_socket")
@pytest.mark.parametrize("offline", [False, True], ids=["upstream-os", "offline-os"])
def test_base_tags_start_no_process_and_open_no_socket(offline: bool) -> None:
    refs = {base: build.base_ref(base, offline) for base in BASES}
    assert refs == {base: build.base_ref(base, offline) for base in BASES}  # deterministic
    for base, ref in refs.items():
        assert ref.startswith(f"{build.base_repository(base)}:{build.base_version_tag()}-")
    assert len(set(refs.values())) == len(BASES)
    assert build.build_plan(list(core.SERVICES), list(BASES), offline=offline)


def test_the_probe_is_not_blind(no_process_no_socket: None) -> None:
    with pytest.raises(AssertionError, match="start a process"):
        subprocess.run(["true"], check=False)
    with pytest.raises(AssertionError, match="open a connection"):
        socket.create_connection(("127.0.0.1", 9))


def test_the_os_base_is_part_of_the_base_tag() -> None:
    assert build.base_ref("cpu", offline=True) != build.base_ref("cpu", offline=False)

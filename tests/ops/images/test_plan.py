"""Image plans are pure: the base tags (fingerprints) and the build plan come from the checkout's files alone."""

from __future__ import annotations

import copy
import socket
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ops import core
from ops.images import build, versions
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


Matrix = dict[str, Any]


def _leaves(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every scalar's path in the matrix (table keys and array indexes)."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _leaves(value, (*path, i))
    else:
        yield path


def _set(matrix: Matrix, path: tuple[Any, ...], value: Any) -> None:
    node: Any = matrix
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


def _tags_and_args(base: versions.Base) -> tuple[str, dict[str, str]]:
    return build.base_ref(base, offline=True), build.base_build_args(base, "os-image", "pypi")


@pytest.fixture
def matrix_edit(monkeypatch: pytest.MonkeyPatch) -> Callable[[tuple[Any, ...], Any], None]:
    """Change one value of the matrix as every reader of it sees it (a deep copy of versions.toml's)."""
    edited = copy.deepcopy(versions.load_versions())
    monkeypatch.setattr(versions, "load_versions", lambda path=versions.VERSIONS_PATH: edited)

    def edit(path: tuple[Any, ...], value: Any) -> None:
        _set(edited, path, value)

    return edit


@pytest.mark.parametrize(
    "path",
    [
        ("addons", "karpenter"),
        ("addons", "cluster_autoscaler"),
        ("eks", "kubernetes_minor"),
        ("eks", "gpu_ami_release"),
        ("kind", "upstream_node_image"),
        ("gpus", 0, "instance_type"),
        ("gpus", 0, "accelerator_label"),
    ],
    ids=lambda p: ".".join(map(str, p)),
)
def test_a_pin_that_enters_no_base_leaves_both_tags(
    path: tuple[Any, ...], matrix_edit: Callable[[tuple[Any, ...], Any], None]
) -> None:
    before = {base: _tags_and_args(base) for base in BASES}
    matrix_edit(path, "9.9.9-changed")
    assert {base: _tags_and_args(base) for base in BASES} == before


@pytest.mark.parametrize(
    ("path", "moved"),
    [
        (("pytorch", "torch"), set(BASES)),
        (("pytorch", "cuda"), set(BASES)),
        (("python", "minor"), set(BASES)),
        (("os", "debian_release"), set(BASES)),
        (("driver", "min_version"), {"cuda"}),
        (("gpus", 0, "arch"), {"cuda"}),
    ],
    ids=lambda p: ".".join(map(str, p)) if isinstance(p, tuple) else "",
)
def test_a_pin_that_enters_a_base_moves_its_tag(
    path: tuple[Any, ...], moved: set[str], matrix_edit: Callable[[tuple[Any, ...], Any], None]
) -> None:
    before = {base: build.base_ref(base, offline=True) for base in BASES}
    matrix_edit(path, "9.9.9-changed")
    after = {base: build.base_ref(base, offline=True) for base in BASES}
    assert {base for base in BASES if after[base] != before[base]} == moved


@pytest.mark.parametrize("base", BASES)
def test_no_build_arg_reads_the_matrix_past_what_the_tag_covers(base: versions.Base) -> None:
    """Every value outside the base's part of the matrix is changed in turn: the build ARGs stay the same, so what
    the tag leaves out cannot reach the image through them."""
    real = versions.load_versions()
    covered = versions.base_matrix(base, real)
    expected = build.base_build_args(base, "os-image", "pypi")
    outside = []
    for path in _leaves(real):
        edited = copy.deepcopy(real)
        _set(edited, path, "9.9.9-changed")
        if versions.base_matrix(base, edited) != covered:
            continue
        outside.append(path)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(versions, "load_versions", lambda path=versions.VERSIONS_PATH, m=edited: m)
            assert build.base_build_args(base, "os-image", "pypi") == expected, path
    assert ("addons", "karpenter") in outside

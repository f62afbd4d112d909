"""ops.core: one cache root, one runner (dry runs start nothing), one service registry that every view derives from."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ops import core, serve
from ops.infra import settings
from ops.k8s import policies


def test_cache_root_default_is_the_existing_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(core.CACHE_ENV, raising=False)
    assert core.cache_root() == Path.home() / ".cache" / "eks-inference"


def test_cache_root_honours_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(core.CACHE_ENV, str(tmp_path))
    assert core.cache_root() == tmp_path / "eks-inference"


def test_run_raises_ops_error_with_stderr_tail() -> None:
    with pytest.raises(core.CommandFailed) as info:
        core.run(["sh", "-c", "echo boom >&2; exit 3"])
    assert isinstance(info.value, core.OpsError)
    assert info.value.returncode == 3
    assert "boom" in str(info.value)
    assert core.run(["sh", "-c", "exit 1"], ok_codes=(0, 1)).returncode == 1


def test_dry_run_starts_no_process(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    started: list[object] = []
    real = subprocess.run

    def spy(*args: object, **kwargs: object) -> object:
        started.append(args)
        return real(*args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(subprocess, "run", spy)
    marker = tmp_path / "touched"
    with core.dry_run():
        assert core.is_dry()
        proc = core.run(["touch", str(marker)])
    assert proc.returncode == 0
    assert not marker.exists()
    assert started == []
    assert not core.is_dry()
    # Queries still run in a dry run: plans need their answers.
    with core.dry_run():
        assert core.run(["echo", "hi"], effect=False).stdout == "hi\n"


def test_every_view_of_the_services_derives_from_the_registry() -> None:
    names = list(core.SERVICES)
    assert list(core.SERVICES) == names
    assert list(policies.SERVICES) == names
    assert [s.name for s in serve.SERVICES] == names
    assert list(settings.SERVICES) == names
    assert {n: p for n, p in policies.SERVICES.items()} == {s.name: s.env_prefix for s in core.SERVICES.values()}
    assert policies.GPU_SERVICE == "image-classifier"
    assert core.SERVICE_UID == policies.SERVICE_UID == core.SERVICE_UID
    assert len({s.local_port for s in core.SERVICES.values()}) == len(names)

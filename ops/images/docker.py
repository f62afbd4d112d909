"""The docker engine as the image builds use it: commands through ops.core.run, image queries, fingerprints."""

from __future__ import annotations

import hashlib
import json
import shutil

from ops import core
from ops.core import REPO_ROOT, OpsError


class ImageError(OpsError):
    """An image could not be built; the message says which step failed and why."""


def run(
    cmd: list[str],
    *,
    capture: bool = False,
    env: dict[str, str] | None = None,
    quiet: bool = False,
    effect: bool = True,
) -> str:
    """`core.run`, echoed unless quiet; its stdout when captured (`effect=False`: a query, run even when dry)."""
    return core.run(cmd, capture=capture, env=env, echo=not quiet, effect=effect).stdout or ""


def docker_available() -> bool:
    """True when a docker engine answers."""
    if shutil.which("docker") is None:
        return False
    return core.run(["docker", "info"], ok_codes=range(256), effect=False).returncode == 0


def image_exists(ref: str) -> bool:
    return core.run(["docker", "image", "inspect", ref], ok_codes=range(256), effect=False).returncode == 0


def image_id(ref: str) -> str:
    return run(
        ["docker", "image", "inspect", "--format", "{{.Id}}", ref], capture=True, quiet=True, effect=False
    ).strip()


def image_labels(ref: str) -> dict[str, str]:
    """The labels of a local image."""
    out = run(["docker", "image", "inspect", "--format", "{{json .Config.Labels}}", ref], capture=True, quiet=True,
              effect=False)  # fmt: skip
    return dict(json.loads(out) or {})


def image_size(ref: str) -> int:
    return int(
        run(
            ["docker", "image", "inspect", "--format", "{{.Size}}", ref], capture=True, quiet=True, effect=False
        ).strip()
    )


def git_tag() -> str:
    """Short commit of HEAD, with `-dirty` when tracked files differ, so a dirty build never poses as the commit."""
    sha = run(
        ["git", "-C", str(REPO_ROOT), "rev-parse", "--short=7", "HEAD"], capture=True, quiet=True, effect=False
    ).strip()
    dirty = core.run(
        ["git", "-C", str(REPO_ROOT), "diff", "--quiet", "HEAD", "--", "services", "base-images"],
        ok_codes=range(256),
        effect=False,
    )
    return f"{sha}-dirty" if dirty.returncode != 0 else sha


def fingerprint(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else part.encode())
        h.update(b"\0")
    return h.hexdigest()[:12]

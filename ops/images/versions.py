"""The versions matrix (base-images/versions.toml): what every image is built from and for."""

from __future__ import annotations

import functools
import tomllib
from pathlib import Path
from typing import Any, Literal

from ops.core import REPO_ROOT

VERSIONS_PATH = REPO_ROOT / "base-images" / "versions.toml"


Base = Literal["cpu", "cuda"]


BASES: tuple[Base, ...] = ("cpu", "cuda")


@functools.cache
def load_versions(path: Path = VERSIONS_PATH) -> dict[str, Any]:
    """The compatibility matrix (base-images/versions.toml)."""
    with path.open("rb") as fh:
        return tomllib.load(fh)


def target_archs(versions: dict[str, Any] | None = None) -> list[str]:
    """The CUDA archs of every target GPU, deduplicated in file order."""
    versions = versions or load_versions()
    return list(dict.fromkeys(g["arch"] for g in versions["gpus"]))


def base_version_tag() -> str:
    """Human part of a base tag: torch, wheel variant, Python and Debian release from the matrix."""
    v = load_versions()
    return (
        f"torch{v['pytorch']['torch']}-{v['pytorch']['wheel_variant']}"
        f"-py{v['python']['minor']}-{v['os']['debian_release']}"
    )


def cpu_pins() -> dict[str, str]:
    """Package -> `+cpu` version of torch and torchvision."""
    v = load_versions()
    return {"torch": f"{v['pytorch']['torch']}+cpu", "torchvision": f"{v['pytorch']['torchvision']}+cpu"}

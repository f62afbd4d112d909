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


def base_matrix(base: Base, versions: dict[str, Any] | None = None) -> dict[str, Any]:
    """The part of the matrix a torch base is built from, and so all its fingerprint covers (ops.images.build.base_ref):
    [os], [python] and [pytorch]; for cuda also [driver] and the GPUs' archs. Its build ARGs are read from this alone.
    The rest ([kind], [eks], [addons], a GPU's name, instance type and node label) never enters an image, so a change
    there rebuilds no base."""
    v = versions or load_versions()
    matrix = {"os": v["os"], "python": v["python"], "pytorch": v["pytorch"]}
    if base == "cuda":
        matrix |= {"driver": v["driver"], "archs": target_archs(v)}
    return matrix


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

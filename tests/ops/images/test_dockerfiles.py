"""The Dockerfiles are hadolint-clean and follow the image rules that can be read without building them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ops import core
from ops.images import build as image_build
from ops.images import lint as image_lint
from ops.images import versions as image_versions


def test_every_dockerfile_is_found() -> None:
    found = {p.relative_to(core.REPO_ROOT).as_posix() for p in image_lint.dockerfiles()}
    assert {"base-images/cpu/Dockerfile", "base-images/cuda/Dockerfile"} <= found
    assert {f"services/{s.package}/Dockerfile" for s in core.SERVICES.values()} <= found


def test_hadolint_clean() -> None:
    assert image_lint.lint() == []


# A kind node is a privileged container whose PID 1 is systemd: root by design, and never a workload image.
ROOT_BY_DESIGN = {"kind/node-image/Dockerfile"}


@pytest.mark.parametrize("path", image_lint.dockerfiles(), ids=lambda p: p.relative_to(core.REPO_ROOT).as_posix())
def test_runs_as_numeric_non_root_user(path: Path) -> None:
    users = re.findall(r"^USER\s+(\S+)", path.read_text(), flags=re.M)
    if path.relative_to(core.REPO_ROOT).as_posix() in ROOT_BY_DESIGN:
        assert not users
        assert 'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]' in path.read_text()
        return
    assert users
    assert users[-1] == f"{core.SERVICE_UID}:{core.SERVICE_UID}"


@pytest.mark.parametrize("base", image_versions.BASES)
def test_base_has_slim_runtime_stage_and_oci_labels(base: image_versions.Base) -> None:
    text = image_build.base_dockerfile(base).read_text()
    assert re.search(r"^FROM \$\{BASE_OS_IMAGE\} AS builder$", text, flags=re.M)
    assert re.search(r"^FROM \$\{BASE_OS_IMAGE\} AS runtime$", text, flags=re.M)
    assert "COPY --from=builder /opt/venv /opt/venv" in text
    for label in ("title", "description", "source", "licenses", "vendor"):
        assert f"org.opencontainers.image.{label}=" in text
    assert "--no-index" in text
    assert "--require-hashes" in text


@pytest.mark.parametrize("spec", core.SERVICES.values(), ids=list(core.SERVICES))
def test_service_layers_dependencies_before_code(spec: core.Service) -> None:
    text = spec.dockerfile.read_text()
    assert text.index("pip install") < text.index(f"COPY models/{spec.bundle}") < text.index("COPY services/")
    assert re.search(rf'^ENTRYPOINT \["python", "-m", "{spec.package}"\]$', text, flags=re.M)

"""The settings ConfigMaps are valid input for the services' real Settings classes (no typos, no bad values)."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from typing import Any

import pytest

from ops import core
from ops.k8s import objects as k8s_objects
from ops.k8s import policies, render

Obj = dict[str, Any]
SETTINGS_MODULES = {s.name: f"{s.package}.settings" for s in core.SERVICES.values()}


@pytest.mark.parametrize("name", policies.SERVICES)
def test_each_service_settings_agree_with_the_service_table(name: str) -> None:
    """The services cannot read ops.core (their images do not carry it), so their settings restate three facts of
    the table (a bare `python -m <package>` serves the demo bundle on the local port); this holds them to it."""
    settings_cls = importlib.import_module(SETTINGS_MODULES[name]).Settings
    service = core.SERVICES[name]
    assert settings_cls.model_config["env_prefix"] == service.env_prefix
    assert settings_cls.model_fields["port"].default == service.local_port
    assert settings_cls.model_fields["model_uri"].default == f"models/{service.bundle}"


def test_the_tiltfile_reads_the_service_table() -> None:
    """Tilt gets the table from `python -m ops.core`; the Tiltfile names no package, port or bundle itself."""
    out = subprocess.run(
        [sys.executable, "-m", "ops.core"], cwd=core.REPO_ROOT, capture_output=True, text=True, check=True, timeout=60
    ).stdout
    table = json.loads(out)
    assert table["services"] == {
        s.name: {"package": s.package, "local_port": s.local_port, "bundle": s.bundle, "gpu": s.gpu}
        for s in core.SERVICES.values()
    }
    tiltfile = (core.REPO_ROOT / "Tiltfile").read_text()
    assert "python -m ops.core" in tiltfile
    for s in core.SERVICES.values():
        for fact in (f"'{s.package}'", f"'{s.bundle}'", str(s.local_port)):
            assert fact not in tiltfile, fact


def service_env(objects: list[Obj], name: str) -> dict[str, str]:
    (dep,) = k8s_objects.find(objects, "Deployment", name)
    spec = dep["spec"]["template"]["spec"]
    container = next(c for c in spec["containers"] if c["name"] == name)
    return k8s_objects.container_env(objects, spec, container)


@pytest.mark.parametrize("name", policies.SERVICES)
@pytest.mark.parametrize("overlay", render.OVERLAYS)
def test_configmap_is_accepted_by_the_service_settings(
    overlay: str, name: str, rendered: dict[str, list[Obj]], monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = policies.SERVICES[name]
    settings_cls = importlib.import_module(SETTINGS_MODULES[name]).Settings
    env = service_env(rendered[overlay], name)
    # The services ignore unknown variables, so a misspelt key would silently do nothing: refuse it here.
    unknown = {
        k for k in env if k.startswith(prefix) and k.removeprefix(prefix).lower() not in settings_cls.model_fields
    }
    assert unknown == set()
    for key in [k for k in os.environ if k.startswith(prefix)]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = settings_cls()  # raises on a value the service would refuse at startup
    assert settings.port == policies.SERVICE_PORT
    expected_device = "cuda" if (name == policies.GPU_SERVICE and render.is_eks(overlay)) else "cpu"
    assert settings.device == expected_device
    assert settings.model_uri == f"/opt/models/{name.split('-')[0]}-demo"


def test_a_bad_value_is_caught(rendered: dict[str, list[Obj]], monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    settings_cls = importlib.import_module(SETTINGS_MODULES["text-classifier"]).Settings
    for key, value in service_env(rendered["local"], "text-classifier").items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("TEXT_CLASSIFIER_LOG_LEVEL", "INFO")  # the Literal is lowercase
    with pytest.raises(ValidationError):
        settings_cls()

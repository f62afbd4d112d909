"""Shared fixtures for the manifest tests: each overlay rendered once per session with the pinned Kustomize."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from ops.k8s import render

Obj = dict[str, Any]


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[Obj]]:
    """Overlay name (plus "eks-prod+<component>" for each optional component) -> rendered objects."""
    out = {name: render.render(name) for name in render.OVERLAYS}
    for component in render.OPTIONAL_COMPONENTS:
        out[f"eks-prod+{component}"] = render.render_with_components("eks-prod", [component])
    return out


@pytest.fixture
def fresh(rendered: dict[str, list[Obj]]) -> Callable[[str], list[Obj]]:
    """A deep copy of one rendered overlay, for tests that break it on purpose."""
    return lambda name: copy.deepcopy(rendered[name])

"""Offline, strict schema validation of every rendered object for the EKS Kubernetes minor."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import kubernetes_validate.utils as kv
import pytest

from ops.images import versions as image_versions
from ops.k8s import objects as k8s_objects
from ops.k8s import render, schema

Obj = dict[str, Any]


def test_schemas_are_those_of_the_eks_minor() -> None:
    minor = image_versions.load_versions()["eks"]["kubernetes_minor"]
    shipped = {".".join(v.split(".")[:2]) for v in kv.all_versions()}
    assert minor in shipped, f"kubernetes-validate ships no {minor} schemas; closest older is used"
    assert schema.schema_version().startswith(minor + ".")


@pytest.mark.parametrize("overlay", [*render.OVERLAYS, *(f"eks-prod+{c}" for c in render.OPTIONAL_COMPONENTS)])
def test_every_object_matches_its_schema(overlay: str, rendered: dict[str, list[Obj]]) -> None:
    assert schema.schema_errors(rendered[overlay]) == []


def test_an_unknown_field_fails_strict_validation(fresh: Callable[[str], list[Obj]]) -> None:
    objects = fresh("eks-prod")
    (dep,) = k8s_objects.find(objects, "Deployment", "image-classifier")
    dep["spec"]["template"]["spec"]["containers"][0]["resource"] = {"limits": {"cpu": "1"}}  # typo of resources
    errors = schema.schema_errors([dep])
    assert len(errors) == 1
    assert "resource" in errors[0]


def test_a_wrong_type_fails(fresh: Callable[[str], list[Obj]]) -> None:
    (hpa,) = k8s_objects.find(fresh("eks-prod"), "HorizontalPodAutoscaler", "text-classifier")
    hpa["spec"]["minReplicas"] = "three"
    assert any("minReplicas" in e for e in schema.schema_errors([hpa]))


def test_a_kind_without_a_bundled_schema_fails_explicitly() -> None:
    scaled_object = {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": "image-classifier"},
        "spec": {"scaleTargetRef": {"name": "image-classifier"}},
    }
    (error,) = schema.schema_errors([scaled_object])
    assert "ScaledObject/image-classifier" in error
    assert "CRD" in error

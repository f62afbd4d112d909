"""Offline, strict schema validation of rendered objects (kubernetes-validate, plus the CRDs an overlay may use)."""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache

from ops.images.versions import load_versions
from ops.k8s import karpenter
from ops.k8s.objects import Obj, ref
from ops.k8s.render import ManifestError

# Schemas of the custom resources an overlay may render (kubernetes-validate ships core kinds only).
# DatadogMetric: the Datadog Cluster Agent's CRD (datadoghq.com/v1alpha1, the fields of DatadogMetricSpec).
CRD_SCHEMAS: dict[tuple[str, str], Obj] = {}
CRD_SCHEMAS[("datadoghq.com/v1alpha1", "DatadogMetric")] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "datadoghq.com/v1alpha1"},
        "kind": {"const": "DatadogMetric"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["query"],
            "additionalProperties": False,
            "properties": {
                "query": {"type": "string", "minLength": 1},
                "externalMetricName": {"type": "string"},
                "maxAge": {"type": "string"},
                "timeWindow": {"type": "string"},
            },
        },
    },
}


@cache
def _karpenter_schemas() -> dict[tuple[str, str], Obj]:
    """NodePool and EC2NodeClass: the CRDs of the pinned Karpenter release itself (ops.k8s.karpenter)."""
    return {key: karpenter.crd_schema(crd) for key, crd in karpenter.provider_crds().items()}


def crd_schema(api_version: str, kind: str) -> Obj | None:
    """The schema of a custom resource an overlay may render, or None for a kind kubernetes-validate knows."""
    key = (api_version, kind)
    if key in CRD_SCHEMAS:
        return CRD_SCHEMAS[key]
    if key in karpenter.CRD_FILES:
        return _karpenter_schemas()[key]
    return None


def schema_version() -> str:
    """Kubernetes version whose schemas validate the overlays: [eks].kubernetes_minor, or the closest older."""
    import kubernetes_validate.utils as kv

    wanted = load_versions()["eks"]["kubernetes_minor"]
    shipped = [v for v in kv.all_versions() if _minor_tuple(v) <= _minor_tuple(wanted)]
    if not shipped:
        raise ManifestError(f"kubernetes-validate ships no schemas at or below {wanted}")
    return shipped[-1]


def _minor_tuple(version: str) -> tuple[int, int]:
    major, minor = version.lstrip("v").split(".")[:2]
    return int(major), int(minor)


def schema_errors(objects: Iterable[Obj], kubernetes_version: str | None = None) -> list[str]:
    """Strict (no unknown fields) schema validation of every object; an object with no schema is an error.

    kubernetes-validate bundles core kinds only. A CRD kind is checked against its schema (`crd_schema`: CRD_SCHEMAS,
    or Karpenter's own CRDs); any other kind without a schema fails here until its schema is handled explicitly.
    """
    import jsonschema
    import kubernetes_validate
    import kubernetes_validate.utils as kv

    version = kubernetes_version or schema_version()
    errors: list[str] = []
    for obj in objects:
        custom = crd_schema(str(obj.get("apiVersion")), str(obj.get("kind")))
        if custom is not None:
            for error in jsonschema.Draft202012Validator(custom).iter_errors(obj):
                where = ".".join(str(p) for p in error.path) or "(root)"
                errors.append(f"{ref(obj)}: {where}: {error.message}")
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kv.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path) or "(root)"
            errors.append(f"{ref(obj)}: {where}: {exc.message}")
        except kv.SchemaNotFoundError as exc:
            errors.append(f"{ref(obj)}: {exc.message} (a CRD? give it a schema or keep it out of overlays)")
    return errors

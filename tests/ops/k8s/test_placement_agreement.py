"""The capacity planner, the policies and the README diagram place every workload on the same node group."""

from __future__ import annotations

import re
from typing import Any

import pytest

from ops import core
from ops.k8s import docs, nodegroups, objects, placement, render
from ops.perf import capacity

Obj = dict[str, Any]


@pytest.fixture(scope="module")
def prod() -> list[Obj]:
    return render.render(docs.DIAGRAM_OVERLAY)


def diagram_groups(text: str) -> dict[str, str]:
    """Mermaid node id of each workload drawn inside a node-group subgraph -> that group's id."""
    where = {}
    for chunk in text.split("  subgraph ")[1:]:
        group, body = chunk.split("[", 1)
        for node in re.findall(r"^    (\w+)\[", body.split("  end")[0], flags=re.M):
            where[node] = group
    return where


def test_capacity_and_the_diagram_agree_on_every_workload(prod: list[Obj]) -> None:
    drawn = diagram_groups(docs.mermaid(objects=prod))
    groups = capacity.load_nodegroups()
    checked = 0
    for obj, spec in objects.workloads(prod):
        name = objects.ref(obj)
        planned = capacity.choose_nodegroup(capacity.PodSpec(name, {}, {}, "rendered", pod=spec), groups)
        assert drawn[re.sub(r"[^A-Za-z0-9]", "_", name)] == re.sub(r"[^A-Za-z0-9]", "_", planned.name), name
        assert placement.placement([obj], groups) == {name: [planned.name]}
        checked += 1
    assert checked == len(drawn) >= 5


@pytest.mark.parametrize("service", list(core.SERVICES))
def test_capacity_plans_each_service_where_the_diagram_draws_it(service: str, prod: list[Obj]) -> None:
    spec = capacity.pod_spec(service)
    assert spec.source == f"rendered overlay {capacity.PROD_OVERLAY}"
    group = capacity.choose_nodegroup(spec, capacity.load_nodegroups())
    assert diagram_groups(docs.mermaid(objects=prod))[f"Deployment_{service.replace('-', '_')}"] == group.name.replace(
        "-", "_"
    )
    assert (group.gpus_per_node > 0) == core.SERVICES[service].gpu


def test_only_the_first_affinity_term_no_longer_decides() -> None:
    """Terms are ORed: a pod whose second term selects the GPU group may land there (the old planner missed it)."""
    gpu = nodegroups.load_nodegroups()["gpu-t4"]
    pod: Obj = {
        "containers": [{"name": "x", "resources": {"limits": {"nvidia.com/gpu": "1"}}}],
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "workload-class", "operator": "In", "values": ["none"]}]},
                        {"matchExpressions": [{"key": "workload-class", "operator": "In", "values": ["gpu"]}]},
                    ]
                }
            }
        },
    }
    spec = capacity.PodSpec("x", {"nvidia.com/gpu": 1.0}, {}, "test", pod=pod)
    assert capacity.choose_nodegroup(spec, capacity.load_nodegroups()) == gpu


@pytest.mark.parametrize("service", list(core.SERVICES))
def test_the_fallback_reads_the_base_manifests_and_matches_the_render(service: str) -> None:
    rendered = capacity.pod_spec(service)
    fallback = capacity.base_pod_spec(service)
    assert fallback.requests == rendered.requests
    groups = capacity.load_nodegroups()
    assert capacity.choose_nodegroup(fallback, groups) == capacity.choose_nodegroup(rendered, groups)


def test_the_fallback_is_used_and_named_when_kustomize_cannot_run(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(overlay: str) -> list[Obj]:
        raise render.ManifestError("no kustomize")

    monkeypatch.setattr(capacity, "render", broken)
    spec = capacity.pod_spec("text-classifier")
    assert spec.source.startswith("FALLBACK: manifests/base/text-classifier")
    assert spec.requests == capacity.base_pod_spec("text-classifier").requests


def test_one_quantity_parser() -> None:
    assert objects.parse_quantity("3920m") == pytest.approx(3.92)
    assert objects.parse_quantity("14Gi") == 14 * 2**30
    assert objects.parse_quantity("1.5k") == 1500
    assert objects.parse_quantity(2) == 2
    assert objects.parse_quantity("1e3") == 1000
    for bad in ("", "1Qi", "lots", "1 Gi"):
        with pytest.raises(ValueError, match="quantity"):
            objects.parse_quantity(bad)

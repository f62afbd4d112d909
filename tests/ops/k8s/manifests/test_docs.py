"""docs/manifests.md carries the diagram and ASG tags generated from the real overlay and node groups."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ops.k8s import docs, nodegroups, render
from ops.k8s import objects as k8s_objects


def test_generated_sections_are_current() -> None:
    assert docs.stale_doc_sections() == [], "run `invoke manifests.diagram --write`"
    assert docs.stale_doc_sections(docs.README_PATH) == [], "run `invoke manifests.diagram --write`"


def test_a_stale_diagram_is_detected_and_rewritten(tmp_path: Path) -> None:
    doc = tmp_path / "manifests.md"
    shutil.copy(docs.DOC_PATH, doc)
    doc.write_text(doc.read_text().replace("cpu_general", "cpu_elsewhere", 1))
    assert docs.stale_doc_sections(doc) == ["placement-diagram"]
    assert docs.write_doc_sections(doc) == ["placement-diagram"]
    assert docs.stale_doc_sections(doc) == []
    assert doc.read_text() == docs.DOC_PATH.read_text()


def test_diagram_puts_each_workload_in_its_node_group(rendered: dict[str, list[dict[str, Any]]]) -> None:
    text = docs.mermaid(objects=rendered["eks-prod"])
    assert text.startswith("flowchart")
    blocks = {}
    for chunk in text.split("  subgraph ")[1:]:
        name, body = chunk.split("[", 1)
        blocks[name] = body.split("  end")[0]
    assert set(blocks) == {"cpu_general", "gpu_t4"}
    assert "Deployment text-classifier" in blocks["cpu_general"]
    assert "Deployment cluster-autoscaler" in blocks["cpu_general"]
    for workload in ("Deployment image-classifier", "DaemonSet nvidia-device-plugin", "DaemonSet dcgm-exporter"):
        assert workload in blocks["gpu_t4"]
        assert workload not in blocks["cpu_general"]
    assert "HPA 3-12 pods" in blocks["cpu_general"]
    assert "HPA 2-4 pods" in blocks["gpu_t4"]


def test_gpu_group_scale_from_zero_template() -> None:
    """At zero nodes the autoscaler needs no node-template ASG tags for a plain GPU group: it reads the GPU count
    from its EC2 instance table, and the labels and taints from the EKS API (docs/manifests.md)."""
    gpu = nodegroups.load_nodegroups()["gpu-t4"]
    rows = {what: (value, source) for what, value, source in docs.scale_from_zero_template(gpu)}
    assert rows["nvidia.com/gpu"] == ("1", "its EC2 instance-type table (g4dn.xlarge)")
    assert "`k8s.amazonaws.com/accelerator=nvidia-tesla-t4`" in rows["labels"][0]
    assert "DescribeNodegroup" in rows["labels"][1]
    assert rows["taints"][0] == "`nvidia.com/gpu=true:NoSchedule`"
    (ca,) = k8s_objects.find(render.render("eks-prod"), "Deployment", "cluster-autoscaler")
    flags = ca["spec"]["template"]["spec"]["containers"][0]["command"]
    discovery = "asg:tag=k8s.io/cluster-autoscaler/enabled,k8s.io/cluster-autoscaler/$(CLUSTER_NAME)"
    assert f"--node-group-auto-discovery={discovery}" in flags
    # One GPU managed node group per zone: balanced, so a zone-spread pod's zone decides which one grows.
    assert "--balance-similar-node-groups" in flags
    assert gpu.per_zone
    assert len(gpu.managed()) == len(gpu.zones) == 3


def test_cluster_name_reaches_the_autoscaler(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for overlay, cluster, autoscaler in (
        ("eks-staging", "eks-inference-staging", "karpenter"),
        ("eks-prod", "eks-inference-prod", "cluster-autoscaler"),
    ):
        (ca,) = k8s_objects.find(rendered[overlay], "Deployment", autoscaler)
        c = ca["spec"]["template"]["spec"]["containers"][0]
        cm_name = next(e for e in c["env"] if e["name"] == "CLUSTER_NAME")["valueFrom"]["configMapKeyRef"]["name"]
        (cm,) = k8s_objects.find(rendered[overlay], "ConfigMap", cm_name)
        assert cm["data"]["CLUSTER_NAME"] == cluster
        # Pod Identity (infra/), not IRSA: an IRSA annotation would shadow the Pod Identity credentials.
        (sa,) = k8s_objects.find(rendered[overlay], "ServiceAccount", autoscaler)
        assert "eks.amazonaws.com/role-arn" not in sa["metadata"].get("annotations", {})

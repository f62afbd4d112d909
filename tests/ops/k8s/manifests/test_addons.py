"""manifests/cluster-addons.yaml: read once, by the CDK stack, the kind cluster and the `cluster-addons` policy."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from ops.k8s import addons, kind, nodeimage, policies, render
from ops.toolchain import tools

Obj = dict[str, Any]


def _edited_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, edit: Callable[[list[Obj]], list[Obj]]) -> None:
    """Point the reader at a copy of the add-on list with `edit` applied."""
    data = yaml.safe_load(addons.ADDONS_PATH.read_text())
    data["addons"] = edit(data["addons"])
    path = tmp_path / "cluster-addons.yaml"
    path.write_text(yaml.safe_dump(data))
    monkeypatch.setattr(addons, "ADDONS_PATH", path)


def test_the_list_provides_what_the_manifests_need() -> None:
    assert addons.provided(addons.METRICS_API, "eks") == ["metrics-server"]
    assert addons.provided(addons.METRICS_API, "kind") == ["metrics-server"]
    assert addons.provided(addons.NETWORK_POLICY_ENGINE, "eks") == ["vpc-cni"]
    # kindnetd's engine needs CONFIG_NFT_QUEUE, which these machines lack: kube-router's firewall instead.
    assert addons.provided(addons.NETWORK_POLICY_ENGINE, "kind") == ["kube-router"]
    assert addons.provided("pod-network", "kind") == ["vpc-cni"]
    assert [a.name for a in addons.eks_addons()] == [
        "vpc-cni",
        "kube-proxy",
        "eks-pod-identity-agent",
        "coredns",
        "metrics-server",
        "eks-node-monitoring-agent",
    ]


@pytest.mark.parametrize("overlay", render.OVERLAYS)
def test_without_metrics_server_every_cpu_hpa_is_inert(
    overlay: str, rendered: dict[str, list[Obj]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The day-one failure of issue 19: no metrics-server, so the CPU HPAs never scale."""
    assert policies.check_cluster_addons(overlay, rendered[overlay]) == []
    _edited_list(tmp_path, monkeypatch, lambda items: [a for a in items if a["name"] != "metrics-server"])
    platform = policies.overlay_platform(overlay)
    assert policies.check_cluster_addons(overlay, rendered[overlay]) == [
        "HorizontalPodAutoscaler/image-classifier, HorizontalPodAutoscaler/text-classifier need metrics.k8s.io, "
        f"but no add-on in cluster-addons.yaml provides it on {platform}"
    ]


def test_metrics_server_only_on_kind_fails_the_eks_overlays(
    rendered: dict[str, list[Obj]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the repository had before: kind installed metrics-server, the EKS stack none."""

    def kind_only(items: list[Obj]) -> list[Obj]:
        for a in items:
            if a["name"] == "metrics-server":
                del a["eks"]
        return items

    _edited_list(tmp_path, monkeypatch, kind_only)
    assert policies.check_cluster_addons("local", rendered["local"]) == []
    for overlay in render.EKS_OVERLAYS:
        (found,) = policies.check_cluster_addons(overlay, rendered[overlay])
        assert found.endswith("need metrics.k8s.io, but no add-on in cluster-addons.yaml provides it on eks")


def test_network_policies_need_an_engine(
    rendered: dict[str, list[Obj]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_engine(items: list[Obj]) -> list[Obj]:
        for a in items:
            a["provides"] = [p for p in a.get("provides", []) if p != addons.NETWORK_POLICY_ENGINE]
        return items

    _edited_list(tmp_path, monkeypatch, no_engine)
    assert policies.check_cluster_addons("eks-prod", rendered["eks-prod"]) == [
        "4 NetworkPolicies need network-policy-engine, but no add-on in cluster-addons.yaml provides it on eks"
    ]
    assert policies.check_cluster_addons("local", rendered["local"]) == []  # the local overlay renders none


def test_eks_metrics_server_is_the_release_kind_runs() -> None:
    """The EKS community add-on and the kind build are the same upstream release (tools.toml)."""
    eks = addons.load_addons()["metrics-server"].eks
    assert eks is not None
    assert eks.addon == "metrics-server"
    assert eks.version is not None
    assert eks.version.split("-eksbuild.")[0] == tools.load_manifest().tools["metrics-server"].version


def test_kind_installs_from_the_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert [a.name for a in addons.kind_installs()] == ["kube-router", "metrics-server"]
    assert kind.addon_manifest("metrics-server") == render.REPO_ROOT / "kind" / "addons" / "metrics-server.yaml"
    for addon in addons.load_addons().values():
        assert addon.kind is not None, f"{addon.name}: say how kind has it (install, builtin) or why not (absent)"
        if addon.kind.install is not None:
            assert addon.kind.install.is_file()
    for name, ref in (("metrics-server", nodeimage.metrics_server_ref()), ("kube-router", nodeimage.kube_router_ref())):
        images = {
            c["image"]
            for d in yaml.safe_load_all(kind.addon_manifest_text(name))
            if d and d["kind"] in ("Deployment", "DaemonSet")
            for c in d["spec"]["template"]["spec"]["containers"]
        }
        assert images == {ref}, name  # the build the offline node image ships
    _edited_list(tmp_path, monkeypatch, lambda items: [a for a in items if a["name"] != "metrics-server"])
    assert [a.name for a in addons.kind_installs()] == ["kube-router"]
    with pytest.raises(kind.KindError, match="no kind manifest for metrics-server"):
        kind.addon_manifest_text("metrics-server")

"""The kind cluster config, the offline node image plan and the Tiltfile agree with the facts they depend on.

No docker and no cluster: these read the committed files and the pinned kubeadm (tools.toml) only.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib

import pytest
import yaml

from ops import core
from ops.images import versions as image_versions
from ops.k8s import kind, nodeimage
from ops.k8s.nodegroups import load_nodegroups
from ops.serve import SERVICES
from ops.toolchain import tools

REPO = core.REPO_ROOT
TILTFILE = (REPO / "Tiltfile").read_text()


def _kubeadm() -> str:
    """The pinned kubeadm; a required tool, so a missing one is a failure here, not a skip."""
    return str(tools.ensure("kubeadm"))


def test_offline_patch_names_the_etcd_and_coredns_we_build() -> None:
    m = tools.load_manifest()
    patch = nodeimage.kubeadm_patch(m)
    assert patch["kind"] == "ClusterConfiguration"
    assert patch["etcd"]["local"]["imageTag"] == m.tools["etcd"].version.removeprefix("v") + "-0"
    assert patch["dns"]["imageTag"] == m.tools["coredns"].version


def test_every_image_kubeadm_asks_for_has_a_component() -> None:
    m = tools.load_manifest()
    version = nodeimage.kubernetes_version(m)
    refs = nodeimage.kubeadm_images(nodeimage.Path(_kubeadm()), version, nodeimage.kubeadm_patch(m))
    names = {nodeimage.component_for(ref).name for ref in refs}
    control_plane = {"kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy", "etcd", "coredns"}
    assert names == {*control_plane, "pause"}
    assert f"registry.k8s.io/kube-apiserver:{version}" in refs
    assert f"registry.k8s.io/etcd:{m.tools['etcd'].version.removeprefix('v')}-0" in refs
    # containerd's sandbox image is the pause kubeadm asks for (kind/node-image/rootfs/etc/containerd/config.toml).
    (pause,) = [r for r in refs if nodeimage.component_for(r).name == "pause"]
    config = tomllib.loads((nodeimage.NODE_DIR / "rootfs/etc/containerd/config.toml").read_text())
    assert config["plugins"]["io.containerd.grpc.v1.cri"]["sandbox_image"] == pause


def test_unknown_image_is_refused() -> None:
    with pytest.raises(nodeimage.NodeImageError, match="no component"):
        nodeimage.component_for("registry.k8s.io/kube-something:v1")


def test_plan_tag_changes_with_the_node_files(tmp_path: nodeimage.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = nodeimage.plan("sha256:os").tag
    copy = tmp_path / "node-image"
    shutil.copytree(nodeimage.NODE_DIR, copy)
    (copy / "rootfs/etc/default/kubelet").write_text("KUBELET_EXTRA_ARGS=--v=4\n")
    monkeypatch.setattr(nodeimage, "NODE_DIR", copy)
    assert nodeimage.plan("sha256:os").tag != before
    assert nodeimage.plan("sha256:other-os").tag != nodeimage.plan("sha256:os").tag


def test_render_config_sets_image_patch_and_extra() -> None:
    node = kind.NodeImage("eks-inference/kind-node:v1.35.4-abc", True, {"kind": "ClusterConfiguration"}, "test")
    extra = {
        "extraMounts": [{"hostPath": "/usr/local/libexec/x", "containerPath": "/usr/local/sbin/x"}],
        "containerdConfigPatches": ["[plugins]\n"],
    }
    config = yaml.safe_load(kind.render_config(node, extra))
    assert config["name"] == kind.cluster_name()
    assert all(n["image"] == node.ref for n in config["nodes"])
    assert any("failCgroupV1: false" in p for p in config["kubeadmConfigPatches"])
    assert any("ClusterConfiguration" in p for p in config["kubeadmConfigPatches"])
    assert config["nodes"][0]["extraMounts"] == extra["extraMounts"]
    assert config["containerdConfigPatches"] == ["[plugins]\n"]
    upstream = yaml.safe_load(kind.render_config(kind.NodeImage(kind.upstream_node_image(), False, None, "test")))
    assert len(upstream["kubeadmConfigPatches"]) == 1
    assert "containerdConfigPatches" not in upstream


def test_kind_node_is_labelled_like_the_cpu_node_group() -> None:
    config = yaml.safe_load(kind.CLUSTER_CONFIG.read_text())
    cpu = load_nodegroups()["cpu-general"]
    for node in config["nodes"]:
        for key, value in node["labels"].items():
            assert cpu.labels[key] == value
        # Published on loopback only.
        assert all(p["listenAddress"] == "127.0.0.1" for p in node.get("extraPortMappings", []))


def test_upstream_node_image_is_the_eks_minor_by_digest() -> None:
    ref = kind.upstream_node_image()
    minor = image_versions.load_versions()["eks"]["kubernetes_minor"]
    assert re.fullmatch(rf"kindest/node:v{re.escape(minor)}\.\d+@sha256:[0-9a-f]{{64}}", ref)


def test_metrics_server_runs_the_pinned_build() -> None:
    docs = list(yaml.safe_load_all(kind.addon_manifest_text("metrics-server")))
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    image = dep["spec"]["template"]["spec"]["containers"][0]["image"]
    pinned = tools.load_manifest().tools["metrics-server"].version
    assert image == f"registry.k8s.io/metrics-server/metrics-server:{pinned}"


def test_tiltfile_guards_and_ports_match_the_repository() -> None:
    assert f"KIND_CONTEXT = '{kind.context_name()}'" in TILTFILE
    for guard in ("version_settings(check_updates=False", "analytics_settings(enable=False)", "allow_k8s_contexts("):
        assert guard in TILTFILE
    # The Tiltfile reads the one service table (`python -m ops.core`) and restates no name or port of it.
    assert "local('uv run python -m ops.core'" in TILTFILE
    code = "\n".join(line.split("#", 1)[0] for line in TILTFILE.splitlines())
    for service in SERVICES:
        assert str(service.port) not in code, f"{service.name}'s port is restated in the Tiltfile"
    table = json.loads(
        subprocess.run([sys.executable, "-m", "ops.core"], capture_output=True, text=True, check=True).stdout
    )
    assert {name: row["local_port"] for name, row in table["services"].items()} == {s.name: s.port for s in SERVICES}
    assert "invoke manifests.render --overlay local-live" in TILTFILE
    # No Tilt extension: they are fetched from GitHub at run time.
    assert not re.search(r"^load\(", TILTFILE, flags=re.M)

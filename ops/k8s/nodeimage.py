"""The offline kind node image: Debian + containerd + the pinned Kubernetes build, with every image kubeadm asks for.

kind's own node images come from a registry. This builds the equivalent from parts these machines can obtain:
the OS base that `images.base --offline` makes (debootstrap), Debian's systemd/containerd/runc/CNI plugins, and
the Go builds of the pinned toolchain (tools.toml). The files that make a node a node live in kind/node-image/.

The control-plane images are asked of the built kubeadm itself (`kubeadm config images list`), so their names
and tags are exactly what `kubeadm init` will look for. Two of them are not served at kubeadm's versions by the
Go module proxy (etcd, coredns); the image carries a kubeadm patch naming the versions it ships instead, in the
label `PATCH_LABEL`, and the cluster config (ops/k8s/kind.py) applies it.

The image tag is a fingerprint of every input, so a build happens only when one of them changed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ops import core
from ops.core import REPO_ROOT, OpsError, cache_root, console
from ops.images import build as image_build
from ops.images import docker as image_docker
from ops.images import osbase
from ops.toolchain import tools

NODE_DIR = REPO_ROOT / "kind" / "node-image"
NODE_REPOSITORY = "eks-inference/kind-node"
PARTS_REPOSITORY = "eks-inference/kind-parts"
# The image's own record of the kubeadm ClusterConfiguration patch its images need (JSON).
PATCH_LABEL = "io.eks-inference.kind.kubeadm-patch"
FINGERPRINT_LABEL = "io.eks-inference.kind.fingerprint"
# Binaries installed on the node itself (/usr/bin).
NODE_TOOLS = ("kubelet", "kubeadm", "kubectl", "crictl")
KUBEADM_API = "kubeadm.k8s.io/v1beta4"


class NodeImageError(OpsError):
    """The node image cannot be planned or built; the message says what is missing."""


PROXY_PACKAGES = ("iptables", "conntrack")
ROUTER_PACKAGES = ("iptables", "ipset", "conntrack", "iproute2")


@dataclass(frozen=True)
class Component:
    """One image baked into the node: which binary goes where, and whether it needs a Debian userland."""

    name: str
    tool: str | None  # tools.toml entry; None: built here from kind/node-image/<name>
    path: str
    os_base: bool = False
    # Debian packages its Debian userland needs (os_base only).
    packages: tuple[str, ...] = ()


COMPONENTS: dict[str, Component] = {
    c.name: c
    for c in (
        Component("kube-apiserver", "kube-apiserver", "/usr/local/bin/kube-apiserver"),
        Component("kube-controller-manager", "kube-controller-manager", "/usr/local/bin/kube-controller-manager"),
        Component("kube-scheduler", "kube-scheduler", "/usr/local/bin/kube-scheduler"),
        # kube-proxy programs iptables: it needs iptables(-nft), iptables-restore and friends.
        Component("kube-proxy", "kube-proxy", "/usr/local/bin/kube-proxy", os_base=True, packages=PROXY_PACKAGES),
        # The NetworkPolicy engine (kind/addons/kube-router.yaml, its firewall only): iptables and Debian's ipset.
        Component("kube-router", "kube-router", "/usr/local/bin/kube-router", os_base=True, packages=ROUTER_PACKAGES),
        Component("etcd", "etcd", "/usr/local/bin/etcd"),
        Component("coredns", "coredns", "/coredns"),
        Component("pause", None, "/pause"),
        Component("metrics-server", "metrics-server", "/metrics-server"),
    )
}


def kubernetes_version(manifest: tools.Manifest | None = None) -> str:
    return (manifest or tools.load_manifest()).tools["kubelet"].version


def metrics_server_ref(manifest: tools.Manifest | None = None) -> str:
    version = (manifest or tools.load_manifest()).tools["metrics-server"].version
    return f"registry.k8s.io/metrics-server/metrics-server:{version}"


def kube_router_ref(manifest: tools.Manifest | None = None) -> str:
    """The name kind/addons/kube-router.yaml runs, under which the node image ships the pinned build."""
    version = (manifest or tools.load_manifest()).tools["kube-router"].version
    return f"docker.io/cloudnativelabs/kube-router:{version}"


def kubeadm_patch(manifest: tools.Manifest | None = None) -> dict[str, Any]:
    """ClusterConfiguration fields that point kubeadm at the etcd and coredns versions this image ships."""
    m = manifest or tools.load_manifest()
    # No apiVersion: kind matches a patch to its generated document by kind alone then, whichever kubeadm API
    # version it writes (v1beta3 for kind v0.32 and Kubernetes 1.35); both versions have these two fields.
    return {
        "kind": "ClusterConfiguration",
        "etcd": {"local": {"imageTag": m.tools["etcd"].version.removeprefix("v") + "-0"}},
        "dns": {"imageTag": m.tools["coredns"].version},
    }


def component_for(ref: str) -> Component:
    """registry.k8s.io/coredns/coredns:v1.14.7 -> the coredns component."""
    name = ref.rsplit(":", 1)[0].rsplit("/", 1)[-1]
    if name not in COMPONENTS:
        raise NodeImageError(f"kubeadm asks for {ref}, which no component of the node image provides")
    return COMPONENTS[name]


def kubeadm_images(kubeadm: Path, version: str, patch: dict[str, Any]) -> list[str]:
    """The images `kubeadm init` will use for `version` with `patch`, asked of kubeadm itself (offline)."""
    config = {"apiVersion": KUBEADM_API, **patch, "kubernetesVersion": version}
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as handle:
        yaml.safe_dump(config, handle)
        handle.flush()
        proc = core.run(
            [str(kubeadm), "config", "images", "list", "--config", handle.name],
            timeout=60,
            ok_codes=range(256),
            effect=False,
        )
    if proc.returncode != 0:
        raise NodeImageError(f"kubeadm config images list failed: {proc.stderr.strip()[-2000:]}")
    return [line.strip() for line in proc.stdout.splitlines() if line.strip()]


def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink()):
        h.update(str(path.relative_to(root)).encode() + b"\0")
        h.update(path.read_bytes() if path.is_file() else str(path.readlink()).encode())
        h.update(b"\0")
    return h.hexdigest()


@dataclass(frozen=True)
class Plan:
    """What a build would produce; computing it runs nothing but the cached kubeadm (no network, no docker)."""

    tag: str
    kubernetes: str
    os_image: str
    binaries: dict[str, Path]
    images: dict[str, Component]
    patch: dict[str, Any]
    fingerprint: str
    missing_tools: list[str] = field(default_factory=list)


def plan(os_image_id: str | None = None) -> Plan:
    """The node image tag for the current inputs: kind/node-image, the pinned binaries, the OS base."""
    m = tools.load_manifest()
    version = kubernetes_version(m)
    needed = sorted({*NODE_TOOLS, *(c.tool for c in COMPONENTS.values() if c.tool)})
    binaries: dict[str, Path] = {}
    missing: list[str] = []
    digests: list[str] = []
    for name in needed:
        spec = m.tools[name]
        stamp = tools.read_stamp(spec)
        if stamp is None:
            missing.append(name)
            continue
        binaries[name] = tools.binary_path(spec)
        digests.append(f"{name}={stamp['sha256']}")
    patch = kubeadm_patch(m)
    refs: list[str] = []
    if "kubeadm" in binaries:
        refs = kubeadm_images(binaries["kubeadm"], version, patch)
    refs += [metrics_server_ref(m), kube_router_ref(m)]
    os_image = osbase.offline_os_image()
    fp = image_docker.fingerprint(
        version, _tree_digest(NODE_DIR), *digests, *refs, os_image, os_image_id or "", json.dumps(patch, sort_keys=True)
    )
    return Plan(
        tag=f"{NODE_REPOSITORY}:{version}-{fp}",
        kubernetes=version,
        os_image=os_image,
        binaries=binaries,
        images={ref: component_for(ref) for ref in refs},
        patch=patch,
        fingerprint=fp,
        missing_tools=missing,
    )


def current_plan() -> Plan:
    """The plan against the OS base present in docker now (its image id is an input)."""
    os_ref = osbase.offline_os_image()
    return plan(image_docker.image_id(os_ref) if image_docker.image_exists(os_ref) else None)


def _scratch_dockerfile(component: Component) -> str:
    return (
        "FROM scratch\n"
        f"COPY payload {component.path}\n"
        "ENV PATH=/usr/local/bin:/usr/bin:/bin\n"
        f'ENTRYPOINT ["{component.path}"]\n'
    )


def _os_dockerfile(component: Component, os_image: str) -> str:
    return (
        f"FROM {os_image}\n"
        "RUN apt-get update \\\n"
        "    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "
        f"{' '.join(component.packages)} \\\n"
        "    && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb\n"
        f"COPY payload {component.path}\n"
        f'ENTRYPOINT ["{component.path}"]\n'
    )


def build_pause(dest: Path) -> None:
    """pause is a few lines of our own Go (kind/node-image/pause), built static with the machine's Go."""
    env = tools.go_env()
    env["CGO_ENABLED"] = "0"
    proc = core.run(
        [tools.go_binary(), "build", "-trimpath", "-ldflags", "-s -w", "-o", str(dest), "."],
        cwd=NODE_DIR / "pause",
        env=env,
        ok_codes=range(256),
    )
    if proc.returncode != 0:
        raise NodeImageError(f"building pause failed: {proc.stderr.strip()[-2000:]}")


def _part_tag(ref: str, fp: str) -> str:
    return f"{PARTS_REPOSITORY}/{component_for(ref).name}:{ref.rsplit(':', 1)[1]}-{fp}"


@dataclass
class BuildReport:
    """What `build` did, with seconds per step (for the summary table and the closing notes)."""

    tag: str
    built: bool
    steps: list[tuple[str, float]] = field(default_factory=list)

    def timed(self, name: str) -> _Timer:
        return _Timer(self, name)


class _Timer:
    def __init__(self, report: BuildReport, name: str) -> None:
        self.report, self.name = report, name

    def __enter__(self) -> None:
        self.started = time.monotonic()
        console.print(f"[bold]node image:[/bold] {self.name}")

    def __exit__(self, *exc: object) -> None:
        self.report.steps.append((self.name, time.monotonic() - self.started))


def build(*, force: bool = False) -> BuildReport:
    """Build the node image unless the tag for the current inputs is already present; returns what was done."""
    started = time.monotonic()
    missing = current_plan().missing_tools
    for name in missing:
        tools.ensure(name)
    os_image = osbase.ensure_os_base(offline=True)
    p = current_plan()
    report = BuildReport(tag=p.tag, built=False)
    if image_docker.image_exists(p.tag) and not force:
        console.print(f"[green]node image present[/green] {p.tag}")
        report.steps.append(("cached", time.monotonic() - started))
        return report
    with tempfile.TemporaryDirectory(prefix="kind-node-", dir=_scratch_dir()) as tmp:
        ctx = Path(tmp)
        shutil.copytree(NODE_DIR, ctx, dirs_exist_ok=True, ignore=shutil.ignore_patterns("pause"))
        (ctx / "bin").mkdir()
        for name in NODE_TOOLS:
            shutil.copy2(p.binaries[name], ctx / "bin" / name)
        (ctx / "version").write_text(p.kubernetes + "\n")
        (ctx / "images").mkdir()
        with report.timed(f"{len(p.images)} component images"):
            refs = _build_parts(p, os_image, ctx / "parts")
        with report.timed("image archive"):
            image_docker.run(["docker", "save", "-o", str(ctx / "images" / "images.tar"), *refs])
            image_docker.run(["docker", "rmi", *refs], quiet=True)
        labels = {
            PATCH_LABEL: json.dumps(p.patch, sort_keys=True),
            FINGERPRINT_LABEL: p.fingerprint,
            "org.opencontainers.image.title": f"kind node {p.kubernetes} (offline build)",
        }
        label_lines = "".join(f"LABEL {k}={json.dumps(v)}\n" for k, v in labels.items())
        dockerfile = ctx / "Dockerfile"
        dockerfile.write_text(dockerfile.read_text() + "\n" + label_lines)
        with report.timed("node image"):
            image_build.docker_build(
                dockerfile, [p.tag, f"{NODE_REPOSITORY}:{p.kubernetes}"], {"OS_IMAGE": os_image}, context=ctx
            )
    report.built = True
    return report


def _build_parts(p: Plan, os_image: str, parts: Path) -> list[str]:
    """docker build each component image, tag it with the name kubeadm asks for; returns those refs."""
    refs: list[str] = []
    for ref, component in p.images.items():
        part = parts / component.name
        part.mkdir(parents=True)
        if component.tool is None:
            build_pause(part / "payload")
        else:
            shutil.copy2(p.binaries[component.tool], part / "payload")
        dockerfile = part / "Dockerfile"
        dockerfile.write_text(
            _os_dockerfile(component, os_image) if component.os_base else _scratch_dockerfile(component)
        )
        internal = _part_tag(ref, p.fingerprint)
        if not image_docker.image_exists(internal):
            image_build.docker_build(dockerfile, [internal], {}, context=part)
        image_docker.run(["docker", "tag", internal, ref], quiet=True)
        refs.append(ref)
    return refs


def _scratch_dir() -> Path:
    path = cache_root() / "tmp"
    path.mkdir(parents=True, exist_ok=True)
    return path


def patch_of(tag: str) -> dict[str, Any] | None:
    """The kubeadm patch an offline node image records in its labels, or None for any other image."""
    raw = image_docker.image_labels(tag).get(PATCH_LABEL)
    return dict(json.loads(raw)) if raw else None

"""The local kind cluster of `invoke up`: create or reuse it, load our images, deploy overlays/local, forward ports.

The cluster config is committed (kind/cluster.yaml). The node image is kind's own where a registry answers
(base-images/versions.toml [kind]) and the offline build of kind/node-image otherwise (ops/k8s/nodeimage.py);
the offline image brings a kubeadm patch of its own, which is added to the config here.

Every command runs the pinned binaries (tools.toml): kind, kubectl. `down` removes what `up` made: the node
containers, the `kind` docker network when nothing else uses it, and the kube context.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ops import core
from ops.core import REPO_ROOT, OpsError, console
from ops.images import build as image_build
from ops.images import docker as image_docker
from ops.images import versions as image_versions
from ops.k8s import addons, deploy, nodegroups, nodeimage
from ops.toolchain import tools

CLUSTER_CONFIG = REPO_ROOT / "kind" / "cluster.yaml"
PARITY_CONFIG = REPO_ROOT / "kind" / "parity.yaml"
ZONE_LABEL = "topology.kubernetes.io/zone"
KIND_NETWORK = "kind"
CLUSTER_LABEL = "io.x-k8s.kind.cluster"
NAMESPACE = "inference"
# The Services listen on 80 (targetPort: the containers' named port http, 8080).
SERVICE_PORT = 80
# A registry that answers `GET /v2/` (401 without credentials) can serve kind's node image.
REGISTRY_PROBE = "https://registry-1.docker.io/v2/"

NodeImageMode = Literal["auto", "upstream", "offline"]


class KindError(OpsError):
    """A kind or cluster step failed; the message carries the command's own words."""


def cluster_name(config: Path = CLUSTER_CONFIG) -> str:
    return str(yaml.safe_load(config.read_text())["name"])


def context_name(name: str | None = None) -> str:
    """kind names the kube context kind-<cluster>; Tilt recognizes kind by that prefix."""
    return f"kind-{name or cluster_name()}"


def upstream_node_image() -> str:
    return str(image_versions.load_versions()["kind"]["upstream_node_image"])


def registry_answers(url: str = REGISTRY_PROBE, timeout_s: float = 5.0) -> bool:
    """True when the registry answers at all (any HTTP status); False on a refused or silent connection."""
    try:
        urllib.request.urlopen(url, timeout=timeout_s).close()
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError, TimeoutError):
        return False
    return True


@dataclass(frozen=True)
class NodeImage:
    ref: str
    offline: bool
    patch: dict[str, Any] | None
    why: str


def choose_node_image(mode: NodeImageMode = "auto") -> NodeImage:
    """kind's node image where it can be had, else the offline build (built here when missing or stale)."""
    upstream = upstream_node_image()
    if mode == "upstream":
        return NodeImage(upstream, False, None, "asked for kind's node image")
    if mode == "auto":
        if image_docker.image_exists(upstream):
            return NodeImage(upstream, False, None, "kind's node image is present locally")
        if registry_answers():
            return NodeImage(upstream, False, None, "a registry answers; docker pulls kind's node image")
    report = nodeimage.build()
    why = "asked for the offline node image" if mode == "offline" else "no registry answers: offline node image"
    return NodeImage(report.tag, True, nodeimage.patch_of(report.tag), why)


def parity_config(path: Path = PARITY_CONFIG) -> dict[str, Any]:
    """The parity cluster's kind config: nodes generated from manifests/nodegroups.yaml, counts from kind/parity.yaml.

    Every node gets its group's labels and a zone of the group's in turn; taints go in through kubeadm's
    nodeRegistration (kind has no taint field). The control plane (the first node) loses its control-plane taint.
    The top-level kubeadm and containerd patches are kind/cluster.yaml's, so both clusters boot the same way.
    """
    wanted = yaml.safe_load(path.read_text())
    groups = nodegroups.load_nodegroups()
    base = yaml.safe_load(CLUSTER_CONFIG.read_text())
    nodes: list[dict[str, Any]] = []
    for group_name, count in wanted["nodes"].items():
        group = groups[group_name]
        for i in range(int(count)):
            role = "control-plane" if not nodes else "worker"
            taints = [{"key": t["key"], "value": t["value"], "effect": t["effect"]} for t in group.taints]
            registration = "InitConfiguration" if role == "control-plane" else "JoinConfiguration"
            nodes.append(
                {
                    "role": role,
                    "labels": {**group.labels, ZONE_LABEL: group.zones[i % len(group.zones)]},
                    "kubeadmConfigPatches": [
                        yaml.safe_dump({"kind": registration, "nodeRegistration": {"taints": taints}}, sort_keys=False)
                    ],
                }
            )
    config = {k: v for k, v in base.items() if k not in ("name", "nodes")}
    return {**config, "name": wanted["name"], "nodes": nodes}


def render_config(
    node: NodeImage, extra: Mapping[str, Any] | None = None, base: Mapping[str, Any] | None = None
) -> str:
    """kind/cluster.yaml (or `base`, e.g. `parity_config()`) with the node image set, the image's kubeadm patch
    and an optional extra config merged.

    `extra` (invoke.yaml cluster.kind.extra_config, a YAML file) may add `extraMounts` to every node and
    `containerdConfigPatches` / `kubeadmConfigPatches`; CI uses it for the sandbox adaptation in .ci/.
    """
    config = dict(base) if base is not None else yaml.safe_load(CLUSTER_CONFIG.read_text())
    patches = list(config.get("kubeadmConfigPatches", []))
    if node.patch:
        patches.append(yaml.safe_dump(node.patch, sort_keys=False))
    containerd = list(config.get("containerdConfigPatches", []))
    extra = extra or {}
    patches += list(extra.get("kubeadmConfigPatches", []))
    containerd += list(extra.get("containerdConfigPatches", []))
    for n in config["nodes"]:
        n["image"] = node.ref
        if extra.get("extraMounts"):
            n["extraMounts"] = [*n.get("extraMounts", []), *extra["extraMounts"]]
    config["kubeadmConfigPatches"] = patches
    if containerd:
        config["containerdConfigPatches"] = containerd
    return yaml.safe_dump(config, sort_keys=False)


def load_extra(path: str | None) -> dict[str, Any] | None:
    if not path:
        return None
    file = Path(path) if Path(path).is_absolute() else REPO_ROOT / path
    if not file.is_file():
        raise KindError(f"extra kind config {file} does not exist")
    return dict(yaml.safe_load(file.read_text()) or {})


class Kind:
    """The pinned kind binary bound to one cluster name and kubeconfig."""

    def __init__(self, name: str | None = None, kubeconfig: Path | None = None) -> None:
        self.name = name or cluster_name()
        self.binary = str(tools.ensure("kind"))
        self.env = dict(os.environ)
        if kubeconfig is not None:
            self.env["KUBECONFIG"] = str(kubeconfig)
        self.kubeconfig = kubeconfig

    @property
    def context(self) -> str:
        return context_name(self.name)

    def run(self, *args: str, timeout: float = 900, capture: bool = True) -> subprocess.CompletedProcess[str]:
        console.print(f"[dim]$ kind {' '.join(args)}[/dim]")
        try:
            return core.run(
                [self.binary, *args], env=self.env, capture=capture, timeout=timeout, effect=args[:1] != ("get",)
            )
        except core.CommandFailed as exc:
            raise KindError(f"kind {' '.join(args)} failed ({exc.returncode}):\n{exc.stderr[-4000:]}") from exc

    def exists(self) -> bool:
        return self.name in self.run("get", "clusters").stdout.split()

    def create(self, config_text: str, *, wait: str = "5m") -> None:
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="kind-config-") as handle:
            handle.write(config_text)
            handle.flush()
            self.run("create", "cluster", "--name", self.name, "--config", handle.name, "--wait", wait, capture=False)

    def load(self, refs: Sequence[str], nodes: Sequence[str] = ()) -> None:
        """kind load docker-image: one archive for all refs, so shared layers travel once; onto `nodes` only
        when given (default: every node)."""
        only = ["--nodes", ",".join(nodes)] if nodes else []
        self.run("load", "docker-image", "--name", self.name, *only, *refs, capture=False)

    def drop_layer_archives(self, ref: str, nodes: Sequence[str]) -> None:
        """Delete the layer archives `kind load` left in each node's containerd content store beside the unpacked
        snapshots: containers start from the snapshots, and the archives double each node's copy of a ~6 GB image.
        The image record, its manifest and config stay; kind load still sees the image as present."""
        first = ref.split("/", 1)[0]
        name = ref if "." in first or ":" in first else f"docker.io/{ref}"  # how containerd names docker's refs
        script = (
            'm=$(ctr -n k8s.io images ls "name==$0" | awk \'NR==2 {print $3}\'); [ -n "$m" ] || exit 0; '
            'ctr -n k8s.io content get "$m" | python3 -c \'import json, sys; '
            '[print(l["digest"]) for l in json.load(sys.stdin).get("layers", [])]\' | '
            "xargs -r ctr -n k8s.io content rm >/dev/null"
        )
        for node in nodes:
            image_docker.run(["docker", "exec", node, "sh", "-c", script, name], quiet=True)

    def delete(self) -> None:
        if self.exists():
            self.run("delete", "cluster", "--name", self.name)
        # kind leaves its docker network behind on purpose (other clusters may share it); remove it when idle.
        if _network_exists(KIND_NETWORK) and not _network_containers(KIND_NETWORK):
            image_docker.run(["docker", "network", "rm", KIND_NETWORK], quiet=True)

    def restart_apiserver(self, timeout_s: float = 180) -> None:
        """Stop the kube-apiserver container of the control-plane node; the kubelet starts it again."""
        node = f"{self.name}-control-plane"
        stop = "crictl stop $(crictl ps -q --name kube-apiserver)"
        image_docker.run(["docker", "exec", node, "sh", "-c", stop], capture=True, quiet=True)
        kubectl = deploy.Kubectl(self.context, self.kubeconfig)
        deadline = time.monotonic() + timeout_s
        time.sleep(5)
        while kubectl.run("get", "--raw", "/readyz", ok_codes=(0, 1), quiet=True).returncode != 0:
            if time.monotonic() > deadline:
                raise KindError(f"kube-apiserver did not come back within {timeout_s:.0f}s")
            time.sleep(2)

    def node_containers(self) -> list[str]:
        out = image_docker.run(
            ["docker", "ps", "-a", "--filter", f"label={CLUSTER_LABEL}={self.name}", "--format", "{{.Names}}"],
            capture=True,
            quiet=True,
        )
        return out.split()

    def leftovers(self) -> list[str]:
        """What a deleted cluster could leave behind; empty when `down` was clean."""
        left = [f"container {c}" for c in self.node_containers()]
        if _network_exists(KIND_NETWORK) and not _network_containers(KIND_NETWORK):
            left.append(f"docker network {KIND_NETWORK}")
        kubectl = str(tools.ensure("kubectl"))
        contexts = core.run(
            [kubectl, "config", "get-contexts", "-o", "name"], env=self.env, ok_codes=range(256), effect=False
        ).stdout.split()
        if self.context in contexts:
            left.append(f"kube context {self.context}")
        return left


def _network_exists(name: str) -> bool:
    return core.run(["docker", "network", "inspect", name], ok_codes=range(256), effect=False).returncode == 0


def _network_containers(name: str) -> list[str]:
    out = image_docker.run(
        ["docker", "network", "inspect", name, "--format", "{{range .Containers}}{{.Name}} {{end}}"],
        capture=True,
        quiet=True,
    )
    return out.split()


def addon_manifest(name: str) -> Path:
    """The manifest `invoke up` applies for add-on `name` (its `kind.install` in manifests/cluster-addons.yaml)."""
    addon = addons.load_addons().get(name)
    if addon is None or addon.kind is None or addon.kind.install is None:
        raise KindError(f"{addons.ADDONS_PATH.name} has no kind manifest for {name}")
    return addon.kind.install


# The add-ons whose images the offline node image ships at the versions pinned in tools.toml: their manifests
# name the image without a tag, and `invoke up` sets the pinned one.
ADDON_IMAGES = {"metrics-server": nodeimage.metrics_server_ref, "kube-router": nodeimage.kube_router_ref}


def addon_manifest_text(name: str) -> str:
    """Add-on `name`'s kind manifest, with the image pinned in tools.toml where the node image ships it."""
    docs = [d for d in yaml.safe_load_all(addon_manifest(name).read_text()) if d]
    if name in ADDON_IMAGES:
        ref = ADDON_IMAGES[name]()
        for doc in docs:
            if doc["kind"] in ("Deployment", "DaemonSet"):
                for c in doc["spec"]["template"]["spec"]["containers"]:
                    c["image"] = ref
    return yaml.safe_dump_all(docs, sort_keys=False)


def content_tag(ref: str) -> str:
    """Tag a local image by its content (`<repo>:kind-<id>`), so a changed image always rolls the Deployment."""
    repo = ref.rsplit(":", 1)[0]
    tagged = f"{repo}:kind-{image_docker.image_id(ref).removeprefix('sha256:')[:12]}"
    image_docker.run(["docker", "tag", ref, tagged], quiet=True)
    return tagged


@dataclass
class UpResult:
    """What `up` did, step by step, with seconds (printed as a table and kept for the closing numbers)."""

    context: str
    node_image: NodeImage | None = None
    created: bool = False
    images: dict[str, str] = field(default_factory=dict)
    steps: list[tuple[str, float]] = field(default_factory=list)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        console.print(f"[bold cyan]up:[/bold cyan] {name}")
        started = time.monotonic()
        try:
            yield
        finally:
            self.steps.append((name, time.monotonic() - started))


def ensure_cluster(
    kind: Kind,
    result: UpResult,
    *,
    mode: NodeImageMode = "auto",
    extra: Mapping[str, Any] | None = None,
    base: Mapping[str, Any] | None = None,
) -> None:
    """Create the cluster unless it exists (from kind/cluster.yaml, or `base`: the parity cluster's
    `parity_config()`), then install the add-ons manifests/cluster-addons.yaml lists for kind."""
    if kind.exists():
        console.print(f"[green]cluster {kind.name} exists[/green]: reusing it")
        kind.run("export", "kubeconfig", "--name", kind.name)  # its context, in this kubeconfig too
    else:
        with result.step("node image"):
            result.node_image = choose_node_image(mode)
        console.print(f"node image {result.node_image.ref} ({result.node_image.why})")
        with result.step("cluster create"):
            kind.create(render_config(result.node_image, extra, base))
        result.created = True
    kubectl = deploy.Kubectl(kind.context, kind.kubeconfig)
    for addon in addons.kind_installs():
        with result.step(addon.name):
            install_addon(kubectl, addon.name, kind)


def install_addon(kubectl: deploy.Kubectl, name: str, kind: Kind | None = None) -> None:
    """Apply one add-on's kind manifest and wait for its workloads; metrics-server also waits until the apiserver
    serves the Metrics API."""
    if name == "metrics-server":
        install_metrics_server(kubectl, kind)
        return
    manifest = addon_manifest_text(name)
    kubectl.run("apply", "--server-side", "--field-manager=eks-inference-up", "-f", "-", input_text=manifest)
    for doc in yaml.safe_load_all(manifest):
        if doc and doc["kind"] in deploy.ROLLOUT_KINDS:
            meta = doc["metadata"]
            kubectl.run(
                "-n", meta.get("namespace", "default"), "rollout", "status", f"{doc['kind'].lower()}/{meta['name']}",
                "--timeout=300s", timeout=330,
            )  # fmt: skip


def install_metrics_server(kubectl: deploy.Kubectl, kind: Kind | None = None, timeout_s: float = 90) -> None:
    """Apply metrics-server, wait for its rollout, then until the apiserver serves the Metrics API through it.

    Seen here with kube-apiserver v1.35.4: an APIService registered after the apiserver started can stay
    unserved (every request for the group answers 404, while the APIService reports Available and metrics-server
    answers when asked directly); re-registering it does not help, an apiserver that starts with the APIService
    already present serves it. So when the API is not served in time, the kube-apiserver static pod of the kind
    node is restarted once (the kubelet starts it again), and only then is it an error.
    """
    kubectl.run(
        "apply",
        "--server-side",
        "--field-manager=eks-inference-up",
        "-f",
        "-",
        input_text=addon_manifest_text("metrics-server"),
    )
    kubectl.run("-n", "kube-system", "rollout", "status", "deployment/metrics-server", "--timeout=300s", timeout=330)
    for attempt in (1, 2):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            probe = kubectl.run("get", "--raw", "/apis/metrics.k8s.io/v1beta1/nodes", ok_codes=(0, 1), quiet=True)
            if probe.returncode == 0 and '"NodeMetricsList"' in probe.stdout:
                return
            time.sleep(3)
        if attempt == 1 and kind is not None:
            console.print("[yellow]the Metrics API is not served yet: restarting kube-apiserver[/yellow]")
            kind.restart_apiserver()
            kubectl.run("wait", "--for=condition=Available", "apiservice/v1beta1.metrics.k8s.io", "--timeout=120s")
    raise KindError(f"the apiserver does not serve the Metrics API {timeout_s:.0f}s after metrics-server started")


def build_and_load(kind: Kind, result: UpResult, services: Sequence[str], *, offline: bool) -> dict[str, str]:
    """Build the CPU images of `services`, tag them by content and `kind load` them; returns repo -> ref."""
    refs: dict[str, str] = {}
    with result.step("images build"):
        for name in services:
            record = image_build.build_service(name, "cpu", offline=offline)
            refs[core.SERVICES[name].repository] = content_tag(record.image)
    with result.step("kind load"):
        kind.load(list(refs.values()))
    result.images = refs
    return refs


def down(kind: Kind) -> list[str]:
    """Delete the cluster and what kind leaves behind; returns anything still left (should be empty)."""
    kind.delete()
    return kind.leftovers()


@contextlib.contextmanager
def port_forward(
    kubectl: deploy.Kubectl, service: str, local_port: int, *, namespace: str = NAMESPACE, timeout_s: float = 60
) -> Iterator[str]:
    """`kubectl port-forward svc/<service>` on 127.0.0.1:<local_port>; yields the base URL, stops on exit."""
    cmd = [
        kubectl.binary,
        "--context",
        str(kubectl.context),
        "-n",
        namespace,
        "port-forward",
        "--address",
        "127.0.0.1",
        f"svc/{service}",
        f"{local_port}:{SERVICE_PORT}",
    ]
    proc = core.start(cmd, env=kubectl.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise KindError(
                    f"port-forward to {service} exited: {(proc.stderr.read() if proc.stderr else '')[-2000:]}"
                )
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", local_port), timeout=1):
                break
            if time.monotonic() > deadline:
                raise KindError(
                    f"port-forward to {service} did not listen on 127.0.0.1:{local_port} in {timeout_s:.0f}s"
                )
            time.sleep(0.2)
        yield f"http://127.0.0.1:{local_port}"
    finally:
        core.stop(proc, 10)


def tilt_binary() -> str | None:
    """Tilt is a prerequisite users install (no registry here serves it); None when it is not on PATH."""
    return shutil.which("tilt")


@dataclass(frozen=True)
class LocalService:
    """A service of the local overlay and the 127.0.0.1 port `invoke up` (and the Tiltfile) forward to it."""

    name: str
    local_port: int


def local_services() -> list[LocalService]:
    """The services `invoke serve` runs, on the same ports, so clients work against either."""
    from ops.serve import SERVICES

    return [LocalService(s.name, s.port) for s in SERVICES]


def up(
    kind: Kind,
    *,
    allowed_contexts: Mapping[str, str | Sequence[str]],
    mode: NodeImageMode = "auto",
    use_tilt: bool = True,
    ci: bool = False,
    detach: bool = False,
    extra: Mapping[str, Any] | None = None,
    offline_images: bool | None = None,
    timeout_s: int = deploy.ROLLOUT_TIMEOUT_S,
) -> UpResult:
    """Cluster, then Tilt (`tilt up`, or `tilt ci` with ci) when installed, else the same deployment without it."""
    result = UpResult(context=kind.context)
    ensure_cluster(kind, result, mode=mode, extra=extra)
    if offline_images is None:
        if result.node_image is not None:
            offline_images = result.node_image.offline
        else:
            offline_images = mode == "offline" or (mode == "auto" and not registry_answers())
    tilt = tilt_binary() if use_tilt else None
    if tilt is not None:
        _run_tilt(tilt, kind, ci=ci, offline_images=offline_images)
        return result
    if use_tilt:
        console.print(
            "[yellow]tilt is not installed[/yellow] (https://docs.tilt.dev/install.html): deploying the same overlay "
            "without live update: build, kind load, deploy --env local, port-forward."
        )
    services = [s.name for s in local_services()]
    ensure_bundles()
    refs = build_and_load(kind, result, services, offline=offline_images)
    with result.step("deploy --env local"):
        deploy.deploy(
            "local",
            allowed_contexts,
            context=kind.context,
            kubeconfig=kind.kubeconfig,
            timeout_s=timeout_s,
            image_overrides=refs,
        )
    return result


def ensure_bundles() -> None:
    from ops.models import DEFAULT_OUT, build_all

    build_all(DEFAULT_OUT, progress=lambda message: console.log(message))


def _run_tilt(tilt: str, kind: Kind, *, ci: bool, offline_images: bool) -> None:
    """`tilt ci` (exits with the result) or `tilt up` (until Ctrl-C), against the kind context only.

    The Tiltfile's own invoke calls (the wheelhouse resource builds the CPU base when missing) inherit the
    offline choice through INVOKE_IMAGES_OFFLINE.
    """
    # Analytics off (the Tiltfile turns them off too, but only once it has loaded); the legacy builder, as
    # image_build.build uses, since Tilt would otherwise build through BuildKit where the daemon offers it.
    env = {**kind.env, "TILT_DISABLE_ANALYTICS": "1", "DOCKER_BUILDKIT": "0"}
    if offline_images:
        env["INVOKE_IMAGES_OFFLINE"] = "1"
    # Tilt runs `kind load docker-image` from PATH: the pinned kind goes first.
    env["PATH"] = os.pathsep.join([str(Path(kind.binary).parent), env.get("PATH", "")])
    cmd = (
        [tilt, "ci", "--context", kind.context]
        if ci
        else [tilt, "up", "--context", kind.context, "--host", "127.0.0.1"]
    )
    console.print(f"[dim]$ {' '.join(cmd)}[/dim]")
    code = core.run(cmd, cwd=REPO_ROOT, env=env, capture=False, ok_codes=range(256)).returncode
    if code != 0:
        raise KindError(f"{' '.join(cmd[1:2])} failed with exit code {code}")


@contextlib.contextmanager
def forwarded(kind: Kind, services: Sequence[LocalService] | None = None) -> Iterator[dict[str, str]]:
    """Port-forward every local service to 127.0.0.1; yields name -> base URL."""
    kubectl = deploy.Kubectl(kind.context, kind.kubeconfig)
    with contextlib.ExitStack() as stack:
        urls = {
            s.name: stack.enter_context(port_forward(kubectl, s.name, s.local_port))
            for s in services or local_services()
        }
        yield urls

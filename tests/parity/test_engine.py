"""kube-router's firewall (the parity cluster's NetworkPolicy engine) enforces on this machine's kernel.

No cluster: a real etcd and kube-apiserver (the pinned builds) and kube-router v2.1.0 with only its firewall on,
all inside a network namespace this test makes (the "node"), with two more namespaces as "pods" routed through
it. Pod and Node objects are written to the API by hand (no kubelet). The host's iptables are never touched:
every rule kube-router writes lives in the node namespace, which the test deletes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ops.toolchain import tools

TOOLS = ("etcd", "kube-apiserver", "kubectl", "kube-router")
POD_A, POD_B, NODE_IP = "10.244.1.2", "10.244.1.3", "192.0.2.10"


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for binary in ("ip", "iptables", "ipset", "openssl"):
        if shutil.which(binary) is None:
            return f"needs {binary} (Debian: iproute2, iptables, ipset, openssl)"
    absent = [t for t in TOOLS if tools.cached(t) is None]
    return f"needs the pinned {', '.join(absent)} (invoke tools.install)" if absent else None


pytestmark = pytest.mark.skipif(_missing() is not None, reason=str(_missing()))


def sh(*argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=timeout)


@dataclass
class Node:
    """The namespaces, the control plane in the node namespace, and a kubectl bound to it."""

    ns: str
    work: Path
    procs: list[subprocess.Popen[bytes]]

    def netns(self, name: str, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", f"{self.ns}-{name}", *argv]

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        argv = self.netns("node", str(tools.cached("kubectl")), "--kubeconfig", str(self.work / "kubeconfig"), *args)
        return subprocess.run(argv, input=stdin, check=True, capture_output=True, text=True, timeout=60).stdout

    def start(self, name: str, *argv: str) -> subprocess.Popen[bytes]:
        log = (self.work / f"{name}.log").open("wb")
        proc = subprocess.Popen(self.netns("node", "nice", "-n", "10", *argv), stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def a_reaches_b(self) -> bool:
        """One HTTP request from pod a to pod b's server; False when the connection is refused or dropped."""
        probe = sh(
            *self.netns("a", "curl", "-s", "-o", "/dev/null", "--max-time", "5", f"http://{POD_B}:8080/"), check=False
        )
        return probe.returncode == 0


def _wire(node: Node) -> None:
    for name in ("node", "a", "b"):
        sh("ip", "netns", "add", f"{node.ns}-{name}")
        sh(*node.netns(name, "ip", "link", "set", "lo", "up"))
    sh(*node.netns("node", "ip", "addr", "add", f"{NODE_IP}/32", "dev", "lo"))
    sh(*node.netns("node", "sysctl", "-qw", "net.ipv4.ip_forward=1"))
    for pod, ip in (("a", POD_A), ("b", POD_B)):
        host, peer = f"v{pod}{node.ns[-4:]}", f"p{pod}{node.ns[-4:]}"
        sh("ip", "link", "add", host, "type", "veth", "peer", "name", peer)
        sh("ip", "link", "set", host, "netns", f"{node.ns}-node")
        sh("ip", "link", "set", peer, "netns", f"{node.ns}-{pod}")
        sh(*node.netns(pod, "ip", "addr", "add", f"{ip}/32", "dev", peer))
        sh(*node.netns(pod, "ip", "link", "set", peer, "up"))
        sh(*node.netns(pod, "ip", "route", "add", "10.244.1.0/24", "dev", peer))
        sh(*node.netns("node", "ip", "link", "set", host, "up"))
        sh(*node.netns("node", "ip", "route", "add", f"{ip}/32", "dev", host))
        sh(*node.netns("node", "sysctl", "-qw", f"net.ipv4.conf.{host}.proxy_arp=1"))


def _control_plane(node: Node) -> None:
    w = node.work
    sh("openssl", "genrsa", "-out", str(w / "sa.key"), "2048")
    sh("openssl", "rsa", "-in", str(w / "sa.key"), "-pubout", "-out", str(w / "sa.pub"))
    (w / "tokens.csv").write_text("parity-token,admin,admin,system:masters\n")
    node.start("etcd", str(tools.cached("etcd")), "--data-dir", str(w / "etcd"),
               "--listen-client-urls", "http://127.0.0.1:2379", "--advertise-client-urls", "http://127.0.0.1:2379",
               "--listen-peer-urls", "http://127.0.0.1:2380")  # fmt: skip
    node.start("apiserver", str(tools.cached("kube-apiserver")), "--etcd-servers", "http://127.0.0.1:2379",
               "--bind-address", "127.0.0.1", "--advertise-address", NODE_IP, "--secure-port", "6443",
               "--cert-dir", str(w / "certs"), "--token-auth-file", str(w / "tokens.csv"),
               "--authorization-mode", "AlwaysAllow", "--service-account-key-file", str(w / "sa.pub"),
               "--service-account-signing-key-file", str(w / "sa.key"), "--service-account-issuer", "https://parity",
               "--service-cluster-ip-range", "10.96.0.0/16",
               "--disable-admission-plugins", "ServiceAccount")  # fmt: skip
    (w / "kubeconfig").write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: p\n"
        "clusters: [{name: p, cluster: {server: 'https://127.0.0.1:6443', insecure-skip-tls-verify: true}}]\n"
        "users: [{name: p, user: {token: parity-token}}]\ncontexts: [{name: p, context: {cluster: p, user: p}}]\n"
    )
    deadline = time.monotonic() + 300  # the apiserver's start; far more than it takes on a busy 2-core machine
    while time.monotonic() < deadline:
        try:
            if node.kubectl("get", "--raw", "/readyz").strip() == "ok":
                return
        except subprocess.CalledProcessError:
            pass
        time.sleep(2)
    pytest.fail(f"kube-apiserver not ready: {(w / 'apiserver.log').read_text()[-2000:]}")


def _objects(node: Node) -> None:
    pods = "".join(
        f"---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {p}, namespace: demo, labels: {{app: {p}}}}}\n"
        f"spec: {{nodeName: n1, automountServiceAccountToken: false, containers: [{{name: c, image: none}}]}}\n"
        for p in ("a", "b")
    )
    node.kubectl("apply", "-f", "-", stdin=(
        "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\nspec: {podCIDR: 10.244.1.0/24}\n"
        "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: demo}\n" + pods
    ))  # fmt: skip
    node.kubectl("patch", "node", "n1", "--subresource=status", "--type=merge", "-p",
                 f'{{"status":{{"addresses":[{{"type":"InternalIP","address":"{NODE_IP}"}}]}}}}')  # fmt: skip
    for pod, ip in (("a", POD_A), ("b", POD_B)):
        status = f'{{"status":{{"phase":"Running","podIP":"{ip}","podIPs":[{{"ip":"{ip}"}}],"hostIP":"{NODE_IP}"}}}}'
        node.kubectl("-n", "demo", "patch", "pod", pod, "--subresource=status", "--type=merge", "-p", status)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    n = Node(ns=f"parity-{uuid.uuid4().hex[:6]}", work=tmp_path_factory.mktemp("engine"), procs=[])
    try:
        _wire(n)
        _control_plane(n)
        _objects(n)
        server = subprocess.Popen(n.netns("b", "python3", "-m", "http.server", "8080", "--bind", POD_B),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        n.procs.append(server)
        yield n
    finally:
        for proc in reversed(n.procs):
            proc.terminate()
        for proc in n.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        for name in ("node", "a", "b"):
            sh("ip", "netns", "del", f"{n.ns}-{name}", check=False)


def _wait_for(node: Node, reachable: bool) -> bool:
    """Whether a->b becomes `reachable` within kube-router's sync (seconds; the bound is far above it)."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if node.a_reaches_b() == reachable:
            return True
        time.sleep(1)
    return False


DENY_B = (
    "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-b, namespace: demo}\n"
    "spec: {podSelector: {matchLabels: {app: b}}, policyTypes: [Ingress]}\n"
)
# The image classifier's egress shape (components/network-policies, allow-image-fetch-egress), on pod a.
FETCH_EGRESS = (
    "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: fetch-egress, namespace: demo}\n"
    "spec:\n  podSelector: {matchLabels: {app: a}}\n  policyTypes: [Egress]\n  egress:\n"
    "    - to: [{ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 100.64.0.0/10,"
    " 169.254.0.0/16, 127.0.0.0/8]}}]\n      ports: [{protocol: TCP, port: 80}, {protocol: TCP, port: 8080}]\n"
)


@pytest.fixture(scope="module")
def engine(node: Node) -> Node:
    """kube-router with only its firewall controller, as the parity nodes run it."""
    node.start("kube-router", str(tools.cached("kube-router")), "--kubeconfig", str(node.work / "kubeconfig"),
               "--hostname-override", "n1", "--run-firewall=true", "--run-router=false", "--run-service-proxy=false",
               "--enable-ipv4=true", "--enable-ipv6=false", "--health-port", "0", "--metrics-port", "0")  # fmt: skip
    return node


def test_pods_talk_before_any_policy(engine: Node) -> None:
    assert _wait_for(engine, reachable=True)


def test_a_deny_refuses_the_connection_and_removing_it_restores_it(engine: Node) -> None:
    engine.kubectl("apply", "-f", "-", stdin=DENY_B)
    try:
        assert _wait_for(engine, reachable=False), "the deny-all ingress policy was not enforced"
    finally:
        engine.kubectl("-n", "demo", "delete", "networkpolicy", "deny-b")
    assert _wait_for(engine, reachable=True)


def test_the_fetch_egress_shape_refuses_private_addresses(engine: Node) -> None:
    """Pod b is in 10/8, which the image classifier's egress excepts: a connection to it is refused."""
    engine.kubectl("apply", "-f", "-", stdin=FETCH_EGRESS)
    try:
        assert _wait_for(engine, reachable=False), "the ipBlock except was not enforced"
    finally:
        engine.kubectl("-n", "demo", "delete", "networkpolicy", "fetch-egress")
    assert _wait_for(engine, reachable=True)
    assert sh("iptables", "-S", check=False).stdout.count("KUBE-ROUTER") == 0  # the host's rules stay untouched

"""invoke tasks for the local kind cluster: `up`, `down` and `cluster.node-image`. Logic lives in ops.k8s."""

from __future__ import annotations

import contextlib
import signal
import threading
from pathlib import Path
from typing import cast

from invoke import Collection, Context, Exit
from rich.table import Table

from ops.core import console
from ops.k8s import deploy as deploy_mod
from ops.k8s import kind as kind_mod
from ops.k8s import nodeimage
from ops.k8s import parity as parity_mod
from ops.tasks.common import ops_task


def _kind(kubeconfig: str | None, parity: bool = False) -> kind_mod.Kind:
    name = parity_mod.cluster_name() if parity else None
    return kind_mod.Kind(name, kubeconfig=Path(kubeconfig) if kubeconfig else None)


def _mode(c: Context, offline: bool, upstream: bool) -> kind_mod.NodeImageMode:
    if offline and upstream:
        raise Exit("--offline and --upstream exclude each other", code=2)
    if offline:
        return "offline"
    if upstream:
        return "upstream"
    return cast(kind_mod.NodeImageMode, c.config.get("cluster", {}).get("kind", {}).get("node_image", "auto"))


@ops_task(
    help={
        "ci": "Run `tilt ci` instead of `tilt up`: build, deploy, wait until every resource is ready, then exit.",
        "no_tilt": "Do not use Tilt even if it is installed: build, kind load, deploy --env local, port-forward.",
        "detach": "Without Tilt: return after the rollout instead of holding the port-forwards until Ctrl-C.",
        "offline": "Use the offline node image (kind/node-image) even if a registry answers.",
        "upstream": "Use kind's node image (base-images/versions.toml [kind]) even if no registry answers.",
        "kubeconfig": "Kubeconfig file for the kind context (default: $KUBECONFIG or ~/.kube/config).",
        "parity": "The parity cluster instead (kind/parity.yaml): eks-prod + components/kind-parity on nodes made "
        "from manifests/nodegroups.yaml, NetworkPolicies enforced by kube-router; no Tilt.",
    }
)
def up(
    c: Context,
    ci: bool = False,
    no_tilt: bool = False,
    detach: bool = False,
    offline: bool = False,
    upstream: bool = False,
    kubeconfig: str | None = None,
    parity: bool = False,
) -> None:
    """The main job: a kind cluster with both services; `tilt up` when Tilt is installed, else the same without it."""
    mode = _mode(c, offline, upstream)
    conf = c.config.get("cluster", {}).get("kind", {})
    if parity:
        _up_parity(c, mode, conf, kubeconfig, detach)
        return
    if c.config.run.dry:
        console.print(f"would create or reuse kind cluster {kind_mod.cluster_name()} (node image: {mode})")
        console.print("would run tilt ci/up" if kind_mod.tilt_binary() and not no_tilt else "would build, load, deploy")
        return
    kind = _kind(kubeconfig)
    result = kind_mod.up(
        kind,
        allowed_contexts=dict(c.config.get("deploy", {}).get("contexts", {})),
        mode=mode,
        use_tilt=not no_tilt,
        ci=ci,
        extra=kind_mod.load_extra(conf.get("extra_config") or None),
        offline_images=bool(c.config.get("images", {}).get("offline")) or None,
    )
    _print_steps(f"invoke up ({result.context})", result.steps)
    if result.images and not detach:
        _hold_port_forwards(kind)
    elif result.images:
        for s in kind_mod.local_services():
            console.print(
                f"{s.name}: kubectl --context {kind.context} -n {kind_mod.NAMESPACE} port-forward "
                f"--address 127.0.0.1 svc/{s.name} {s.local_port}:{kind_mod.SERVICE_PORT}"
            )


def _up_parity(
    c: Context, mode: kind_mod.NodeImageMode, conf: dict[str, str], kubeconfig: str | None, detach: bool
) -> None:
    if c.config.run.dry:
        console.print(f"would create or reuse kind cluster {parity_mod.cluster_name()} (node image: {mode})")
        console.print(f"would build, load and apply {parity_mod.LABEL}")
        return
    kind = _kind(kubeconfig, parity=True)
    result = parity_mod.up(
        kind,
        mode=mode,
        extra=kind_mod.load_extra(conf.get("extra_config") or None),
        offline_images=bool(c.config.get("images", {}).get("offline")) or None,
    )
    _print_steps(f"invoke up --parity ({result.context})", result.steps)
    table = Table(title=f"{parity_mod.LABEL}: where each pod runs")
    for col in ("namespace", "pod", "node", "node group", "phase"):
        table.add_column(col)
    for row in parity_mod.pod_rows(deploy_mod.Kubectl(kind.context, kind.kubeconfig)):
        table.add_row(*row)
    console.print(table)
    if not detach:
        _hold_port_forwards(kind)


def _print_steps(title: str, steps: list[tuple[str, float]]) -> None:
    table = Table(title=title)
    table.add_column("step")
    table.add_column("seconds", justify="right")
    for name, seconds in steps:
        table.add_row(name, f"{seconds:.1f}")
    console.print(table)


def _hold_port_forwards(kind: kind_mod.Kind) -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with kind_mod.forwarded(kind) as urls:
        table = Table(title="services (Ctrl-C to stop forwarding; the cluster keeps running)")
        for col in ("service", "predict", "docs", "metrics"):
            table.add_column(col)
        for name, url in urls.items():
            table.add_row(name, f"{url}/v1/predict", f"{url}/docs", f"{url}/metrics")
        console.print(table)
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()


@ops_task(
    help={
        "kubeconfig": "Kubeconfig file holding the kind context (default: $KUBECONFIG or ~/.kube/config).",
        "parity": "Delete the parity cluster (`invoke up --parity`) instead.",
    }
)
def down(c: Context, kubeconfig: str | None = None, parity: bool = False) -> None:
    """Delete the kind cluster and what kind leaves behind (its docker network, the kube context)."""
    name = parity_mod.cluster_name() if parity else kind_mod.cluster_name()
    if c.config.run.dry:
        console.print(f"would delete kind cluster {name} and the idle `kind` network")
        return
    left = kind_mod.down(_kind(kubeconfig, parity))
    if left:
        raise Exit(f"down left behind: {', '.join(left)}", code=1)
    console.print("[green]kind cluster deleted; nothing left behind[/green]")


@ops_task(name="node-image", help={"force": "Rebuild even when the image for the current inputs exists."})
def node_image(c: Context, force: bool = False) -> None:
    """Build the offline kind node image (Debian + containerd + the pinned Kubernetes build); cached by content."""
    if c.config.run.dry:
        p = nodeimage.current_plan()
        console.print(f"node image {p.tag}")
        if p.missing_tools:
            console.print(f"would first install: {', '.join(p.missing_tools)}")
        for ref, comp in p.images.items():
            console.print(f"  {ref}  <- {comp.tool or 'kind/node-image/' + comp.name}")
        return
    report = nodeimage.build(force=force)
    _print_steps(f"{report.tag} ({'built' if report.built else 'cached'})", report.steps)


# `cluster.node-image` joins the cluster collection (ops/tasks/cluster.py); `up` and `down` are root tasks.
ns = Collection("local")
# At the root only: `invoke up` / `invoke down`, typed every day.
ROOT_TASKS = [up, down]

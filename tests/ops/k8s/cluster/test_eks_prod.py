"""The prod overlay deployed through `ops.k8s.deploy` to the simulated cluster: placement, capacity, rollout, PDB."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import pytest
import yaml
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from ops.k8s import budget as gpu_budget
from ops.k8s import deploy, policies, render
from ops.k8s.nodegroups import load_nodegroups
from ops.k8s.sim import SimCluster, node_manifest, wait_until

pytestmark = pytest.mark.cluster

NAMESPACE = "inference"
GPU_SERVICE = "image-classifier"
CPU_SERVICE = "text-classifier"
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}
GPU_ADDONS = ("nvidia-device-plugin", "dcgm-exporter")

Obj = dict[str, Any]


class Api:
    """The kubernetes client, answering plain JSON dicts (the API's own field names)."""

    def __init__(self, sim: SimCluster) -> None:
        api_client = config.new_client_from_config(config_file=str(sim.kubeconfig), context=sim.context)
        self.core = client.CoreV1Api(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.policy = client.PolicyV1Api(api_client)

    @staticmethod
    def _json(response: Any) -> Obj:
        return dict(json.loads(response.data))

    def pods(self, name: str, namespace: str = NAMESPACE, include_terminating: bool = False) -> list[Obj]:
        resp = self.core.list_namespaced_pod(
            namespace,
            label_selector=f"app.kubernetes.io/name={name}",
            _preload_content=False,
        )
        pods = list(self._json(resp)["items"])
        return pods if include_terminating else [p for p in pods if "deletionTimestamp" not in p["metadata"]]

    def all_pods(self) -> list[Obj]:
        return list(self._json(self.core.list_pod_for_all_namespaces(_preload_content=False))["items"])

    def deployment(self, name: str) -> Obj:
        return self._json(self.apps.read_namespaced_deployment(name, NAMESPACE, _preload_content=False))

    def deployment_names(self) -> list[str]:
        items = self._json(self.apps.list_deployment_for_all_namespaces(_preload_content=False))["items"]
        return sorted(d["metadata"]["name"] for d in items)

    def daemonset(self, name: str) -> Obj:
        return self._json(self.apps.read_namespaced_daemon_set(name, "kube-system", _preload_content=False))

    def pdb(self, name: str) -> Obj:
        return self._json(self.policy.read_namespaced_pod_disruption_budget(name, NAMESPACE, _preload_content=False))

    def scale(self, name: str, replicas: int) -> None:
        self.apps.patch_namespaced_deployment_scale(name, NAMESPACE, {"spec": {"replicas": replicas}})

    def evict(self, pod: Obj) -> None:
        name = pod["metadata"]["name"]
        body = client.V1Eviction(metadata=client.V1ObjectMeta(name=name, namespace=NAMESPACE))
        self.core.create_namespaced_pod_eviction(name, NAMESPACE, body)


@pytest.fixture(scope="session")
def api(sim: SimCluster) -> Api:
    return Api(sim)


@dataclass
class ProdDeploy:
    """What happened when the prod overlay went through `ops.k8s.deploy`: a dry run, an unconfirmed try, the deploy."""

    dry_run: deploy.DeployResult
    deployments_after_dry_run: list[str]
    unconfirmed_error: Exception | None
    deployments_after_unconfirmed: list[str]
    applied: deploy.DeployResult


@pytest.fixture(scope="session")
def prod(sim: SimCluster, api: Api) -> ProdDeploy:
    # The simulated cluster's context is allowed for prod by configuration, as an operator allows an
    # EKS cluster ARN; the guard itself is the production one.
    allowed = {"prod": sim.context}
    common: dict[str, Any] = {
        "context": sim.context,
        "kubeconfig": sim.kubeconfig,
        "timeout_s": 240,
    }
    dry = deploy.deploy("prod", allowed, dry_run=True, **common)
    after_dry = api.deployment_names()
    error: Exception | None = None
    try:
        deploy.deploy("prod", allowed, confirm=lambda _question: False, **common)
    except deploy.DeployRefused as exc:
        error = exc
    after_unconfirmed = api.deployment_names()
    applied = deploy.deploy("prod", allowed, yes=True, **common)
    return ProdDeploy(dry, after_dry, error, after_unconfirmed, applied)


def tolerates(toleration: Obj, taint: dict[str, str]) -> bool:
    """Kubernetes' toleration matching (k8s.io/api/core/v1 Toleration.ToleratesTaint)."""
    if toleration.get("effect") and toleration["effect"] != taint["effect"]:
        return False
    key, operator = toleration.get("key") or "", toleration.get("operator") or "Equal"
    if not key:
        return operator == "Exists"
    if key != taint["key"]:
        return False
    return operator == "Exists" or toleration.get("value", "") == taint["value"]


def wait_available(api: Api, name: str, replicas: int, timeout_s: float = 120) -> None:
    def done() -> bool:
        d = api.deployment(name)
        s = d.get("status", {})
        return bool(
            s.get("observedGeneration", 0) >= d["metadata"]["generation"]
            and s.get("replicas", 0) == replicas
            and s.get("updatedReplicas", 0) == replicas
            and s.get("availableReplicas", 0) == replicas
        )

    wait_until(done, timeout_s, what=f"{name} at {replicas} available replicas")


# --- the deploy itself -------------------------------------------------------------------------------


def test_dry_run_shows_the_change_and_changes_nothing(prod: ProdDeploy) -> None:
    assert GPU_SERVICE in prod.dry_run.diff
    assert CPU_SERVICE in prod.dry_run.diff
    assert GPU_SERVICE not in prod.deployments_after_dry_run
    assert CPU_SERVICE not in prod.deployments_after_dry_run


def test_prod_without_confirmation_applies_nothing(prod: ProdDeploy) -> None:
    assert isinstance(prod.unconfirmed_error, deploy.DeployRefused)
    assert GPU_SERVICE not in prod.deployments_after_unconfirmed


def test_prod_deploy_rolls_out_every_workload(prod: ProdDeploy) -> None:
    rows = {row[0]: row for row in prod.applied.rows}
    for name in (
        f"Deployment/{GPU_SERVICE}",
        f"Deployment/{CPU_SERVICE}",
        "DaemonSet/nvidia-device-plugin",
    ):
        assert name in rows, rows
        ready, _, desired = rows[name][2].partition("/")
        assert ready == desired, rows[name]
        assert int(desired) > 0, rows[name]
    assert rows[f"Deployment/{GPU_SERVICE}"][1] == NAMESPACE


def test_the_cluster_holds_exactly_what_validate_checked(prod: ProdDeploy, sim: SimCluster) -> None:
    """On the real apiserver: the YAML `invoke manifests.validate` checked, diffed server-side against what
    `invoke deploy` left in the cluster, as the deploy's own field manager, shows no change at all."""
    report = policies.validate_overlay(deploy.OVERLAYS["prod"])
    assert report.ok, report
    kubectl = deploy.Kubectl(sim.context, sim.kubeconfig)
    diff = kubectl.run(
        "diff",
        "--server-side",
        f"--field-manager={deploy.FIELD_MANAGER}",
        "--force-conflicts",
        "-f",
        "-",
        input_text=yaml.safe_dump_all(report.objects),
        ok_codes=(0, 1),
    )
    assert diff.returncode == 0, diff.stdout[-4000:]
    assert diff.stdout == ""


# --- placement ---------------------------------------------------------------------------------------


def test_gpu_service_pods_run_only_on_gpu_nodes(prod: ProdDeploy, api: Api, node_roles: dict[str, str]) -> None:
    pods = api.pods(GPU_SERVICE)
    assert len(pods) == 2
    assert {node_roles[p["spec"]["nodeName"]] for p in pods} == {"gpu"}
    assert {p["status"]["phase"] for p in pods} == {"Running"}


def test_cpu_service_pods_run_only_on_cpu_nodes(prod: ProdDeploy, api: Api, node_roles: dict[str, str]) -> None:
    pods = api.pods(CPU_SERVICE)
    assert len(pods) == 3
    assert {node_roles[p["spec"]["nodeName"]] for p in pods} == {"cpu"}
    assert {p["status"]["phase"] for p in pods} == {"Running"}


@pytest.mark.parametrize("daemonset", GPU_ADDONS)
def test_gpu_daemonsets_run_on_every_gpu_node_and_nowhere_else(
    prod: ProdDeploy, api: Api, node_roles: dict[str, str], daemonset: str
) -> None:
    gpu_nodes = {n for n, role in node_roles.items() if role == "gpu"}
    wait_until(
        lambda: {p["spec"].get("nodeName") for p in api.pods(daemonset, "kube-system")} == gpu_nodes,
        timeout_s=60,
        what=f"{daemonset} pods on exactly the GPU nodes",
    )
    assert api.daemonset(daemonset)["status"]["desiredNumberScheduled"] == len(gpu_nodes)


def test_no_cpu_workload_tolerates_the_gpu_taint(prod: ProdDeploy, api: Api, node_roles: dict[str, str]) -> None:
    rendered = [d for d in yaml.safe_load_all(deploy.render("prod")) if d and d["kind"] in deploy.ROLLOUT_KINDS]
    cpu_workloads = []
    for obj in rendered:
        spec = obj["spec"]["template"]["spec"]
        wants_gpu = any(
            "nvidia.com/gpu"
            in {
                **(c.get("resources", {}).get("requests") or {}),
                **(c.get("resources", {}).get("limits") or {}),
            }
            for c in spec["containers"]
        )
        if wants_gpu or obj["metadata"]["name"] in GPU_ADDONS:
            continue
        cpu_workloads.append(obj["metadata"]["name"])
        bad = [t for t in spec.get("tolerations") or [] if tolerates(t, GPU_TAINT)]
        assert not bad, f"{obj['kind']}/{obj['metadata']['name']} tolerates the GPU taint: {bad}"
    assert CPU_SERVICE in cpu_workloads
    # The scheduler agrees: on GPU nodes run only the GPU service and the GPU add-ons.
    for pod in api.all_pods():
        node = pod["spec"].get("nodeName")
        if node and node_roles.get(node) == "gpu":
            name = pod["metadata"].get("labels", {}).get("app.kubernetes.io/name")
            assert name in (GPU_SERVICE, *GPU_ADDONS), f"{pod['metadata']['name']} landed on GPU node {node}"


# --- capacity ----------------------------------------------------------------------------------------


def test_scaling_the_gpu_service_past_gpu_capacity_leaves_pods_pending(
    prod: ProdDeploy, api: Api, node_roles: dict[str, str]
) -> None:
    gpu_nodes = sum(1 for role in node_roles.values() if role == "gpu")
    api.scale(GPU_SERVICE, gpu_nodes + 1)  # 4 = also the HPA's maxReplicas, so the HPA leaves it alone
    try:

        def unschedulable() -> list[str]:
            return [
                cond.get("message", "")
                for pod in api.pods(GPU_SERVICE)
                for cond in pod["status"].get("conditions", [])
                if cond["type"] == "PodScheduled"
                and cond["status"] == "False"
                and cond.get("reason") == "Unschedulable"
            ]

        messages = wait_until(unschedulable, 60, what="an Unschedulable GPU pod")
        assert len(messages) == 1
        assert "Insufficient nvidia.com/gpu" in messages[0], messages[0]
        phases = [p["status"]["phase"] for p in api.pods(GPU_SERVICE)]
        assert sorted(phases) == ["Pending"] + ["Running"] * gpu_nodes
    finally:
        api.scale(GPU_SERVICE, 2)
        wait_available(api, GPU_SERVICE, 2)


# --- rollout -----------------------------------------------------------------------------------------


def max_unavailable(deployment: Obj) -> int:
    value = deployment["spec"]["strategy"]["rollingUpdate"].get("maxUnavailable", "25%")
    replicas = int(deployment["spec"]["replicas"])
    if isinstance(value, str) and value.endswith("%"):
        return int(replicas * int(value[:-1]) / 100)  # Kubernetes rounds maxUnavailable down
    return int(value)


class AvailabilityWatch:
    """Records status.availableReplicas of one Deployment on every watch event, in a background thread."""

    def __init__(self, api: Api, name: str) -> None:
        self.api, self.name = api, name
        self.seen: list[int] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        w = watch.Watch()
        for event in w.stream(
            self.api.apps.list_namespaced_deployment,
            NAMESPACE,
            field_selector=f"metadata.name={self.name}",
            timeout_seconds=180,
        ):
            self.seen.append(event["raw_object"].get("status", {}).get("availableReplicas", 0))
            if self.stop.is_set():
                w.stop()

    def __enter__(self) -> Self:
        self.thread.start()
        wait_until(lambda: self.seen, 30, what="the first deployment watch event")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        # One more event so that the stream notices the stop flag.
        self.api.apps.patch_namespaced_deployment(
            self.name,
            NAMESPACE,
            {"metadata": {"annotations": {"tests/rollout-watch": str(time.time())}}},
        )
        self.thread.join(timeout=30)


@pytest.mark.parametrize("name", [GPU_SERVICE, CPU_SERVICE])
def test_changing_the_image_tag_rolls_out_within_max_unavailable(prod: ProdDeploy, api: Api, name: str) -> None:
    before = api.deployment(name)
    replicas, budget = int(before["spec"]["replicas"]), max_unavailable(before)
    container = before["spec"]["template"]["spec"]["containers"][0]
    new_image = container["image"].rsplit(":", 1)[0] + ":0.1.1-rollout-test"
    patch = {"spec": {"template": {"spec": {"containers": [{"name": container["name"], "image": new_image}]}}}}
    with AvailabilityWatch(api, name) as observed:
        api.apps.patch_namespaced_deployment(name, NAMESPACE, patch)
        wait_available(api, name, replicas, timeout_s=180)
    assert len(observed.seen) > 2, observed.seen  # the rollout was actually watched
    assert min(observed.seen) >= replicas - budget, (
        f"available replicas dipped to {min(observed.seen)}: replicas {replicas}, maxUnavailable {budget}"
    )
    pods = api.pods(name)
    assert len(pods) == replicas
    assert {p["spec"]["containers"][0]["image"] for p in pods} == {new_image}


# --- disruption --------------------------------------------------------------------------------------


@pytest.fixture
def cordoned_gpu_nodes(api: Api, node_roles: dict[str, str]) -> Iterator[list[str]]:
    """GPU nodes marked unschedulable, so an evicted GPU pod's replacement cannot refill the budget."""
    nodes = [n for n, role in node_roles.items() if role == "gpu"]
    for node in nodes:
        api.core.patch_node(node, {"spec": {"unschedulable": True}})
    try:
        yield nodes
    finally:
        for node in nodes:
            api.core.patch_node(node, {"spec": {"unschedulable": False}})
        wait_available(api, GPU_SERVICE, 2)


def test_the_pdb_blocks_an_eviction_that_would_break_it(
    prod: ProdDeploy, api: Api, cordoned_gpu_nodes: list[str]
) -> None:
    assert api.pdb(GPU_SERVICE)["spec"]["minAvailable"] == 1

    def one_disruption_allowed() -> bool:
        status = api.pdb(GPU_SERVICE).get("status", {})
        return status.get("currentHealthy") == 2 and status.get("disruptionsAllowed") == 1

    wait_until(one_disruption_allowed, 60, what="the PDB to allow exactly one disruption")
    first, second = sorted(api.pods(GPU_SERVICE), key=lambda p: p["metadata"]["name"])
    api.evict(first)  # allowed: 2 healthy, minAvailable 1
    with pytest.raises(ApiException) as refused:
        api.evict(second)
    assert refused.value.status == 429
    assert "disruption budget" in str(refused.value.body)
    survivors = [p["metadata"]["name"] for p in api.pods(GPU_SERVICE)]
    assert second["metadata"]["name"] in survivors


# --- autoscaling that survives deploys ----------------------------------------------------------------

# The field manager the HPA controller's scale-subresource updates run under.
HPA_MANAGER = "kube-controller-manager"


def scale_as_the_hpa(api: Api, name: str, replicas: int) -> None:
    """What the HPA does: an update of the scale subresource, under the controller manager's field manager."""
    api.apps.patch_namespaced_deployment_scale(
        name, NAMESPACE, {"spec": {"replicas": replicas}}, field_manager=HPA_MANAGER
    )


def replicas_managers(sim: SimCluster, name: str) -> set[str]:
    """Field managers that hold spec.replicas of a Deployment."""
    live = json.loads(sim.kubectl("get", f"deployment/{name}", "-n", NAMESPACE, "-o", "json", "--show-managed-fields"))
    fields = live["metadata"].get("managedFields", [])
    return {f["manager"] for f in fields if "f:replicas" in (f.get("fieldsV1") or {}).get("f:spec", {})}


@pytest.fixture
def redeploy(sim: SimCluster) -> Callable[..., deploy.DeployResult]:
    """`invoke deploy` again (the production code path), against the simulated cluster."""

    def run(env: str = "prod", check: bool = True) -> deploy.DeployResult:
        return deploy.deploy(
            env, {env: sim.context}, context=sim.context, kubeconfig=sim.kubeconfig, yes=True, check=check
        )

    return run


@pytest.fixture
def hpa_floors_restored(api: Api) -> Iterator[None]:
    yield
    for name, floor in ((GPU_SERVICE, 2), (CPU_SERVICE, 3)):
        scale_as_the_hpa(api, name, floor)
        wait_available(api, name, floor, timeout_s=180)


def test_a_deploy_keeps_the_replica_count_the_hpa_chose(
    prod: ProdDeploy,
    sim: SimCluster,
    api: Api,
    redeploy: Callable[..., deploy.DeployResult],
    hpa_floors_restored: None,
    gpu_nodes_at_max_size: Callable[[int], None],
) -> None:
    """The issue's first bug: a deploy at peak dropped every autoscaled Deployment to its minimum."""
    # One GPU node more than pods, as the autoscaler would provide: the deploy may roll the GPU service
    # (an earlier test changed its image), and its surge pod needs a GPU.
    gpu_nodes_at_max_size(4)
    scale_as_the_hpa(api, GPU_SERVICE, 3)
    scale_as_the_hpa(api, CPU_SERVICE, 5)
    wait_available(api, GPU_SERVICE, 3)
    wait_available(api, CPU_SERVICE, 5)
    redeploy("prod")
    for name, replicas in ((GPU_SERVICE, 3), (CPU_SERVICE, 5)):
        assert api.deployment(name)["spec"]["replicas"] == replicas
        # The deploy holds no claim on the field (the scale subresource's own updates are not always
        # recorded as ownership when nobody owned the field before, so only the deploy's side is asserted).
        assert deploy.FIELD_MANAGER not in replicas_managers(sim, name)
        wait_available(api, name, replicas)


def test_replicas_in_the_manifest_undo_the_hpa_and_the_next_deploy_hands_over(
    prod: ProdDeploy,
    sim: SimCluster,
    api: Api,
    redeploy: Callable[..., deploy.DeployResult],
    hpa_floors_restored: None,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """The old overlays (`replicas:` = HPA min) reproduce the bug; the first deploy after them keeps the count."""
    old = tmp_path / "eks-prod-with-replicas"
    old.mkdir()
    (old / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [os.path.relpath(render.overlay_path(deploy.OVERLAYS["prod"]), old)],
                "replicas": [{"name": GPU_SERVICE, "count": 2}, {"name": CPU_SERVICE, "count": 3}],
            }
        )
    )
    monkeypatch.setitem(deploy.OVERLAYS, "prod-old", str(old))
    scale_as_the_hpa(api, CPU_SERVICE, 5)
    wait_available(api, CPU_SERVICE, 5)
    redeploy("prod-old", check=False)  # these overlays break the hpa-owns-replicas policy on purpose
    assert api.deployment(CPU_SERVICE)["spec"]["replicas"] == 3  # the apply took replicas back from the HPA
    assert deploy.FIELD_MANAGER in replicas_managers(sim, CPU_SERVICE)
    # The first deploy of the HPA-owned manifests: without the handover the field would be deleted (-> 1 pod).
    redeploy("prod")
    assert api.deployment(CPU_SERVICE)["spec"]["replicas"] == 3
    assert deploy.FIELD_MANAGER not in replicas_managers(sim, CPU_SERVICE)
    assert deploy.REPLICAS_HANDOVER_MANAGER in replicas_managers(sim, CPU_SERVICE)
    # From then on the HPA's count survives deploys.
    scale_as_the_hpa(api, CPU_SERVICE, 5)
    redeploy("prod")
    assert api.deployment(CPU_SERVICE)["spec"]["replicas"] == 5


@pytest.fixture
def gpu_nodes_at_max_size(sim: SimCluster, api: Api) -> Iterator[Callable[[int], None]]:
    """Grows the simulated gpu-t4 group node by node (what the Cluster Autoscaler does), removed afterwards."""
    group = load_nodegroups()["gpu-t4"]
    present = sim.node_counts["gpu-t4"]
    added: list[str] = []

    def grow_to(count: int) -> None:
        assert count <= group.total_max_size
        nodes = [node_manifest(group, i) for i in range(present + len(added), count)]
        sim.kubectl("apply", "-f", "-", input_text=json.dumps({"apiVersion": "v1", "kind": "List", "items": nodes}))
        added.extend(n["metadata"]["name"] for n in nodes)
        sim.kubectl("wait", "--for=condition=Ready", "--timeout=60s", *(f"node/{n}" for n in added))

    try:
        yield grow_to
    finally:
        scale_as_the_hpa(api, GPU_SERVICE, 2)
        wait_until(lambda: len(api.pods(GPU_SERVICE)) == 2, 120, what="the GPU service back at 2 pods")
        if added:
            sim.kubectl("delete", "node", *added, "--wait=true")
        wait_available(api, GPU_SERVICE, 2, timeout_s=240)


def test_a_gpu_rollout_at_max_replicas_completes(
    prod: ProdDeploy, api: Api, gpu_nodes_at_max_size: Callable[[int], None]
) -> None:
    """The issue's second bug: at maxReplicas the surge pod needs one more GPU node than the group could hold."""
    hpa = api._json(
        client.AutoscalingV2Api(api.apps.api_client).read_namespaced_horizontal_pod_autoscaler(
            GPU_SERVICE, NAMESPACE, _preload_content=False
        )
    )
    most = int(hpa["spec"]["maxReplicas"])
    # The GPU groups hold the surge (policy gpu-capacity); the autoscaler would add just that one node.
    assert load_nodegroups()["gpu-t4"].total_max_size >= most + 1
    max_size = most + 1
    # The old bounds (maxSize == maxReplicas): the surge pod cannot be placed and the rollout stalls.
    gpu_nodes_at_max_size(most)
    scale_as_the_hpa(api, GPU_SERVICE, most)
    wait_available(api, GPU_SERVICE, most, timeout_s=180)
    container = api.deployment(GPU_SERVICE)["spec"]["template"]["spec"]["containers"][0]
    new_image = container["image"].rsplit(":", 1)[0] + ":0.1.2-hotfix"
    patch = {"spec": {"template": {"spec": {"containers": [{"name": container["name"], "image": new_image}]}}}}
    with AvailabilityWatch(api, GPU_SERVICE) as observed:
        api.apps.patch_namespaced_deployment(GPU_SERVICE, NAMESPACE, patch)

        def surge_pending() -> list[str]:
            return [
                cond.get("message", "")
                for pod in api.pods(GPU_SERVICE)
                if pod["spec"]["containers"][0]["image"] == new_image
                for cond in pod["status"].get("conditions", [])
                if cond["type"] == "PodScheduled" and cond.get("reason") == "Unschedulable"
            ]

        (message,) = wait_until(surge_pending, 60, what="the surge pod to be Unschedulable")
        assert "Insufficient nvidia.com/gpu" in message
        # The group at its new maxSize (what the Cluster Autoscaler would add): the rollout finishes.
        gpu_nodes_at_max_size(max_size)
        wait_available(api, GPU_SERVICE, most, timeout_s=240)
    pods = api.pods(GPU_SERVICE)
    assert {p["spec"]["containers"][0]["image"] for p in pods} == {new_image}
    assert len(pods) == most
    assert min(observed.seen) >= most  # maxUnavailable 0: never below the serving count


# --- zones ---------------------------------------------------------------------------------------------

ZONE = "topology.kubernetes.io/zone"


def live_nodes(api: Api) -> list[Obj]:
    return list(api._json(api.core.list_node(_preload_content=False))["items"])


def zones_of(api: Api, pods: list[Obj]) -> list[str]:
    zone = {n["metadata"]["name"]: n["metadata"]["labels"][ZONE] for n in live_nodes(api)}
    return sorted(zone[p["spec"]["nodeName"]] for p in pods if p["spec"].get("nodeName"))


def gpu_nodes_in(api: Api, zone: str) -> list[str]:
    return [
        n["metadata"]["name"]
        for n in live_nodes(api)
        if n["metadata"]["labels"].get(ZONE) == zone and n["metadata"]["labels"].get("workload-class") == "gpu"
    ]


def cordon(api: Api, nodes: list[str], unschedulable: bool = True) -> None:
    for node in nodes:
        api.core.patch_node(node, {"spec": {"unschedulable": unschedulable}})


@pytest.fixture
def gpu_headroom(sim: SimCluster, api: Api) -> Iterator[Callable[[int], None]]:
    """The optional gpu-headroom component as rendered on top of eks-prod, at a chosen replica count; removed after."""
    rendered = render.render_with_components(deploy.OVERLAYS["prod"], ["gpu-headroom"])
    objects = [o for o in rendered if (o["kind"], o["metadata"]["name"]) in HEADROOM_OBJECTS]
    assert len(objects) == len(HEADROOM_OBJECTS)
    # Composed on top of the overlay, the component is outside its namespace transformer; listed in the
    # overlay's own components (how it is switched on) it lands in the services' namespace.
    for o in objects:
        if o["kind"] == "Deployment":
            o["metadata"].setdefault("namespace", NAMESPACE)

    def apply(replicas: int) -> None:
        for o in objects:
            if o["kind"] == "Deployment":
                o["spec"]["replicas"] = replicas
        sim.kubectl("apply", "--server-side", "--field-manager=tests", "-f", "-", input_text=json.dumps(
            {"apiVersion": "v1", "kind": "List", "items": objects}
        ))  # fmt: skip

    try:
        yield apply
    finally:
        sim.kubectl("delete", "deployment", "gpu-headroom", "-n", NAMESPACE, "--ignore-not-found", "--wait=true")
        sim.kubectl("delete", "priorityclass", "eks-inference-headroom", "--ignore-not-found")


HEADROOM_OBJECTS = {("PriorityClass", "eks-inference-headroom"), ("Deployment", "gpu-headroom")}


def render_hpa(name: str) -> Obj:
    (hpa,) = [
        o
        for o in render.render(deploy.OVERLAYS["prod"])
        if o["kind"] == "HorizontalPodAutoscaler" and o["metadata"]["name"] == name
    ]
    return hpa


def running(api: Api, name: str, count: int) -> list[Obj]:
    pods = [p for p in api.pods(name) if p["status"].get("phase") == "Running"]
    return pods if len(pods) == count else []


def test_the_gpu_floor_spreads_over_zones_and_survives_losing_one(
    prod: ProdDeploy,
    api: Api,
    node_roles: dict[str, str],
    gpu_nodes_at_max_size: Callable[[int], None],
    gpu_headroom: Callable[[int], None],
    hpa_floors_restored: None,
) -> None:
    """GPU nodes in three zones; zone a has the only free GPUs, b and c are held by the negative-priority headroom.
    The HPA minimum still lands in two zones (the second pod preempts a placeholder rather than join the first
    in zone a), and cordoning zone a and deleting its pods leaves a pod serving while the replacement starts
    in a third zone."""
    floor = int(render_hpa(GPU_SERVICE)["spec"]["minReplicas"])
    assert floor == 2
    gpu_nodes_at_max_size(4)  # gpu-t4-0..3: zones a, b, c, a
    zone_a = gpu_nodes_in(api, "us-east-1a")
    assert len(zone_a) == 2
    scale_as_the_hpa(api, GPU_SERVICE, 0)
    wait_until(lambda: api.pods(GPU_SERVICE, include_terminating=True) == [], 120, what="no GPU service pods")
    # Zones b and c: their one GPU each taken by a placeholder (placed while zone a is cordoned).
    cordon(api, zone_a)
    gpu_headroom(2)
    placeholders = wait_until(lambda: running(api, "gpu-headroom", 2), 120, what="two placeholders running")
    assert zones_of(api, placeholders) == ["us-east-1b", "us-east-1c"]
    cordon(api, zone_a, unschedulable=False)

    scale_as_the_hpa(api, GPU_SERVICE, floor)
    pods = wait_until(lambda: running(api, GPU_SERVICE, floor), 120, what="the GPU floor running")
    before = zones_of(api, pods)
    assert len(set(before)) == floor, f"the HPA minimum landed in {before}"
    assert "us-east-1a" in before  # the free GPUs were all there: only the spread kept the second pod out

    # Zone a goes: its nodes cordoned (as a zone outage's NotReady nodes are tainted), its pods deleted.
    lost = "us-east-1a"
    deleted: set[str] = set()
    with AvailabilityWatch(api, GPU_SERVICE) as observed:
        cordon(api, zone_a)
        for pod in api.pods(GPU_SERVICE):
            if zones_of(api, [pod]) == [lost]:
                api.core.delete_namespaced_pod(pod["metadata"]["name"], NAMESPACE)
                deleted.add(pod["metadata"]["name"])

        def replaced() -> list[Obj]:
            pods = running(api, GPU_SERVICE, floor)
            return pods if pods and not {p["metadata"]["name"] for p in pods} & deleted else []

        after = zones_of(api, wait_until(replaced, 120, what=f"the floor back at {floor} without zone a"))
        wait_available(api, GPU_SERVICE, floor, timeout_s=120)
    cordon(api, zone_a, unschedulable=False)
    assert len(deleted) == 1
    assert min(observed.seen) >= 1, observed.seen  # some GPU pod served throughout
    assert lost not in after
    assert len(set(after)) == floor, f"after losing {lost}: {after}"
    print(f"zone test: floor {floor} in {before}; without {lost}: {after}; availability seen {observed.seen}")


# --- the GPU provisioning budget -----------------------------------------------------------------------

# The budget scaled down for the simulated cluster (through the same ops.k8s.budget function): 1500 s -> 60 s.
BUDGET_SCALE = 1 / 25
# The fixed wait `invoke deploy` had for every rollout (300 s), scaled the same way: 12 s.
OLD_ROLLOUT_WAIT_S = 300 * BUDGET_SCALE


@pytest.fixture
def unscaled_redeploy(sim: SimCluster) -> Iterator[None]:
    """After the scaled-budget test: the overlay as rendered for real (image, progressDeadlineSeconds 1500)."""
    yield
    deploy.deploy("prod", {"prod": sim.context}, context=sim.context, kubeconfig=sim.kubeconfig, yes=True)


def test_a_gpu_rollout_waiting_longer_than_the_old_wait_for_a_node_succeeds(
    unscaled_redeploy: None,
    prod: ProdDeploy,
    sim: SimCluster,
    api: Api,
    gpu_nodes_at_max_size: Callable[[int], None],
    hpa_floors_restored: None,
) -> None:
    """Every GPU full, so the rollout's surge pod waits for a node that appears only after the old fixed wait; the
    deploy's wait and the Deployment's progressDeadlineSeconds both come from the (scaled) budget, and it succeeds."""
    gpu_nodes = sum(len(gpu_nodes_in(api, z)) for z in load_nodegroups()["gpu-t4"].zones)
    assert gpu_nodes == 3
    scale_as_the_hpa(api, GPU_SERVICE, gpu_nodes)
    wait_available(api, GPU_SERVICE, gpu_nodes)
    objects = [d for d in yaml.safe_load_all(deploy.render("prod", BUDGET_SCALE)) if d]
    budget = gpu_budget.gpu_provisioning_budget(objects, BUDGET_SCALE)
    assert budget is not None
    assert budget.progress_deadline_s == 60
    # The node comes halfway between the old wait and the budget's deadline (orders of magnitude aside, a
    # margin on both sides of the scaled numbers).
    node_delay_s = (OLD_ROLLOUT_WAIT_S + budget.progress_deadline_s) / 2
    assert OLD_ROLLOUT_WAIT_S * 2 < node_delay_s < budget.progress_deadline_s - 10
    container = api.deployment(GPU_SERVICE)["spec"]["template"]["spec"]["containers"][0]
    repository = container["image"].rsplit(":", 1)[0]
    new_image = f"{repository}:0.1.4-budget"
    pending_when_the_node_came: list[list[str]] = []

    def node_arrives_late() -> None:
        pending_when_the_node_came.append(
            [p["metadata"]["name"] for p in api.pods(GPU_SERVICE) if not p["spec"].get("nodeName")]
        )
        gpu_nodes_at_max_size(gpu_nodes + 1)

    timer = threading.Timer(node_delay_s, node_arrives_late)
    timer.start()
    try:
        result = deploy.deploy(
            "prod",
            {"prod": sim.context},
            context=sim.context,
            kubeconfig=sim.kubeconfig,
            yes=True,
            budget_scale=BUDGET_SCALE,
            image_overrides={repository: new_image},
        )
    finally:
        timer.join()
    # The surge pod was still waiting for a node when it came (after twice the old wait).
    assert len(pending_when_the_node_came) == 1
    assert len(pending_when_the_node_came[0]) == 1, pending_when_the_node_came
    live = api.deployment(GPU_SERVICE)
    assert live["spec"]["progressDeadlineSeconds"] == budget.progress_deadline_s
    progressing = next(c for c in live["status"]["conditions"] if c["type"] == "Progressing")
    assert progressing["reason"] == "NewReplicaSetAvailable", progressing
    rows = {row[0]: row for row in result.rows}
    assert rows[f"Deployment/{GPU_SERVICE}"][2] == f"{gpu_nodes}/{gpu_nodes}"
    assert rows[f"Deployment/{GPU_SERVICE}"][3] == new_image
    # The waits deploy used: the budget's for the GPU service, the old fixed one for everything else.
    waits = deploy.rollout_waits(deploy.render("prod", BUDGET_SCALE), budget_scale=BUDGET_SCALE)
    by_name = {w.name: s for w, s in waits.items()}
    assert by_name[GPU_SERVICE] == budget.rollout_wait_s > budget.progress_deadline_s
    assert by_name[CPU_SERVICE] == deploy.ROLLOUT_TIMEOUT_S

"""Both services on a real kind cluster: Ready, correct, zero loss through rollouts and pod deletion, a live HPA.

Tests run in file order on one cluster (session fixture): test_1_cluster, test_2_tilt, then test_3_down deletes it.
Load goes to the local overlay's NodePorts, published by kind on 127.0.0.1 only (kind/cluster.yaml): through
the Service and kube-proxy, like production traffic, so it follows the pods a rollout replaces.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from image_classifier.demo import render_sample
from kindkit import KindSession
from ops.k8s import kind as kind_mod
from ops.models import DEFAULT_OUT
from ops.perf import load
from ops.perf.closedloop import Call
from testkit import run_server

NODE_PORTS = {"image-classifier": 30080, "text-classifier": 30081}
TEXTS = ["DM me on WhatsApp at 555-0100", "Thanks, the meeting notes look good to me.", "You are an idiot."]


def _demo_jpeg(label: str, seed: int) -> bytes:
    out = io.BytesIO()
    render_sample(label, seed=seed, size=128).save(out, format="JPEG", quality=95)
    return out.getvalue()


def _bodies(service: str) -> list[tuple[bytes, str]]:
    if service == "image-classifier":
        return [(_demo_jpeg(label, seed), "image/jpeg") for seed, label in enumerate(("circle", "triangle", "square"))]
    return [(json.dumps({"text": t}).encode(), "application/json") for t in TEXTS]


def _deployment(session: KindSession, name: str) -> dict[str, Any]:
    return dict(session.json("-n", kind_mod.NAMESPACE, "get", "deployment", name))


def _pods(session: KindSession, name: str) -> list[dict[str, Any]]:
    items = session.json("-n", kind_mod.NAMESPACE, "get", "pods", "-l", f"app.kubernetes.io/name={name}")["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def test_up_brings_both_services_ready(kind_session: KindSession) -> None:
    node = kind_session.json("get", "nodes")["items"]
    assert len(node) == 1
    assert node[0]["metadata"]["labels"].get("workload-class") == "cpu"
    for name in NODE_PORTS:
        dep = _deployment(kind_session, name)
        assert dep["status"].get("readyReplicas", 0) >= 1, dep["status"]
        pods = _pods(kind_session, name)
        assert pods
        assert all(p["status"]["phase"] == "Running" for p in pods)
        image = dep["spec"]["template"]["spec"]["containers"][0]["image"]
        # The image `invoke up` built and loaded, tagged by content, not a tag that could be stale on the node.
        assert image.startswith(f"eks-inference/{name}:kind-"), image
    kind_session.report["services_ready"] = list(NODE_PORTS)


def _predict(client: httpx.Client, service: str, body: bytes, content_type: str) -> dict[str, Any]:
    resp = client.post("/v1/predict", content=body, headers={"content-type": content_type})
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def _top(prediction: dict[str, Any]) -> tuple[str, float]:
    """Both services answer {"predictions": [{"label", "score", ...}, ...]}, best first."""
    first = prediction["predictions"][0]
    return str(first["label"]), float(first["score"])


def test_predictions_agree_with_local_processes(kind_session: KindSession, tmp_path: Path) -> None:
    """Same inputs, same bundles: the pods (through the forwarded ports) and local processes give the same answers."""
    env = {
        "image-classifier": {"IMAGE_CLASSIFIER_MODEL_URI": str(DEFAULT_OUT / "image-demo")},
        "text-classifier": {"TEXT_CLASSIFIER_MODEL_URI": str(DEFAULT_OUT / "text-demo")},
    }
    compared = 0
    with kind_mod.forwarded(kind_session.kind) as urls:
        for name, url in urls.items():
            module = name.replace("-", "_")
            with (
                run_server(module, env[name], tmp_path) as local,
                httpx.Client(base_url=url, timeout=60) as pod,
                local.client() as proc,
            ):
                for body, ctype in _bodies(name):
                    in_pod = _top(_predict(pod, name, body, ctype))
                    in_proc = _top(_predict(proc, name, body, ctype))
                    assert in_pod[0] == in_proc[0], (name, in_pod, in_proc)
                    assert abs(in_pod[1] - in_proc[1]) < 1e-3, (name, in_pod, in_proc)
                    compared += 1
    assert compared == 6
    kind_session.report["predictions_compared"] = compared


def _attack(session: KindSession, service: str, folder: Path, rate: float, duration: str) -> load.LoadResult:
    calls = [Call("/v1/predict", content_type, body) for body, content_type in _bodies(service)]
    targets = load.write_targets(folder / "targets.json", f"http://127.0.0.1:{NODE_PORTS[service]}", calls)
    # A new connection per request, like a load balancer that does not pin clients to one pod: a keep-alive
    # connection stays on the pod it first reached, through the Service, until that pod closes it.
    vegeta = load.vegeta_path()
    no_keepalive = ["-keepalive=false"]
    return load.attack(vegeta, targets, folder, rate=rate, duration=duration, timeout="30s", extra_args=no_keepalive)


def _under_load(
    session: KindSession,
    service: str,
    folder: Path,
    action: Callable[[], None],
    *,
    rate: float = 5,
    duration: str = "75s",
) -> load.LoadResult:
    results: list[load.LoadResult] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(_attack(session, service, folder, rate, duration))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    time.sleep(8)  # steady state first
    action()
    thread.join(timeout=300)
    assert not errors, errors
    assert results, "vegeta did not finish"
    return results[0]


def _summary(result: load.LoadResult) -> dict[str, Any]:
    return {
        "requests": result.requests,
        "success": result.success,
        "status_codes": result.status_codes,
        "errors": result.errors,
    }


@pytest.mark.parametrize("service", list(NODE_PORTS))
def test_rollout_restart_under_load_loses_nothing(kind_session: KindSession, service: str, tmp_path: Path) -> None:
    before = {p["metadata"]["uid"] for p in _pods(kind_session, service)}

    def restart() -> None:
        kind_session.kubectl.run("-n", kind_mod.NAMESPACE, "rollout", "restart", f"deployment/{service}")
        kind_session.kubectl.run(
            "-n", kind_mod.NAMESPACE, "rollout", "status", f"deployment/{service}", "--timeout=240s", timeout=270
        )

    result = _under_load(kind_session, service, tmp_path, restart)
    after = {p["metadata"]["uid"] for p in _pods(kind_session, service)}
    kind_session.report[f"rollout_restart_{service}"] = _summary(result)
    assert before
    assert after
    assert not (before & after), "the rollout replaced no pod"
    assert result.requests > 100
    assert result.status_codes == {"200": result.requests}, _summary(result)
    assert result.success == 1.0


def test_pod_deleted_mid_load_finishes_what_it_accepted(kind_session: KindSession, tmp_path: Path) -> None:
    """Two replicas; one is deleted under load: it serves until it leaves the endpoints (preStop), then drains."""
    service = "image-classifier"
    ns = kind_mod.NAMESPACE
    kind_session.kubectl.run("-n", ns, "patch", "hpa", service, "--type=merge", "-p", '{"spec":{"minReplicas":2}}')
    try:
        kind_session.kubectl.run(
            "-n", ns, "wait", "deployment", service, "--for=jsonpath={.status.readyReplicas}=2", "--timeout=300s",
            timeout=330,
        )  # fmt: skip
        victim = _pods(kind_session, service)[0]["metadata"]["name"]

        def delete() -> None:
            kind_session.kubectl.run("-n", ns, "delete", "pod", victim, "--wait=true", "--timeout=120s", timeout=150)

        result = _under_load(kind_session, service, tmp_path, delete, duration="45s")
    finally:
        kind_session.kubectl.run("-n", ns, "patch", "hpa", service, "--type=merge", "-p", '{"spec":{"minReplicas":1}}')
    kind_session.report["pod_delete_image-classifier"] = _summary(result)
    assert result.requests > 100
    assert result.status_codes == {"200": result.requests}, _summary(result)


def test_hpa_reads_real_metrics(kind_session: KindSession) -> None:
    """metrics-server feeds the HPAs: the current CPU utilization is a number, not <unknown>."""
    deadline = time.monotonic() + 240
    seen: dict[str, int] = {}
    while time.monotonic() < deadline and len(seen) < len(NODE_PORTS):
        for hpa in kind_session.json("-n", kind_mod.NAMESPACE, "get", "hpa")["items"]:
            for metric in hpa.get("status", {}).get("currentMetrics") or []:
                value = metric.get("resource", {}).get("current", {}).get("averageUtilization")
                if isinstance(value, int):
                    seen[hpa["metadata"]["name"]] = value
        time.sleep(5)
    kind_session.report["hpa_cpu_utilization"] = seen
    assert set(seen) == set(NODE_PORTS), f"HPAs without a current CPU utilization after 240 s: {seen}"

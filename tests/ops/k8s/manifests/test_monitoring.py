"""The monitoring component and the Datadog dashboard agree with the metrics the services really export."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from ops.k8s import objects, policies, render
from serving.metrics import ServiceMetrics

Obj = dict[str, Any]
NAMESPACE = "eks_inference"
# Metrics the Datadog Agent's `dcgm` check submits from the exporter's default counters
# (DataDog/integrations-core dcgm/metadata.csv).
DCGM_METRICS = {
    "dcgm.gpu_utilization",
    "dcgm.fb_used",
    "dcgm.fb_free",
    "dcgm.mem.copy_utilization",
    "dcgm.power_usage",
    "dcgm.temperature",
    "dcgm.sm_clock",
    "dcgm.mem.clock",
    "dcgm.xid_errors",
}
REQUIRED_PANELS = {
    "GPU utilization": "dcgm.gpu_utilization",
    "GPU memory": "dcgm.fb_used",
    "request rate": "_requests.count",
    "latency percentiles": "_request_duration_seconds",
    "queue depth": "_queue_depth",
    "batch size": "_batch_size",
    "event loop lag": "_event_loop_lag_seconds",
}


def datadog_names(service: str) -> set[str]:
    """What the openmetrics check (histograms as distributions, counters alongside) makes of a service's metrics."""
    names: set[str] = set()
    for family in ServiceMetrics(service).registry.collect():
        base = f"{NAMESPACE}.{family.name}"
        if family.type == "counter":
            names.add(f"{base}.count")
        elif family.type == "histogram":
            names |= {base, f"{base}.sum", f"{base}.count"}
        elif family.type == "gauge":
            names.add(base)
    return names


def dashboard() -> Obj:
    data: Obj = json.loads(render.DASHBOARD_PATH.read_text())
    return data


def queries(widgets: list[Obj]) -> list[str]:
    out = []
    for w in widgets:
        d = w["definition"]
        if d["type"] == "group":
            out += queries(d["widgets"])
        for r in d.get("requests", []):
            out += [q["query"] for q in r.get("queries", [])]
            out += [r["q"]] if "q" in r else []
    return out


def test_dashboard_is_a_datadog_dashboard_definition() -> None:
    d = dashboard()
    assert d["layout_type"] in ("ordered", "free")
    assert d["title"]
    assert d["widgets"]
    assert {v["name"] for v in d["template_variables"]} == {"kube_cluster_name", "kube_namespace"}


def test_every_queried_metric_exists() -> None:
    known = DCGM_METRICS | datadog_names("image_classifier") | datadog_names("text_classifier")
    metrics = {re.match(r"^\w+:([\w.]+)\{", q).group(1) for q in queries(dashboard()["widgets"])}  # type: ignore[union-attr]
    assert metrics, "no queries found"
    assert metrics - known == set()


def test_percentiles_only_on_distributions() -> None:
    for q in queries(dashboard()["widgets"]):
        agg, metric = re.match(r"^(\w+):([\w.]+)\{", q).groups()  # type: ignore[union-attr]
        if agg.startswith("p"):
            family = metric.removeprefix(f"{NAMESPACE}.")
            kinds = {f.name: f.type for f in ServiceMetrics(family.split("_")[0] + "_classifier").registry.collect()}
            assert kinds.get(family) == "histogram", q


@pytest.mark.parametrize("panel", REQUIRED_PANELS)
def test_required_panels_exist_for_both_services(panel: str) -> None:
    needle = REQUIRED_PANELS[panel]
    found = [q for q in queries(dashboard()["widgets"]) if needle in q]
    if needle.startswith("dcgm"):
        assert found
    else:
        assert {q.split(":")[1].split("_classifier")[0] for q in found} >= {f"{NAMESPACE}.image", f"{NAMESPACE}.text"}
    if panel == "latency percentiles":
        assert {q.split(":")[0] for q in found} >= {"p50", "p95", "p99"}


def test_the_image_service_has_fetch_outcome_and_connection_panels() -> None:
    found = queries(dashboard()["widgets"])
    assert any("image_classifier_fetch.count" in q and "by {outcome}" in q for q in found)
    assert any("image_classifier_open_connections" in q for q in found)


def monitors() -> dict[str, Obj]:
    return {path.stem: json.loads(path.read_text()) for path in sorted(render.MONITORS_DIR.glob("*.json"))}


def test_every_monitor_queries_metrics_that_exist() -> None:
    known = datadog_names("image_classifier") | datadog_names("text_classifier")
    assert monitors(), "no monitor definitions"
    for name, monitor in monitors().items():
        assert monitor["type"] == "query alert", name
        assert monitor["name"], name
        assert monitor["message"], name
        metrics = set(re.findall(r"(?:sum|avg|max|min):([\w.]+)\{", monitor["query"]))
        assert metrics, name
        assert metrics <= known, (name, metrics - known)


def test_the_upstream_failure_monitor_watches_both_failure_outcomes() -> None:
    from serving.errors import UpstreamTimeout, UpstreamUnavailable

    query = monitors()["upstream-failures"]["query"]
    for error in (UpstreamUnavailable, UpstreamTimeout):
        assert f"outcome:{error.code}" in query


@pytest.mark.parametrize("overlay", render.EKS_OVERLAYS)
def test_services_are_annotated_for_the_openmetrics_check(overlay: str, rendered: dict[str, list[Obj]]) -> None:
    for name in policies.SERVICES:
        (dep,) = objects.find(rendered[overlay], "Deployment", name)
        annotations = dep["spec"]["template"]["metadata"]["annotations"]
        check = json.loads(annotations[f"ad.datadoghq.com/{name}.checks"])  # the container name must match
        (instance,) = check["openmetrics"]["instances"]
        assert instance["openmetrics_endpoint"] == f"http://%%host%%:{policies.SERVICE_PORT}/metrics"
        assert instance["namespace"] == NAMESPACE
        assert instance["histogram_buckets_as_distributions"] is True
        service = name.replace("-", "_")
        exported = [f.name for f in ServiceMetrics(service).registry.collect()]
        assert all(any(re.fullmatch(p, n) for p in instance["metrics"]) for n in exported)
        assert dep["spec"]["template"]["spec"]["containers"][0]["name"] == name


@pytest.mark.parametrize("overlay", render.EKS_OVERLAYS)
def test_dcgm_exporter_feeds_the_dcgm_check(overlay: str, rendered: dict[str, list[Obj]]) -> None:
    (ds,) = objects.find(rendered[overlay], "DaemonSet", "dcgm-exporter")
    template = ds["spec"]["template"]
    check = json.loads(template["metadata"]["annotations"]["ad.datadoghq.com/dcgm-exporter.checks"])
    port = template["spec"]["containers"][0]["ports"][0]["containerPort"]
    assert check["dcgm"]["instances"] == [{"openmetrics_endpoint": f"http://%%host%%:{port}/metrics"}]
    env = {e["name"]: e["value"] for e in template["spec"]["containers"][0]["env"]}
    assert env["DCGM_EXPORTER_LISTEN"] == f":{port}"


def test_local_has_no_monitoring(rendered: dict[str, list[Obj]]) -> None:
    assert not objects.find(rendered["local"], "DaemonSet")
    for dep in objects.find(rendered["local"], "Deployment"):
        assert "annotations" not in dep["spec"]["template"]["metadata"]

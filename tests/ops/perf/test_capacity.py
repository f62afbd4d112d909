"""The capacity arithmetic: sustainable rate, headroom, replicas, pods per node of each node group, HPA target."""

from __future__ import annotations

from pathlib import Path

from ops.perf.capacity import NodeGroup, PodSpec, load_nodegroups, plan_capacity, pods_per_node, write_report
from ops.perf.load import LoadResult, StepRun


def _step(rate: float, p99: float, success: float = 1.0, cpu: float | None = None) -> LoadResult:
    latency = {
        "min": 1.0,
        "mean": p99 / 2,
        "p50": p99 / 3,
        "p90": p99 / 1.5,
        "p95": p99 / 1.2,
        "p99": p99,
        "max": p99 * 2,
    }
    return LoadResult(
        rate=rate,
        duration="10s",
        requests=int(rate * 10),
        throughput=rate * success,
        success=success,
        latency_ms=latency,
        status_codes={"200": int(rate * 10)},
        errors=[],
        folder="",
        service_cpu_seconds=cpu,
    )


def test_plan_from_steps_uses_node_groups_and_headroom(tmp_path: Path) -> None:
    run_ = StepRun(
        service_url="http://127.0.0.1:1",
        slo_p99_ms=100,
        min_success=0.99,
        step_duration="10s",
        steps=[_step(10, 20, cpu=5), _step(20, 40, cpu=10), _step(40, 90, cpu=5), _step(80, 400)],
        folder="",
    )
    best = run_.sustainable()
    assert best is not None
    assert best.rate == 40
    cpu_group = next(g for g in load_nodegroups() if g.name == "cpu-general")
    spec = PodSpec(
        "text-classifier",
        {"cpu": 1.0, "memory": 2 * 2**30},
        {"workload-class": ["cpu"]},
        "test",
    )
    plan = plan_capacity(
        run_,
        service="text-classifier",
        target_rps=500,
        slo_p99_ms=100,
        headroom=0.3,
        spec=spec,
    )
    # 40 rps/pod * 0.7 = 28 -> ceil(500 / 28) = 18 replicas; 3 pods of 1 CPU fit a 3920m node -> 6 nodes.
    assert (plan.replicas, plan.nodegroup, plan.pods_per_node, plan.nodes) == (
        18,
        "cpu-general",
        3,
        6,
    )
    assert plan.pods_per_node == pods_per_node(spec, cpu_group)
    # 5 CPU-seconds over 10 s = 0.5 cores at 40 rps; planned at 70% of that: 0.35 cores of a 1-core request.
    assert plan.hpa["cpu_target_utilization_percent"] == 35
    written = write_report(plan, run_, tmp_path)
    assert written["plot"].read_bytes().startswith(b"\x89PNG")
    assert "| replicas | **18**" in written["report"].read_text()


def test_plan_for_gpu_pods_lands_on_the_gpu_group() -> None:
    run_ = StepRun("http://127.0.0.1:1", 100, 0.99, "5s", [_step(50, 30), _step(100, 80)], "")
    spec = PodSpec(
        "image-classifier",
        {"cpu": 2.0, "memory": 6 * 2**30, "nvidia.com/gpu": 1.0},
        {},
        "test",
    )
    groups = load_nodegroups()
    plan = plan_capacity(
        run_,
        service="image-classifier",
        target_rps=300,
        slo_p99_ms=100,
        headroom=0.25,
        spec=spec,
        groups=groups,
    )
    gpu = next(g for g in groups if g.name == plan.nodegroup)
    assert isinstance(gpu, NodeGroup)
    assert gpu.gpus_per_node == 1
    assert (plan.replicas, plan.pods_per_node, plan.nodes) == (
        4,
        1,
        4,
    )  # 300 / (100 * 0.75) = 4
    assert plan.nodes_within_max

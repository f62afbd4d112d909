"""The one typed reader of manifests/platform-contract.yaml: what the platform's Datadog installation must provide."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ops.core import REPO_ROOT

CONTRACT_PATH = REPO_ROOT / "manifests" / "platform-contract.yaml"


@dataclass(frozen=True)
class DatadogContract:
    """The Datadog Agent and Cluster Agent as the EKS overlays need them."""

    agent_tolerations: tuple[dict[str, Any], ...]
    agent_priority_class: str
    agent_priority: int
    cluster_tag: str
    external_metrics_provider: bool
    datadog_metrics: bool


def load_contract(path: Path | None = None) -> DatadogContract:
    """The contract (`path` defaults to CONTRACT_PATH, read at call time)."""
    data = yaml.safe_load((path or CONTRACT_PATH).read_text())["datadog"]
    agent, cluster_agent = data["agent"], data["clusterAgent"]
    return DatadogContract(
        agent_tolerations=tuple(dict(t) for t in agent.get("tolerations") or ()),
        agent_priority_class=str(agent["priorityClassName"]),
        agent_priority=int(agent["priority"]),
        cluster_tag=str(agent["clusterTag"]),
        external_metrics_provider=bool(cluster_agent.get("externalMetricsProvider", False)),
        datadog_metrics=bool(cluster_agent.get("datadogMetrics", False)),
    )

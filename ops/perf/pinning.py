"""Core pinning: the service and the load generator on disjoint CPU sets (taskset), so neither steals the other's."""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass
from typing import Any


def _cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def cpu_list(cpus: set[int] | list[int]) -> str:
    """taskset's list syntax for a set of CPUs, e.g. `1` or `1,2,3`."""
    return ",".join(str(c) for c in sorted(cpus))


def parse_cpu_list(text: str) -> set[int]:
    """`0`, `1-3` or `0,2-3` as a set of CPU numbers."""
    cpus: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        low, _, high = part.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    return cpus


@dataclass(frozen=True)
class Pinning:
    """Where the service (and everything measured as "the service", e.g. model-only) and the client run.

    Empty strings mean unpinned: both may use every CPU, which is how the old method measured.
    """

    service: str = ""
    client: str = ""

    @property
    def pinned(self) -> bool:
        return bool(self.service and self.client)

    @property
    def label(self) -> str:
        return f"service on CPU {self.service}, client on CPU {self.client}" if self.pinned else "unpinned"

    @property
    def service_cpus(self) -> int:
        """How many CPUs the service may use: its torch thread count follows (serving.settings reads the affinity)."""
        return len(parse_cpu_list(self.service)) if self.service else len(_cpus())

    def service_prefix(self) -> list[str]:
        """argv prefix that runs a command on the service's CPUs."""
        return ["taskset", "-c", self.service] if self.service else []

    def client_prefix(self) -> list[str]:
        """argv prefix that runs a command on the client's CPUs."""
        return ["taskset", "-c", self.client] if self.client else []

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "pinned": self.pinned, "label": self.label}


UNPINNED = Pinning()


def default_pinning() -> Pinning:
    """The client on the first CPU, the service on the rest; unpinned with one CPU or without taskset."""
    cpus = _cpus()
    if len(cpus) < 2 or shutil.which("taskset") is None:
        return UNPINNED
    return Pinning(service=cpu_list(cpus[1:]), client=str(cpus[0]))


def pinning_from(spec: str) -> Pinning:
    """`auto`, `none`, or `SERVICE_CPUS:CLIENT_CPUS` (e.g. `1:0`, `2-7:0-1`)."""
    if spec in ("", "auto"):
        return default_pinning()
    if spec in ("none", "unpinned"):
        return UNPINNED
    service, sep, client = spec.partition(":")
    if not sep or not service or not client:
        raise ValueError(f"pinning {spec!r}: expected auto, none or SERVICE_CPUS:CLIENT_CPUS such as 1:0")
    if parse_cpu_list(service) & parse_cpu_list(client):
        raise ValueError(f"pinning {spec!r}: the service and the client must not share a CPU")
    return Pinning(service=service, client=client)

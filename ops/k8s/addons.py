"""The one typed reader of manifests/cluster-addons.yaml: the cluster add-ons the manifests depend on."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ops.core import REPO_ROOT

ADDONS_PATH = REPO_ROOT / "manifests" / "cluster-addons.yaml"
Platform = Literal["eks", "kind"]
# Capabilities the policies ask for by name.
METRICS_API = "metrics.k8s.io"
NETWORK_POLICY_ENGINE = "network-policy-engine"


@dataclass(frozen=True)
class EksAddon:
    """How the CDK stack installs one add-on: an EKS (or EKS community) add-on."""

    addon: str
    version: str | None = None
    configuration: dict[str, Any] = field(default_factory=dict)
    after_nodes: bool = False


@dataclass(frozen=True)
class KindAddon:
    """How a kind cluster has it: a manifest `invoke up` applies, something kind has already, or not at all."""

    install: Path | None = None
    builtin: str | None = None
    absent: str | None = None
    # What it provides on kind when that is less than on EKS (kindnetd is a pod network, not a policy engine).
    provides: tuple[str, ...] | None = None

    @property
    def present(self) -> bool:
        return self.absent is None and (self.install is not None or self.builtin is not None)


@dataclass(frozen=True)
class ClusterAddon:
    """One add-on: what it provides and how each platform gets it."""

    name: str
    provides: tuple[str, ...]
    eks: EksAddon | None
    kind: KindAddon | None

    def provides_on(self, platform: Platform) -> tuple[str, ...]:
        """The capabilities it brings to `platform` (none where it does not run)."""
        if not self.on(platform):
            return ()
        if platform == "kind" and self.kind is not None and self.kind.provides is not None:
            return self.kind.provides
        return self.provides

    def on(self, platform: Platform) -> bool:
        """Whether the add-on runs on `platform`."""
        if platform == "eks":
            return self.eks is not None
        return self.kind is not None and self.kind.present


def load_addons(path: Path | None = None) -> dict[str, ClusterAddon]:
    """The add-ons, keyed by name, in file order (`path` defaults to ADDONS_PATH, read at call time)."""
    out = {}
    for a in yaml.safe_load((path or ADDONS_PATH).read_text())["addons"]:
        eks, kind = a.get("eks"), a.get("kind")
        addon = ClusterAddon(
            name=str(a["name"]),
            provides=tuple(str(p) for p in a.get("provides") or ()),
            eks=None
            if eks is None
            else EksAddon(
                addon=str(eks["addon"]),
                version=None if eks.get("version") is None else str(eks["version"]),
                configuration={str(k): v for k, v in (eks.get("configuration") or {}).items()},
                after_nodes=bool(eks.get("after_nodes", False)),
            ),
            kind=None
            if kind is None
            else KindAddon(
                install=REPO_ROOT / kind["install"] if kind.get("install") else None,
                builtin=kind.get("builtin"),
                absent=kind.get("absent"),
                provides=None if kind.get("provides") is None else tuple(str(p) for p in kind["provides"]),
            ),
        )
        out[addon.name] = addon
    return out


def provided(capability: str, platform: Platform, path: Path | None = None) -> list[str]:
    """Names of the add-ons that provide `capability` on `platform`."""
    return [a.name for a in load_addons(path).values() if capability in a.provides_on(platform)]


def eks_addons(path: Path | None = None) -> list[ClusterAddon]:
    """The add-ons the CDK stack creates, in file order."""
    return [a for a in load_addons(path).values() if a.eks is not None]


def kind_installs(path: Path | None = None) -> list[ClusterAddon]:
    """The add-ons `invoke up` applies to the kind cluster, in file order."""
    return [a for a in load_addons(path).values() if a.kind is not None and a.kind.install is not None]

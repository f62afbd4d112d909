"""`invoke deploy` applies exactly the YAML `invoke manifests.validate` checked, and refuses YAML that fails it."""

from __future__ import annotations

from dataclasses import dataclass, field
from subprocess import CompletedProcess
from typing import Any

import pytest
import yaml

from ops.k8s import deploy, policies, render

Obj = dict[str, Any]


@dataclass
class FakeKubectl:
    """Stands in for the pinned kubectl: records every apply, answers the reads a deploy makes."""

    context: str | None
    kubeconfig: object = None
    applied: list[Obj] = field(default_factory=list)
    calls: list[tuple[str, ...]] = field(default_factory=list)

    def run(
        self,
        *args: str,
        input_text: str | None = None,
        ok_codes: tuple[int, ...] = (0,),
        timeout: float = 300,
        quiet: bool = False,
    ) -> CompletedProcess[str]:
        self.calls.append(args)
        if args[0] == "apply":
            docs = [d for d in yaml.safe_load_all(input_text or "") if d]
            if "--field-manager=" + deploy.FIELD_MANAGER in args:
                self.applied += docs
            return CompletedProcess(list(args), 0, "", "")
        if args[0] == "get" and "json" in args:
            return CompletedProcess(list(args), 1, "", "NotFound")  # a first deploy: nothing to hand over
        if args[0] == "get" and args[-1] == "jsonpath={.spec.replicas}":
            return CompletedProcess(list(args), 0, "100", "")
        if args[0] == "get":
            return CompletedProcess(list(args), 0, "1/1 image:tag", "")
        return CompletedProcess(list(args), 0, "", "")

    def current_context(self) -> str:
        return self.context or "fake"


@pytest.fixture
def kubectl(monkeypatch: pytest.MonkeyPatch) -> list[FakeKubectl]:
    made: list[FakeKubectl] = []

    def factory(context: str | None, kubeconfig: object = None) -> FakeKubectl:
        made.append(FakeKubectl(context, kubeconfig))
        return made[-1]

    monkeypatch.setattr(deploy, "Kubectl", factory)
    return made


def _key(obj: Obj) -> str:
    return yaml.safe_dump(obj, sort_keys=True)


@pytest.mark.parametrize("env", sorted(deploy.OVERLAYS))
def test_deploy_applies_exactly_what_validate_checked(env: str, kubectl: list[FakeKubectl]) -> None:
    report = policies.validate_overlay(deploy.OVERLAYS[env])
    assert report.ok, report
    deploy.deploy(env, {env: "fake"}, context="fake", yes=True)
    applied = kubectl[0].applied
    # Namespaces and CRDs go first (a namespaced object needs its namespace); otherwise render order, unchanged.
    assert sorted(map(_key, applied)) == sorted(map(_key, report.objects))
    assert [o for o in applied if o["kind"] not in deploy.FIRST_KINDS] == [
        o for o in report.objects if o["kind"] not in deploy.FIRST_KINDS
    ]


def test_deploy_refuses_yaml_that_fails_a_policy(monkeypatch: pytest.MonkeyPatch, kubectl: list[FakeKubectl]) -> None:
    objects = render.render("eks-prod")
    for obj in objects:
        if obj["kind"] == "Deployment" and obj["metadata"]["name"] == "text-classifier":
            obj["spec"]["replicas"] = 3  # the HPA owns replicas: policy hpa-owns-replicas
    monkeypatch.setattr(
        render, "render_text", lambda overlay, budget_scale=1.0: yaml.safe_dump_all(objects, sort_keys=False)
    )
    with pytest.raises(deploy.DeployRefused, match="hpa-owns-replicas"):
        deploy.deploy("prod", {"prod": "fake"}, context="fake", yes=True)
    assert kubectl == []  # refused before any kubectl ran


def test_deploy_renders_through_the_one_render_path(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    real = render.render_text

    def spy(overlay: str, budget_scale: float = 1.0) -> str:
        seen.append(str(overlay))
        return real(overlay, budget_scale)

    monkeypatch.setattr(render, "render_text", spy)
    assert deploy.render("staging") == real("eks-staging")
    assert seen == ["eks-staging"]

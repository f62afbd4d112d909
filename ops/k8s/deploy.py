"""`invoke deploy`: render an overlay (ops.k8s.render), check it, guard the kube context, apply server-side, wait."""

from __future__ import annotations

import fnmatch
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import yaml
from rich.table import Table

from ops import core
from ops.core import OpsError
from ops.core import out as console
from ops.k8s import budget, policies
from ops.k8s import render as render_mod
from ops.toolchain import tools

# Env -> the overlay it deploys (ops.k8s.render.ENV_OVERLAYS).
OVERLAYS = render_mod.ENV_OVERLAYS
FIELD_MANAGER = "eks-inference-deploy"
# Takes spec.replicas over from FIELD_MANAGER on clusters deployed before the manifests left replicas to
# the HPA (Kubernetes' documented server-side apply handover), so that field is kept, not reset to 1.
REPLICAS_HANDOVER_MANAGER = "eks-inference-replicas-handover"
ROLLOUT_KINDS = ("Deployment", "DaemonSet", "StatefulSet")
# Kinds applied first so that the objects depending on them are accepted.
FIRST_KINDS = ("Namespace", "CustomResourceDefinition")
# kubectl verbs that change the cluster: shown, not run, under `invoke --dry`.
MUTATING_VERBS = ("apply", "create", "delete", "patch", "replace", "scale", "label", "annotate", "taint", "drain")


class DeployRefused(OpsError):
    """The guard said no: wrong context, unconfirmed prod, an unknown env, or YAML that fails validation."""

    exit_code = 2


@dataclass(frozen=True)
class Workload:
    """A rolled-out object named in the rendered overlay."""

    kind: str
    name: str
    namespace: str


@dataclass
class DeployResult:
    """What `deploy` did; `rows` is the status table."""

    env: str
    context: str
    dry_run: bool
    diff: str = ""
    workloads: list[Workload] = field(default_factory=list)
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)


def overlay_for(env: str) -> str:
    """The overlay an env deploys."""
    if env not in OVERLAYS:
        raise DeployRefused(f"unknown env {env!r}; expected one of {', '.join(OVERLAYS)}")
    return OVERLAYS[env]


def render(env: str, budget_scale: float = 1.0) -> str:
    """The env's overlay rendered exactly as `invoke manifests.validate` renders it (ops.k8s.render)."""
    return render_mod.render_text(overlay_for(env), budget_scale)


def check_policies(env: str, rendered: str) -> None:
    """Refuse to apply YAML that fails the strict schemas or a policy (what `invoke manifests.validate` checks)."""
    overlay = overlay_for(env)
    objects = [doc for doc in yaml.safe_load_all(rendered) if doc]
    report = policies.check_objects(overlay, objects)
    if not report.ok:
        problems = [*report.schema_errors, *(f"{n}: {v}" for n, vs in report.policy_violations.items() for v in vs)]
        raise DeployRefused(f"{overlay} fails validation; nothing applied:\n  " + "\n  ".join(problems))


def set_images(rendered: str, overrides: Mapping[str, str]) -> str:
    """Point containers whose image repository is a key of `overrides` at its value (e.g. a just-built tag).

    Only `invoke up` uses this, for images that exist on the kind node and nowhere else; every other field is
    applied exactly as rendered.
    """
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    for doc in docs:
        spec = doc.get("spec", {}).get("template", {}).get("spec", {})
        for c in [*spec.get("initContainers", []), *spec.get("containers", [])]:
            repo = c.get("image", "").rsplit(":", 1)[0]
            if repo in overrides:
                c["image"] = overrides[repo]
    return yaml.safe_dump_all(docs, sort_keys=False)


def split_first(rendered: str) -> tuple[str, str]:
    """(namespaces/CRDs, everything else): a server-side dry run of an object needs its namespace to exist."""
    first: list[dict[str, Any]] = []
    rest: list[dict[str, Any]] = []
    for doc in yaml.safe_load_all(rendered):
        if not doc:
            continue
        (first if doc.get("kind") in FIRST_KINDS else rest).append(doc)
    return yaml.safe_dump_all(first), yaml.safe_dump_all(rest)


def workloads(rendered: str) -> list[Workload]:
    out = []
    for doc in yaml.safe_load_all(rendered):
        if doc and doc.get("kind") in ROLLOUT_KINDS:
            meta = doc["metadata"]
            out.append(Workload(doc["kind"], meta["name"], meta.get("namespace", "default")))
    return out


@dataclass(frozen=True)
class HpaTarget:
    """A Deployment an HPA in the rendered overlay scales, and the HPA's floor."""

    namespace: str
    deployment: str
    min_replicas: int


def hpa_targets(rendered: str) -> list[HpaTarget]:
    """Every Deployment an HPA of the render scales (the manifests leave their spec.replicas to the HPA)."""
    out = []
    for doc in yaml.safe_load_all(rendered):
        if doc and doc.get("kind") == "HorizontalPodAutoscaler":
            target = doc["spec"]["scaleTargetRef"]
            if target["kind"] == "Deployment":
                namespace = doc["metadata"].get("namespace", "default")
                out.append(HpaTarget(namespace, target["name"], int(doc["spec"].get("minReplicas", 1))))
    return out


def owns_replicas(live: Mapping[str, Any], manager: str = FIELD_MANAGER) -> bool:
    """Whether `manager` holds spec.replicas of a live object through server-side apply."""
    for entry in live.get("metadata", {}).get("managedFields") or []:
        applied = entry.get("manager") == manager and entry.get("operation") == "Apply"
        if applied and "f:replicas" in (entry.get("fieldsV1") or {}).get("f:spec", {}):
            return True
    return False


def hand_over_replicas(kubectl: Kubectl, targets: Sequence[HpaTarget]) -> list[str]:
    """Before an apply without spec.replicas: keep the live count where an earlier deploy applied one.

    Dropping a field from the applied configuration deletes it when no other manager holds it, and a
    Deployment without replicas defaults to 1: the first deploy of HPA-owned manifests would scale every
    service to one pod. A second manager applying the live value keeps the field; the HPA moves it on.
    """
    handed = []
    for target in targets:
        proc = kubectl.run(
            "get", f"deployment/{target.deployment}", "-n", target.namespace, "-o", "json",
            "--show-managed-fields", ok_codes=(0, 1),
        )  # fmt: skip
        if proc.returncode != 0:
            continue  # not created yet: nothing to keep
        live = json.loads(proc.stdout)
        if not owns_replicas(live):
            continue
        doc = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": target.deployment, "namespace": target.namespace},
            "spec": {"replicas": int(live["spec"]["replicas"])},
        }
        kubectl.run(
            "apply", "--server-side", f"--field-manager={REPLICAS_HANDOVER_MANAGER}", "-f", "-",
            input_text=json.dumps(doc),
        )  # fmt: skip
        handed.append(f"{target.namespace}/{target.deployment}")
    return handed


def wait_for_hpa_floor(kubectl: Kubectl, targets: Sequence[HpaTarget], timeout_s: float = 120) -> None:
    """A new HPA-scaled Deployment starts at 1 replica until its HPA raises it to minReplicas; wait for that."""
    deadline = time.monotonic() + timeout_s
    for target in targets:
        while True:
            out = kubectl.run(
                "get", f"deployment/{target.deployment}", "-n", target.namespace, "-o", "jsonpath={.spec.replicas}"
            ).stdout  # fmt: skip
            if out.strip() and int(out) >= target.min_replicas:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{target.namespace}/{target.deployment} has {out or 0} replicas after {timeout_s:g} s; "
                    f"its HPA should have raised it to minReplicas {target.min_replicas} (is the HPA controller up?)"
                )
            time.sleep(1)


def parse_allowed(value: str | Sequence[str]) -> list[str]:
    """invoke.yaml holds a comma-separated string, so INVOKE_DEPLOY_CONTEXTS_<ENV> can override it."""
    items = value.split(",") if isinstance(value, str) else list(value)
    return [item.strip() for item in items if item.strip()]


def check_context(env: str, context: str, allowed: Sequence[str]) -> None:
    """Refuse unless the context matches one of the env's allowed patterns (fnmatch globs)."""
    if not any(fnmatch.fnmatchcase(context, pattern) for pattern in allowed):
        raise DeployRefused(
            f"kube context {context!r} is not allowed for env {env!r} (allowed: {', '.join(allowed) or 'none'}); "
            f"set deploy.contexts.{env} in invoke.yaml or INVOKE_DEPLOY_CONTEXTS_{env.upper()}"
        )


class Kubectl:
    """The pinned kubectl bound to one context (and optionally one kubeconfig file)."""

    def __init__(self, context: str | None, kubeconfig: Path | None = None) -> None:
        self.binary = str(tools.ensure("kubectl"))
        self.context = context
        self.env = dict(os.environ)
        if kubeconfig is not None:
            self.env["KUBECONFIG"] = str(kubeconfig)

    def run(
        self,
        *args: str,
        input_text: str | None = None,
        ok_codes: tuple[int, ...] = (0,),
        timeout: float = 300,
        quiet: bool = False,
    ) -> CompletedProcess[str]:
        cmd = [
            self.binary,
            *(["--context", self.context] if self.context else []),
            *args,
        ]
        if not quiet:
            console.log("[bold]$ kubectl " + " ".join(cmd[1:]))
        return core.run(
            cmd,
            input_text=input_text,
            env=self.env,
            timeout=timeout,
            ok_codes=ok_codes,
            effect=bool(args) and args[0] in MUTATING_VERBS,
        )

    def current_context(self) -> str:
        proc = core.run([self.binary, "config", "current-context"], env=self.env, ok_codes=range(256), effect=False)
        if proc.returncode != 0:
            raise DeployRefused(f"no current kube context: {proc.stderr.strip()}")
        return proc.stdout.strip()


# Seconds `invoke deploy` (and `invoke up` without Tilt) waits for each rollout that needs no new GPU node.
ROLLOUT_TIMEOUT_S = 300


def rollout_waits(rendered: str, timeout_s: int | None = None, budget_scale: float = 1.0) -> dict[Workload, int]:
    """Seconds to wait for each workload's rollout: `timeout_s` for all when given; otherwise the GPU service
    the GPU provisioning budget's rollout wait (ops.k8s.budget), everything else ROLLOUT_TIMEOUT_S."""
    objects = [doc for doc in yaml.safe_load_all(rendered) if doc]
    found = budget.gpu_provisioning_budget(objects, budget_scale)
    gpu = {(d["metadata"]["name"], d["metadata"].get("namespace", "default")) for d in budget.gpu_deployments(objects)}
    waits = {}
    for w in workloads(rendered):
        if timeout_s is not None:
            waits[w] = int(timeout_s)
        elif found is not None and w.kind == "Deployment" and (w.name, w.namespace) in gpu:
            waits[w] = found.rollout_wait_s
        else:
            waits[w] = ROLLOUT_TIMEOUT_S
    return waits


def deploy(
    env: str,
    allowed_contexts: Mapping[str, str | Sequence[str]],
    *,
    context: str | None = None,
    kubeconfig: Path | None = None,
    dry_run: bool = False,
    yes: bool = False,
    timeout_s: int | None = None,
    confirm: Callable[[str], bool] | None = None,
    image_overrides: Mapping[str, str] | None = None,
    check: bool = True,
    budget_scale: float = 1.0,
) -> DeployResult:
    """Render, check (schemas + policies), guard, then apply server-side (or diff with dry_run) and wait for rollouts.

    Rollout waits: `timeout_s` for every workload when given, else `rollout_waits` (the GPU service waits its
    provisioning budget). `check=False` is for tests that reproduce manifests from before a policy existed, and
    `budget_scale` for tests that shrink the GPU budget (progressDeadlineSeconds and the wait alike); no task
    offers either.
    """
    rendered = render(env, budget_scale)
    if check:
        # The policies judge the manifests as `invoke manifests.validate` renders them; a test's budget_scale
        # only shrinks the derived timing fields of what is applied.
        check_policies(env, rendered if budget_scale == 1.0 else render(env))
    if image_overrides:
        rendered = set_images(rendered, image_overrides)
    kubectl = Kubectl(context, kubeconfig)
    ctx = context or kubectl.current_context()
    kubectl.context = ctx
    check_context(env, ctx, parse_allowed(allowed_contexts.get(env, "")))
    result = DeployResult(env=env, context=ctx, dry_run=dry_run, workloads=workloads(rendered))
    common = ["--server-side", f"--field-manager={FIELD_MANAGER}", "--force-conflicts"]
    first, rest = split_first(rendered)
    if dry_run:
        # kubectl diff: exit 0 = no changes, 1 = changes, >1 = error. It changes nothing.
        # Objects in a namespace that does not exist yet cannot be diffed; they are listed as new.
        existing = set(kubectl.run("get", "namespaces", "-o", "name").stdout.split())
        diffable: list[dict[str, Any]] = []
        pending: list[dict[str, Any]] = []
        for doc in yaml.safe_load_all(rest):
            ns = (doc or {}).get("metadata", {}).get("namespace")
            (pending if ns and f"namespace/{ns}" not in existing else diffable).append(doc)
        diffs = []
        for part in (first, yaml.safe_dump_all(diffable)):
            if part.strip():
                diffs.append(kubectl.run("diff", *common, "-f", "-", input_text=part, ok_codes=(0, 1)).stdout)
        diffs += [
            f"+ {d['kind']}/{d['metadata']['name']} -n {d['metadata']['namespace']} (new; namespace not created yet)\n"
            for d in pending
        ]
        result.diff = "".join(diffs)
        console.print(result.diff or "[green]no changes[/]")
        return result
    if env == "prod" and not yes:
        ask = confirm or _ask
        if not ask(f"Apply {OVERLAYS[env]} to context {ctx!r}?"):
            raise DeployRefused("prod deploy not confirmed")
    targets = hpa_targets(rendered)
    handed = hand_over_replicas(kubectl, targets)
    if handed:
        console.print(f"kept the live replica count of {', '.join(handed)} (now the HPA's to change)")
    for part in (first, rest):
        if part.strip():
            kubectl.run("apply", *common, "-f", "-", input_text=part)
    wait_for_hpa_floor(kubectl, targets, ROLLOUT_TIMEOUT_S if timeout_s is None else timeout_s)
    waits = rollout_waits(rendered, timeout_s, budget_scale)
    for w in result.workloads:
        kubectl.run(
            "rollout", "status", f"{w.kind.lower()}/{w.name}", "-n", w.namespace, f"--timeout={waits[w]}s",
            timeout=waits[w] + 30,
        )  # fmt: skip
    result.rows = status_rows(kubectl, result.workloads)
    print_status(result)
    return result


def _ask(question: str) -> bool:
    from rich.prompt import Confirm

    if not os.isatty(0):
        raise DeployRefused("prod deploy needs confirmation: run interactively or pass --yes")
    return Confirm.ask(question, default=False)


def status_rows(kubectl: Kubectl, items: Sequence[Workload]) -> list[tuple[str, str, str, str]]:
    rows = []
    for w in items:
        ready_path = (
            "{.status.numberReady}/{.status.desiredNumberScheduled}"
            if w.kind == "DaemonSet"
            else "{.status.readyReplicas}/{.status.replicas}"
        )
        jsonpath = f"jsonpath={ready_path} {{.spec.template.spec.containers[0].image}}"
        out = kubectl.run("get", f"{w.kind.lower()}/{w.name}", "-n", w.namespace, "-o", jsonpath).stdout
        ready, _, image = out.partition(" ")
        rows.append((f"{w.kind}/{w.name}", w.namespace, ready, image))
    return rows


def print_status(result: DeployResult) -> None:
    table = Table(title=f"deploy {result.env} -> {result.context}")
    for col in ("workload", "namespace", "ready", "image"):
        table.add_column(col)
    for row in result.rows:
        table.add_row(*row)
    console.print(table)

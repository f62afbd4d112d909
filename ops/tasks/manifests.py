"""invoke tasks for the Kustomize manifests: render, validate, diagram, inventory (logic in ops.k8s)."""

from __future__ import annotations

from pathlib import Path

from invoke import Collection, Context, Exit

from ops import core
from ops.core import out as console
from ops.k8s import docs, policies
from ops.k8s import objects as k8s_objects
from ops.k8s import render as k8s_render
from ops.tasks.common import ops_task


@ops_task(
    iterable=["component"],
    help={
        "overlay": "Overlay name under overlays/ (local, eks-staging, eks-prod) or a kustomization path.",
        "component": "Extra optional component to add, e.g. gpu-queue-autoscaling (repeatable).",
        "output": "Write the YAML to this file instead of stdout.",
    },
)
def render(
    c: Context,
    overlay: str = "eks-prod",
    component: list[str] | None = None,
    output: str = "",
) -> None:
    """Render one overlay with the pinned Kustomize; fails on any Kustomize warning."""
    if component:
        import yaml

        text = yaml.safe_dump_all(k8s_render.render_with_components(overlay, component), sort_keys=False)
    else:
        text = k8s_render.render_text(overlay)
    if output:
        Path(output).write_text(text)
        console.print(f"wrote {output} ({text.count(chr(10))} lines)", highlight=False)
    else:
        print(text, end="")


@ops_task(
    iterable=["overlay"],
    help={
        "overlay": "Validate only this overlay (repeatable); default: every overlay.",
        "optional": "Also validate eks-prod with each optional component (default on).",
    },
)
def validate(c: Context, overlay: list[str] | None = None, optional: bool = True) -> None:
    """Render every overlay (no warnings allowed), validate schemas offline (strict), run the policies."""
    names = overlay or list(k8s_render.OVERLAYS)
    reports = [policies.validate_overlay(name) for name in names]
    if optional and not overlay:
        reports += [policies.validate_overlay("eks-prod", [comp]) for comp in k8s_render.OPTIONAL_COMPONENTS]
    policies.print_reports(reports, console)
    stale = [(doc, name) for doc in docs.GENERATED_DOCS for name in docs.stale_doc_sections(doc)] if not overlay else []
    for doc, name in stale:
        console.print(f"[red]{doc.name}: section {name} is stale; run `invoke manifests.diagram --write`[/]")
    if stale or not all(r.ok for r in reports):
        raise Exit(code=1)


@ops_task(help={"write": "Rewrite the generated sections (diagram, ASG tags) of docs/manifests.md and README.md."})
def diagram(c: Context, write: bool = False) -> None:
    """Mermaid diagram of the node groups and the workloads each can run, drawn from the eks-prod overlay."""
    if write:
        for doc in docs.GENERATED_DOCS:
            changed = docs.write_doc_sections(doc)
            console.print(f"{doc.relative_to(core.REPO_ROOT)}: {', '.join(changed) or 'already current'}")
    else:
        print(docs.mermaid(), end="")


@ops_task(
    iterable=["overlay"],
    help={"overlay": "Only this overlay (repeatable); default: every overlay."},
)
def inventory(c: Context, overlay: list[str] | None = None) -> None:
    """List every rendered object (kind/name and namespace) per overlay."""
    for name in overlay or k8s_render.OVERLAYS:
        objects = k8s_render.render(name)
        console.print(f"[bold]{name}[/] ({len(objects)} objects)")
        for line in k8s_objects.inventory(objects):
            console.print(f"  {line}", highlight=False)


ns = Collection("manifests")
ns.add_task(render)
ns.add_task(validate)
ns.add_task(diagram)
ns.add_task(inventory)
ROOT_TASKS: list = []

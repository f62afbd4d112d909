"""invoke tasks for the Kustomize manifests: render, validate, diagram, inventory (logic in ops.manifests)."""

from __future__ import annotations

from pathlib import Path

from invoke import Collection, Context, Exit, task

from ops import manifests as m
from ops.core import out as console


@task(
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
    try:
        if component:
            import yaml

            text = yaml.safe_dump_all(m.render_with_components(overlay, component), sort_keys=False)
        else:
            text = m.render_text(overlay)
    except m.ManifestError as exc:
        raise Exit(str(exc), code=1) from exc
    if output:
        Path(output).write_text(text)
        console.print(f"wrote {output} ({text.count(chr(10))} lines)", highlight=False)
    else:
        print(text, end="")


@task(
    iterable=["overlay"],
    help={
        "overlay": "Validate only this overlay (repeatable); default: every overlay.",
        "optional": "Also validate eks-prod with each optional component (default on).",
    },
)
def validate(c: Context, overlay: list[str] | None = None, optional: bool = True) -> None:
    """Render every overlay (no warnings allowed), validate schemas offline (strict), run the policies."""
    names = overlay or list(m.OVERLAYS)
    reports = [m.validate_overlay(name) for name in names]
    if optional and not overlay:
        reports += [m.validate_overlay("eks-prod", [comp]) for comp in m.OPTIONAL_COMPONENTS]
    m.print_reports(reports, console)
    stale = [(doc, name) for doc in m.GENERATED_DOCS for name in m.stale_doc_sections(doc)] if not overlay else []
    for doc, name in stale:
        console.print(f"[red]{doc.name}: section {name} is stale; run `invoke manifests.diagram --write`[/]")
    if stale or not all(r.ok for r in reports):
        raise Exit(code=1)


@task(help={"write": "Rewrite the generated sections (diagram, ASG tags) of docs/manifests.md and README.md."})
def diagram(c: Context, write: bool = False) -> None:
    """Mermaid diagram of the node groups and the workloads each can run, drawn from the eks-prod overlay."""
    if write:
        for doc in m.GENERATED_DOCS:
            changed = m.write_doc_sections(doc)
            console.print(f"{doc.relative_to(m.REPO_ROOT)}: {', '.join(changed) or 'already current'}")
    else:
        print(m.mermaid(), end="")


@task(
    iterable=["overlay"],
    help={"overlay": "Only this overlay (repeatable); default: every overlay."},
)
def inventory(c: Context, overlay: list[str] | None = None) -> None:
    """List every rendered object (kind/name and namespace) per overlay."""
    for name in overlay or m.OVERLAYS:
        objects = m.render(name)
        console.print(f"[bold]{name}[/] ({len(objects)} objects)")
        for line in m.inventory(objects):
            console.print(f"  {line}", highlight=False)


ns = Collection("manifests")
ns.add_task(render)
ns.add_task(validate)
ns.add_task(diagram)
ns.add_task(inventory)
ROOT_TASKS: list = []

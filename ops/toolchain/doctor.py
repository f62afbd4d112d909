"""Environment check behind `invoke tools.doctor`: pinned tools, docker engine, CUDA/GPU presence."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass

from rich.table import Table

from ops import core
from ops.core import out as console
from ops.toolchain import tools


@dataclass
class Check:
    """One line of the doctor report."""

    name: str
    ok: bool
    detail: str
    required: bool


def docker_check(required: bool) -> Check:
    """The docker engine answers `docker info` (not just the CLI being installed)."""
    if shutil.which("docker") is None:
        return Check("docker engine", False, "docker CLI not on PATH", required)
    try:
        proc = core.run(
            ["docker", "info", "--format", "{{.ServerVersion}} {{.Driver}} cgroup={{.CgroupDriver}}"],
            ok_codes=range(256),
            effect=False,
            timeout=20,
        )
    except subprocess.TimeoutExpired:
        return Check("docker engine", False, "`docker info` timed out", required)
    if proc.returncode != 0:
        return Check(
            "docker engine",
            False,
            (proc.stderr.strip().splitlines() or ["not running"])[-1],
            required,
        )
    return Check("docker engine", True, f"running: {proc.stdout.strip()}", required)


def gpu_checks() -> list[Check]:
    """nvidia-smi and torch's view of CUDA; never required (CPU machines are first-class here)."""
    checks: list[Check] = []
    smi = shutil.which("nvidia-smi")
    if smi is None:
        checks.append(
            Check(
                "nvidia-smi",
                False,
                "not found (no NVIDIA driver on this machine)",
                False,
            )
        )
    else:
        proc = core.run(
            [smi, "--query-gpu=name,driver_version", "--format=csv,noheader"],
            timeout=20,
            ok_codes=range(256),
            effect=False,
        )
        checks.append(
            Check(
                "nvidia-smi",
                proc.returncode == 0,
                proc.stdout.strip() or proc.stderr.strip(),
                False,
            )
        )
    probe = (
        "import torch;"
        "print(torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available(),"
        " torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-')"
    )
    try:
        proc = core.run([sys.executable, "-c", probe], timeout=120, ok_codes=range(256), effect=False)
        out = proc.stdout.strip() or (proc.stderr.strip().splitlines() or ["no output"])[-1]
        checks.append(Check("torch CUDA", "available True" in out, out, False))
    except subprocess.TimeoutExpired:
        checks.append(Check("torch CUDA", False, "torch import timed out", False))
    return checks


def run(require_docker: bool = True) -> bool:
    """Print the report; True when everything required is present and at its pinned version."""
    table = Table(title="toolchain (tools.toml)")
    for col in ("tool", "pinned", "found", "source", "required", "notes"):
        table.add_column(col)
    healthy = True
    for st in tools.statuses(verify=True):
        ok = st.ok
        if st.required and not ok:
            healthy = False
        mark = "[green]" if ok else ("[red]" if st.required else "[yellow]")
        table.add_row(
            f"{mark}{st.name}[/]",
            st.pinned,
            st.found or "-",
            st.source if ok or st.source.startswith("cache") else ("unavailable" if not st.required else st.source),
            "yes" if st.required else "optional",
            tools.summarize(st.notes) if not ok else "",
        )
    console.print(table)
    other = Table(title="environment")
    for col in ("check", "status", "detail"):
        other.add_column(col)
    for check in [docker_check(require_docker), *gpu_checks()]:
        if check.required and not check.ok:
            healthy = False
        status = "[green]ok[/]" if check.ok else ("[red]missing[/]" if check.required else "[yellow]absent[/]")
        other.add_row(check.name, status, check.detail)
    console.print(other)
    console.print(
        "[green]doctor: all required tools present[/]" if healthy else "[red]doctor: something required is missing[/]"
    )
    return healthy

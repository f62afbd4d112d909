"""Triton's perf_analyzer as a second load client: obtaining it, its input data, one concurrency sweep, its report.

perf_analyzer comes from PyPI (`perf-analyzer`, pinned in uv.lock's `perf-analyzer` group). Its only wheels are
`manylinux_2_38` (glibc 2.38, GCC 13's libstdc++), which is newer than Debian bookworm's glibc 2.36, so `uv sync`
cannot install it on bookworm machines (the group is not a default one, and `uv sync --group perf-analyzer` works
where glibc is new enough). `perf_analyzer_argv` therefore:

1. uses `$PERF_ANALYZER` when set (bench/gpu/run.sh), or the installed package's binary;
2. else installs the locked wheel (hash-checked from uv.lock) into the cache with `uv pip install --target`;
3. where the machine's glibc is older than the binary needs, runs it through the dynamic loader of Debian's next
   release (trixie: libc6, libstdc++6, libgcc-s1, fetched with apt-get from Debian's archive, signature-checked by
   apt, unpacked into the cache), with that loader's `--library-path`. Nothing on the machine is replaced.
"""

from __future__ import annotations

import base64
import csv
import functools
import json
import os
import platform
import shutil
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ops import core
from ops.core import REPO_ROOT, OpsError, cache_root
from ops.perf.closedloop import Call, Level

GROUP = "perf-analyzer"  # the uv dependency group that pins it
WHEEL_PLATFORM = "x86_64-manylinux_2_38"
NEEDS_GLIBC = (2, 38)
# Debian's release whose C and C++ runtimes are new enough (glibc 2.41, GCC 14), and the packages taken from it.
RUNTIME_SUITE = "trixie"
RUNTIME_PACKAGES = ("libc6", "libstdc++6", "libgcc-s1")
RUNTIME_LOADER = "usr/lib64/ld-linux-x86-64.so.2"
RUNTIME_LIBS = "usr/lib/x86_64-linux-gnu"


def glibc_version() -> tuple[int, int]:
    """The running glibc's version, (0, 0) when it cannot be read (not glibc)."""
    try:
        text = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (ValueError, OSError):
        return (0, 0)
    major, _, minor = text.rpartition(" ")[2].partition(".")
    return (int(major), int(minor.split(".")[0])) if major.isdigit() and minor[:1].isdigit() else (0, 0)


def locked_version() -> str:
    """perf-analyzer's version as uv.lock pins it (the one place the pin lives)."""
    text = (REPO_ROOT / "uv.lock").read_text()
    block = text.split('[[package]]\nname = "perf-analyzer"\n', 1)
    if len(block) != 2:
        raise OpsError(f"uv.lock has no perf-analyzer package: `uv add --group {GROUP} perf-analyzer==...`")
    return block[1].split('version = "', 1)[1].split('"', 1)[0]


def _installed_binary() -> Path | None:
    try:
        import perf_analyzer  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return None
    binary = Path(perf_analyzer.__file__).parent / "bin" / "perf_analyzer"
    return binary if binary.is_file() else None


def _wheel_binary(folder: Path) -> Path:
    """The locked wheel, installed (hash-checked) into `folder`, for a machine that cannot `uv sync` it."""
    binary = folder / "perf_analyzer" / "bin" / "perf_analyzer"
    if binary.is_file():
        return binary
    uv = shutil.which("uv")
    if uv is None:
        raise OpsError("perf_analyzer needs uv to install the locked perf-analyzer wheel")
    requirements = core.run(
        [uv, "export", "--only-group", GROUP, "--no-emit-project", "--frozen", "--no-header"], cwd=REPO_ROOT
    ).stdout
    scratch = folder.with_name(folder.name + ".partial")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    (scratch / "requirements.txt").write_text(requirements)
    core.run(
        [uv, "pip", "install", "--quiet", "--no-deps", "--require-hashes", "--target", str(scratch / "t"),
         "--python-platform", WHEEL_PLATFORM, "--python-version", "3.11", "-r", str(scratch / "requirements.txt")],
    )  # fmt: skip
    (scratch / "t" / "perf_analyzer" / "bin" / "perf_analyzer").chmod(0o755)
    shutil.rmtree(folder, ignore_errors=True)
    (scratch / "t").rename(folder)
    shutil.rmtree(scratch, ignore_errors=True)
    return binary


def _runtime(folder: Path) -> Path:
    """Debian trixie's C/C++ runtime unpacked into `folder` (apt-get download with private state: the machine's
    own apt configuration and packages stay as they are)."""
    if (folder / RUNTIME_LOADER).is_file():
        return folder
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise OpsError(
            f"perf_analyzer needs glibc >= {'.'.join(map(str, NEEDS_GLIBC))} (this machine has "
            f"{'.'.join(map(str, glibc_version()))}) and there is no apt-get to fetch a newer runtime"
        )
    scratch = folder.with_name(folder.name + ".partial")
    shutil.rmtree(scratch, ignore_errors=True)
    for sub in ("lists/partial", "cache/archives/partial", "debs", "root"):
        (scratch / sub).mkdir(parents=True)
    sources = scratch / "sources.list"
    sources.write_text(
        f"deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian "
        f"{RUNTIME_SUITE} main\n"
    )
    apt = [
        "apt-get",
        "-q",
        f"-oDir::Etc::SourceList={sources}",
        "-oDir::Etc::SourceParts=/dev/null",
        f"-oDir::State::Lists={scratch / 'lists'}",
        f"-oDir::Cache={scratch / 'cache'}",
        "-oAPT::Sandbox::User=root",
    ]
    core.run([*apt, "update"])
    core.run([*apt, "download", *RUNTIME_PACKAGES], cwd=scratch / "debs")
    for deb in sorted((scratch / "debs").glob("*.deb")):
        core.run(["dpkg-deb", "-x", str(deb), str(scratch / "root")])
    (scratch / "root" / "packages.txt").write_text("\n".join(sorted(p.name for p in (scratch / "debs").glob("*.deb"))))
    shutil.rmtree(folder, ignore_errors=True)
    (scratch / "root").rename(folder)
    shutil.rmtree(scratch, ignore_errors=True)
    return folder


@functools.cache
def perf_analyzer_argv() -> tuple[str, ...]:
    """The command that runs perf_analyzer on this machine (see the module's docstring)."""
    if os.environ.get("PERF_ANALYZER"):
        return (os.environ["PERF_ANALYZER"],)
    if platform.machine() != "x86_64" and _installed_binary() is None:
        raise OpsError(f"perf_analyzer: only its x86_64 wheel is wired here (this is {platform.machine()})")
    binary = _installed_binary() or _wheel_binary(cache_root() / "tools" / "perf-analyzer" / locked_version())
    if glibc_version() >= NEEDS_GLIBC:
        return (str(binary),)
    runtime = _runtime(cache_root() / "tools" / "perf-analyzer" / f"runtime-{RUNTIME_SUITE}")
    return (str(runtime / RUNTIME_LOADER), "--library-path", str(runtime / RUNTIME_LIBS), str(binary))


# -- requests ----------------------------------------------------------------------------------------------------
def bytes_tensor(elements: Sequence[bytes]) -> bytes:
    """BYTES elements serialized as the binary tensor extension carries them: a 4-byte little-endian length each."""
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def write_input_data(path: Path, input_name: str, requests: Sequence[Sequence[bytes]]) -> Path:
    """perf_analyzer's --input-data JSON: one entry per distinct request, each a BYTES tensor of its elements (`b64`
    holds the serialized tensor, the way perf_analyzer reads binary data for BYTES inputs)."""
    data = [
        {input_name: {"b64": base64.b64encode(bytes_tensor(elements)).decode(), "shape": [len(elements)]}}
        for elements in requests
    ]
    path.write_text(json.dumps({"data": data}))
    return path


def v2_binary_call(model: str, input_name: str, elements: Sequence[bytes], shape: Sequence[int] | None = None) -> Call:
    """The same request perf_analyzer sends (binary tensor extension, binary outputs), for vegeta. `shape` defaults
    to [len(elements)]; a Triton model with a batch dimension and one element per item takes [len(elements), 1]."""
    section = bytes_tensor(elements)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": input_name,
                    "shape": list(shape) if shape is not None else [len(elements)],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(section)},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    return Call(
        f"/v2/models/{model}/infer",
        "application/octet-stream",
        header + section,
        headers=(("Inference-Header-Content-Length", str(len(header))),),
    )


# -- one sweep -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SweepOptions:
    """One perf_analyzer level per concurrency: `windows` measurement windows of `window_s` each (or, with
    `window_requests`, of at least that many requests each: what a smoke test on a busy machine wants), reported as
    their average (perf_analyzer's own method). Stability is not required (`-s`, on average latency): on a shared
    machine a level that varies is reported as measured rather than failed (3 windows of 10 requests at p99 once
    varied more than 10x here, and perf_analyzer then exits 2)."""

    concurrency: tuple[int, ...] = (1, 2, 4)
    window_s: float = 1.0
    window_requests: int = 0
    windows: int = 3
    stability_percent: int = 1_000_000  # max/min of the windows within 10,000x: no stability demanded
    timeout_s: float = 300.0


def level_from_csv(path: Path, concurrency: int, duration_s: float) -> Level:
    """A perf_analyzer `-f` report (latencies in microseconds) as a closed-loop Level."""
    with path.open() as handle:
        row = next(r for r in csv.DictReader(handle) if int(r["Concurrency"]) == concurrency)
    throughput = float(row["Inferences/Second"])
    return Level(
        concurrency=concurrency,
        duration_s=duration_s,
        requests=round(throughput * duration_s),
        ok=round(throughput * duration_s),  # perf_analyzer exits non-zero on any failed request
        throughput=round(throughput, 2),
        p50_ms=round(float(row["p50 latency"]) / 1000, 3),
        p99_ms=round(float(row["p99 latency"]) / 1000, 3),
        client="perf_analyzer",
    )


def sweep(
    url: str,
    model: str,
    input_data: Path,
    folder: Path,
    options: SweepOptions = SweepOptions(),
    prefix: Sequence[str] = (),
) -> list[Level]:
    """perf_analyzer against `url` (http://host:port) at each concurrency; its CSV reports and logs go to `folder`.
    Raises OpsError (with its output) when perf_analyzer fails, which it does on any failed request."""
    folder.mkdir(parents=True, exist_ok=True)
    levels = []
    for concurrency in options.concurrency:
        report = folder / f"perf_analyzer-c{concurrency}.csv"
        argv = [
            *prefix,
            *perf_analyzer_argv(),
            "-m", model,
            "-u", url.removeprefix("http://"),
            "-i", "http",
            "--input-data", str(input_data),
            "--concurrency-range", f"{concurrency}:{concurrency}",
            *(["--measurement-mode", "count_windows", "--measurement-request-count", str(options.window_requests)]
              if options.window_requests else
              ["--measurement-mode", "time_windows", "-p", str(round(options.window_s * 1000))]),
            "-r", str(options.windows),
            "-s", str(options.stability_percent),
            "-f", str(report),
        ]  # fmt: skip
        proc = core.run(argv, timeout=options.timeout_s, ok_codes=range(256))
        (folder / f"perf_analyzer-c{concurrency}.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0 or not report.is_file():
            raise OpsError(
                f"perf_analyzer at concurrency {concurrency} exited {proc.returncode}:\n"
                f"{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}"
            )
        levels.append(level_from_csv(report, concurrency, options.window_s * options.windows))
    return levels

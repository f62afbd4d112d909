"""The pinned toolchain: read tools.toml and obtain each tool from the cache, a verified download or a Go build."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
import tomllib
import urllib.parse
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from ops import core
from ops.core import REPO_ROOT, OpsError, cache_root, console

MANIFEST_PATH = REPO_ROOT / "tools.toml"
UNVERIFIED = "unverified"
STAMP_NAME = "source.json"
UNAVAILABLE_NAME = "unavailable.json"
DOWNLOAD_TIMEOUT_S = 60.0


class ToolError(OpsError):
    """A tool could not be obtained by any path; the message says why for each path tried."""


class ChecksumError(OpsError):
    """A download is unverifiable (no pinned sha256) or did not match its pinned sha256."""


@dataclass(frozen=True)
class DownloadSpec:
    """Upstream release download: a bare binary, or `member` inside a .tar.gz.

    `sha256` pins the digest; where it is "unverified", `checksums` may name the checksum file upstream publishes
    beside the release (a bare digest, or `<digest>  <file name>` lines), read at download time.
    """

    url: str
    sha256: str
    member: str | None = None
    checksums: str | None = None

    @property
    def verified(self) -> bool:
        return bool(re.fullmatch(r"[0-9a-f]{64}", self.sha256))


@dataclass(frozen=True)
class BuildSpec:
    """Go build: `go install package@version` from `module`, or `go build` inside a wrapper module."""

    package: str
    module: str | None = None
    wrapper: str | None = None
    ldflags: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    # A Go toolchain for this tool alone (exported as GOTOOLCHAIN, fetched from the module proxy), for a module
    # whose go.mod asks for a newer Go than the machine's; None: tools.toml's [go] toolchain.
    toolchain: str | None = None


@dataclass(frozen=True)
class WrapperSpec:
    """A throwaway module that requires a module with `replace`s and restates those replaces as versions."""

    name: str
    require: dict[str, str]
    replace: tuple[str, ...]
    replace_version: str
    ldflags: tuple[str, ...]

    def fingerprint(self) -> str:
        blob = json.dumps([self.require, self.replace, self.replace_version], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class ToolSpec:
    """One pinned tool from tools.toml."""

    name: str
    version: str
    required: bool
    version_args: tuple[str, ...]
    version_regex: str
    build: BuildSpec | None
    download: DownloadSpec | None
    # "run": run the binary with version_args; "buildinfo": read the module versions Go records in every binary
    # (for a binary with no version command, such as Karpenter's).
    version_from: str = "run"


@dataclass(frozen=True)
class Manifest:
    """The whole of tools.toml."""

    tools: dict[str, ToolSpec]
    wrappers: dict[str, WrapperSpec]
    go_toolchain: str = "local"


@dataclass
class ToolStatus:
    """What `doctor` and `install` report for one tool."""

    name: str
    pinned: str
    required: bool
    path: Path | None = None
    found: str | None = None
    source: str = "missing"  # cache (<how>) | download | build | unavailable | missing
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.path is not None and versions_match(self.pinned, self.found)


def versions_match(pinned: str, found: str | None) -> bool:
    return found is not None and pinned.lstrip("v") == found.lstrip("v")


def load_manifest(path: Path = MANIFEST_PATH) -> Manifest:
    """Parse tools.toml into typed specs."""
    data = tomllib.loads(path.read_text())
    wrappers = {
        name: WrapperSpec(
            name=name,
            require=dict(w["require"]),
            replace=tuple(w.get("replace", ())),
            replace_version=w["replace_version"],
            ldflags=tuple(w.get("ldflags", ())),
        )
        for name, w in data.get("wrappers", {}).items()
    }
    tools: dict[str, ToolSpec] = {}
    for name, t in data["tools"].items():
        b: dict[str, Any] | None = t.get("build")
        d: dict[str, Any] | None = t.get("download")
        if b and b.get("wrapper") and b["wrapper"] not in wrappers:
            raise ValueError(f"tools.{name}: unknown wrapper {b['wrapper']!r}")
        tools[name] = ToolSpec(
            name=name,
            version=t["version"],
            required=bool(t.get("required", True)),
            version_args=tuple(t.get("version_args", ("--version",))),
            version_regex=t.get("version_regex", r"(v?[0-9]+\.[0-9]+\.[0-9]+)"),
            build=BuildSpec(
                package=b["package"],
                module=b.get("module"),
                wrapper=b.get("wrapper"),
                ldflags=tuple(b.get("ldflags", ())),
                tags=tuple(b.get("tags", ())),
                toolchain=b.get("toolchain"),
            )
            if b
            else None,
            download=DownloadSpec(
                url=d["url"], sha256=d["sha256"], member=d.get("member"), checksums=d.get("checksums")
            )
            if d
            else None,
            version_from=t.get("version_from", "run"),
        )
        if tools[name].version_from not in ("run", "buildinfo"):
            raise ValueError(f"tools.{name}: version_from must be 'run' or 'buildinfo'")
    return Manifest(
        tools=tools,
        wrappers=wrappers,
        go_toolchain=data.get("go", {}).get("toolchain", "local"),
    )


# --- cache layout --------------------------------------------------------------------------------


def tool_dir(spec: ToolSpec) -> Path:
    return cache_root() / "tools" / spec.name / spec.version


def binary_path(spec: ToolSpec) -> Path:
    return tool_dir(spec) / spec.name


def read_stamp(spec: ToolSpec) -> dict[str, Any] | None:
    """The stamp is written last, so a binary without one is a half-finished install."""
    stamp = tool_dir(spec) / STAMP_NAME
    if not stamp.is_file() or not binary_path(spec).is_file():
        return None
    try:
        return dict(json.loads(stamp.read_text()))
    except (OSError, ValueError):
        return None


def cached(name: str, manifest: Manifest | None = None) -> Path | None:
    """The cached binary of a pinned tool, or None; never installs."""
    spec = (manifest or load_manifest()).tools[name]
    return binary_path(spec) if read_stamp(spec) is not None else None


@contextlib.contextmanager
def locked(name: str) -> Iterator[None]:
    """An exclusive per-user lock, so concurrent ensure()/install calls wait instead of building twice."""
    lock_dir = cache_root() / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / f"{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def go_env(manifest: Manifest | None = None, toolchain: str | None = None) -> dict[str, str]:
    """Environment for Go builds: module and build caches under the cache root, kept warm across clones.

    `toolchain` (a tool's own build.toolchain) overrides tools.toml's [go] toolchain for that build.
    """
    m = manifest or load_manifest()
    env = dict(os.environ)
    env.setdefault("GOMODCACHE", str(cache_root() / "go" / "mod"))
    env.setdefault("GOCACHE", str(cache_root() / "go" / "build"))
    env["GOTOOLCHAIN"] = toolchain or m.go_toolchain
    # -modcacherw: the module cache stays deletable with rm -rf; -trimpath: reproducible binaries.
    env["GOFLAGS"] = " ".join(f for f in (env.get("GOFLAGS", ""), "-buildvcs=false", "-modcacherw", "-trimpath") if f)
    env["CGO_ENABLED"] = env.get("CGO_ENABLED", "0")
    return env


# --- found versions --------------------------------------------------------------------------------


def found_version(spec: ToolSpec, path: Path) -> str | None:
    """Run the binary's version command (or read its Go build info) and pull the version out with the spec's regex."""
    if spec.version_from == "buildinfo":
        # Go writes the main module's path and version as plain text into every binary it builds
        # (`mod\t<path>\t<version>\t<sum>`, what `go version -m` prints); -s -w do not strip it.
        try:
            info = re.search(spec.version_regex.encode(), path.read_bytes())
        except OSError:
            return None
        return info.group(1).decode() if info else None
    try:
        proc = core.run([str(path), *spec.version_args], timeout=30, ok_codes=range(256), effect=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(spec.version_regex, proc.stdout + proc.stderr)
    return match.group(1) if match else None


# --- path 2: verified download ----------------------------------------------------------------------


def published_sha256(dl: DownloadSpec) -> str:
    """The digest upstream publishes for `dl.url` in its checksum file `dl.checksums`.

    Understands both layouts upstreams use: a file holding the bare digest (dl.k8s.io's `<binary>.sha256`,
    cri-tools' `.sha256`) and `<digest>  [*]<file name>` lines (`checksums.txt`, `SHA256SUMS`, kind's `.sha256sum`),
    where the line for the download's own file name counts.
    """
    import httpx  # imported here: only the download path needs it

    assert dl.checksums is not None
    resp = httpx.get(dl.checksums, follow_redirects=True, timeout=DOWNLOAD_TIMEOUT_S)
    resp.raise_for_status()
    name = urllib.parse.unquote(dl.url.rsplit("/", 1)[-1])
    entries = [line.split() for line in resp.text.splitlines() if line.strip()]
    for entry in entries:
        digest = entry[0].lower()
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            continue
        listed = entry[1].lstrip("*").rsplit("/", 1)[-1] if len(entry) > 1 else None
        if listed is None and len(entries) == 1:
            return digest
        if listed == name:
            return digest
    raise ChecksumError(f"{dl.checksums} lists no sha256 for {name}; refusing to run an unverified download")


def download(spec: ToolSpec, dest: Path) -> str:
    """Fetch the upstream release, verify its sha256 BEFORE unpacking or writing, install it at dest.

    The digest is the one pinned in tools.toml, else the one upstream's checksum file publishes (read first);
    returns which, for the install stamp. Refuses (ChecksumError) without touching the network when there is
    neither.
    """
    if spec.download is None:
        raise ChecksumError("no upstream binary download is published")
    dl = spec.download
    if dl.verified:
        expected, against = dl.sha256, "sha256 pinned in tools.toml"
    elif dl.checksums:
        expected, against = published_sha256(dl), f"upstream checksum file {dl.checksums}"
    else:
        raise ChecksumError(f"sha256 is {dl.sha256!r} in tools.toml; refusing to run an unverified download")
    import httpx  # imported here: only this path needs it

    digest = hashlib.sha256()
    buf = io.BytesIO()
    with httpx.stream("GET", dl.url, follow_redirects=True, timeout=DOWNLOAD_TIMEOUT_S) as resp:
        resp.raise_for_status()
        for chunk in resp.iter_bytes():
            digest.update(chunk)
            buf.write(chunk)
    if digest.hexdigest() != expected:
        raise ChecksumError(f"sha256 mismatch for {dl.url}: got {digest.hexdigest()}, expected {expected} ({against})")
    payload = buf.getvalue()
    if dl.member:
        with tarfile.open(fileobj=io.BytesIO(payload), mode="r:gz") as tar:
            member = tar.extractfile(dl.member)
            if member is None:
                raise ChecksumError(f"{dl.member} is not a file in {dl.url}")
            payload = member.read()
    _write_executable(dest, payload)
    return f"sha256 {expected} of {dl.url}, from the {against}"


def _write_executable(dest: Path, payload: bytes) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".partial")
    tmp.write_bytes(payload)
    tmp.chmod(0o755)
    tmp.replace(dest)


# --- path 3: Go build --------------------------------------------------------------------------------


def go_binary() -> str:
    """The go command: $GO, else the one on PATH, else the standard /usr/local/go install."""
    found = os.environ.get("GO") or shutil.which("go")
    if found:
        return found
    if Path("/usr/local/go/bin/go").is_file():
        return "/usr/local/go/bin/go"
    raise ToolError("no Go toolchain: install Go >= 1.26 (https://go.dev/doc/install) or set GO=/path/to/go")


def _run_go(
    args: list[str],
    cwd: Path,
    env: dict[str, str],
    progress: Progress | None,
    label: str,
) -> None:
    """Run a Go command at nice 19, streaming `-v` package lines into the progress bar."""
    cmd = ["nice", "-n", "19", go_binary(), *args]
    task = progress.add_task(f"{label}: go {args[0]}", total=None) if progress else None
    lines: list[str] = []
    proc = core.start(
        cmd,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    assert proc.stdout is not None
    for count, line in enumerate(proc.stdout, start=1):
        lines.append(line.rstrip())
        if progress is not None and task is not None:
            progress.update(
                task,
                description=f"{label}: go {args[0]} [{count}] {line.strip()[-60:]}",
            )
    rc = proc.wait()
    if progress is not None and task is not None:
        progress.remove_task(task)
    if rc != 0:
        tail = "\n".join(lines[-25:])
        raise ToolError(f"`go {' '.join(args)}` failed (exit {rc}):\n{tail}")


def _ldflags(flags: Iterable[str]) -> list[str]:
    joined = " ".join(["-s", "-w", *flags])
    return ["-ldflags", joined]


def wrapper_dir(wrapper: WrapperSpec) -> Path:
    return cache_root() / "wrappers" / f"{wrapper.name}-{wrapper.fingerprint()}"


def prepare_wrapper(
    wrapper: WrapperSpec,
    packages: list[str],
    env: dict[str, str],
    progress: Progress | None,
) -> Path:
    """Create (once) the wrapper module and resolve its dependency graph with `go get`."""
    with locked(f"wrapper-{wrapper.name}"):
        return _prepare_wrapper(wrapper, packages, env, progress)


def _prepare_wrapper(
    wrapper: WrapperSpec,
    packages: list[str],
    env: dict[str, str],
    progress: Progress | None,
) -> Path:
    wdir = wrapper_dir(wrapper)
    ready = wdir / ".resolved"
    if ready.is_file():
        return wdir
    wdir.mkdir(parents=True, exist_ok=True)
    lines = [
        f"module eks-inference.local/wrappers/{wrapper.name}",
        "",
        "go 1.24",
        "",
        "require (",
    ]
    lines += [f"\t{mod} {ver}" for mod, ver in wrapper.require.items()]
    lines += [")", "", "replace ("]
    lines += [f"\t{mod} => {mod} {wrapper.replace_version}" for mod in wrapper.replace]
    lines += [")", ""]
    (wdir / "go.mod").write_text("\n".join(lines))
    version = next(iter(wrapper.require.values()))
    _run_go(
        ["get", *(f"{pkg}@{version}" for pkg in packages)],
        wdir,
        env,
        progress,
        wrapper.name,
    )
    ready.write_text(json.dumps({"packages": packages}))
    return wdir


def build(spec: ToolSpec, dest: Path, manifest: Manifest, progress: Progress | None = None) -> None:
    """Build the tool from source through the Go module proxy into dest."""
    if spec.build is None:
        raise ToolError("no Go build recipe")
    b = spec.build
    env = go_env(manifest, b.toolchain)
    tags = ["-tags", ",".join(b.tags)] if b.tags else []
    with tempfile.TemporaryDirectory(prefix=f"build-{spec.name}-") as tmp:
        out = Path(tmp) / spec.name
        if b.wrapper:
            wrapper = manifest.wrappers[b.wrapper]
            siblings = sorted(
                {t.build.package for t in manifest.tools.values() if t.build and t.build.wrapper == b.wrapper}
            )
            wdir = prepare_wrapper(wrapper, siblings, env, progress)
            flags = _ldflags([*wrapper.ldflags, *b.ldflags])
            _run_go(
                ["build", "-v", *tags, *flags, "-o", str(out), b.package],
                wdir,
                env,
                progress,
                spec.name,
            )
        else:
            env["GOBIN"] = tmp
            flags = _ldflags(b.ldflags)
            _run_go(
                ["install", "-v", *tags, *flags, f"{b.package}@{spec.version}"],
                Path(tmp),
                env,
                progress,
                spec.name,
            )
            built = Path(tmp) / b.package.rstrip("/").split("/")[-1]
            # A major-version suffix names no binary: .../vegeta/v12 installs `vegeta`.
            if re.fullmatch(r"v[0-9]+", built.name):
                built = Path(tmp) / b.package.split("/")[-2]
            built.rename(out)
        _write_executable(dest, out.read_bytes())


# --- ensure / install ----------------------------------------------------------------------------------


def _write_stamp(spec: ToolSpec, source: str, seconds: float, verified: str = "") -> None:
    path = binary_path(spec)
    stamp = {
        "tool": spec.name,
        "version": spec.version,
        "source": source,
        **({"verified": verified} if verified else {}),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "seconds": round(seconds, 1),
        "installed_at": _now(),
    }
    (tool_dir(spec) / STAMP_NAME).write_text(json.dumps(stamp, indent=2) + "\n")
    (tool_dir(spec) / UNAVAILABLE_NAME).unlink(missing_ok=True)


def obtain(name: str, manifest: Manifest | None = None, progress: Progress | None = None) -> ToolStatus:
    """Cache -> verified download -> Go build; returns the status with notes on every path tried."""
    with locked(f"tool-{name}"):
        return _obtain(name, manifest or load_manifest(), progress)


def _obtain(name: str, m: Manifest, progress: Progress | None) -> ToolStatus:
    spec = m.tools[name]
    status = ToolStatus(name=name, pinned=spec.version, required=spec.required)
    dest = binary_path(spec)
    stamp = read_stamp(spec)
    if stamp is not None:
        status.path, status.source = dest, f"cache ({stamp.get('source', '?')})"
        status.found = found_version(spec, dest)
        return status
    started = time.monotonic()
    for source in ("download", "build"):
        verified = ""
        try:
            if source == "download":
                verified = download(spec, dest)
            else:
                build(spec, dest, m, progress)
        except (ChecksumError, ToolError, OSError) as exc:
            status.notes.append(f"{source}: {_first_lines(str(exc))}")
            continue
        except Exception as exc:  # an HTTP failure must fall through to the build path
            status.notes.append(f"{source}: {type(exc).__name__}: {exc}")
            continue
        found = found_version(spec, dest)
        if not versions_match(spec.version, found):
            status.notes.append(f"{source}: binary reports version {found!r}, pinned {spec.version}")
            dest.unlink(missing_ok=True)
            continue
        status.seconds = time.monotonic() - started
        _write_stamp(spec, source, status.seconds, verified)
        status.path, status.found, status.source = dest, found, source
        return status
    status.source = "unavailable" if _proxy_refused(status.notes) else "missing"
    status.seconds = time.monotonic() - started
    # Remembered for `doctor`, which reports without touching the network.
    tool_dir(spec).mkdir(parents=True, exist_ok=True)
    (tool_dir(spec) / UNAVAILABLE_NAME).write_text(
        json.dumps(
            {"source": status.source, "notes": status.notes, "checked_at": _now()},
            indent=2,
        )
        + "\n"
    )
    return status


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _first_lines(text: str, limit: int = 6) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    picked = [ln for ln in lines if _proxy_refused([ln]) or "error" in ln.lower()] or lines
    return " | ".join(picked[:limit])


def summarize(notes: list[str]) -> str:
    """One short line per path tried, for tables (`doctor`, `tools.list`)."""
    short = []
    for note in notes:
        path, _, detail = note.partition(": ")
        if _proxy_refused([detail]):
            detail = "Go module proxy: 403, module not available"
        elif "unverified" in detail:
            detail = "sha256 unverified, refused"
        elif path == "checked":
            continue
        short.append(f"{path}: {detail[:80]}" if detail else path[:80])
    return "; ".join(short)


def _proxy_refused(notes: list[str]) -> bool:
    # Match the Go proxy's refusal itself: a bare "403" also matches ports and digests in other notes.
    return any("403 Forbidden" in n or "module version is not available" in n for n in notes)


def ensure(name: str) -> Path:
    """Path of the pinned binary `name`, installing it first if needed (cache -> download -> build)."""
    m = load_manifest()
    if name not in m.tools:
        raise KeyError(f"{name!r} is not pinned in {MANIFEST_PATH}")
    path = cached(name, m)
    if path is not None:
        return path
    with _progress() as progress:
        status = obtain(name, m, progress)
    if status.path is None:
        raise ToolError(f"{name} {status.pinned} could not be obtained: " + "; ".join(status.notes))
    return status.path


@contextlib.contextmanager
def _progress() -> Iterator[Progress]:
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        yield progress


def install(names: Iterable[str] | None = None) -> list[ToolStatus]:
    """Obtain every pinned tool (or `names`); optional tools that cannot be obtained are reported, not fatal."""
    m = load_manifest()
    selected = list(names) if names else list(m.tools)
    if core.is_dry():  # `invoke --dry`: what is cached, and what would be downloaded or built
        planned = [st for st in statuses(m) if st.name in selected]
        for st in planned:
            console.print(f"{st.name} {st.pinned}: {st.path or 'would download (verified) or build'}", markup=False)
        return planned
    results: list[ToolStatus] = []
    with _progress() as progress:
        overall = progress.add_task("tools", total=len(selected))
        for name in selected:
            progress.update(overall, description=f"tools: {name}")
            status = obtain(name, m, progress)
            results.append(status)
            if status.path is not None:
                progress.console.log(f"{name} {status.found}: {status.source} ({status.seconds:.1f}s)")
            else:
                level = "red" if status.required else "yellow"
                progress.console.log(f"[{level}]{name} {status.pinned}: {status.source}[/] - {'; '.join(status.notes)}")
            progress.advance(overall)
    return results


def statuses(manifest: Manifest | None = None, verify: bool = False) -> list[ToolStatus]:
    """Status of every pinned tool without installing anything (for `doctor` and `tools.list`).

    verify=True also re-hashes each cached binary against the sha256 recorded when it was installed.
    """
    m = manifest or load_manifest()
    out: list[ToolStatus] = []
    for spec in m.tools.values():
        st = ToolStatus(name=spec.name, pinned=spec.version, required=spec.required)
        stamp = read_stamp(spec)
        if stamp is not None:
            st.path = binary_path(spec)
            st.source = f"cache ({stamp.get('source', '?')})"
            st.found = found_version(spec, st.path)
            if verify and hashlib.sha256(st.path.read_bytes()).hexdigest() != stamp.get("sha256"):
                st.source = "cache (corrupt)"
                st.found = None
                st.notes.append("cached binary no longer matches its recorded sha256; run tools.install --force")
        else:
            st.source = "not installed"
            failed = tool_dir(spec) / UNAVAILABLE_NAME
            if failed.is_file():
                record = json.loads(failed.read_text())
                st.source = record["source"]
                st.notes = [*record["notes"], f"checked {record['checked_at']}"]
        out.append(st)
    return out


def remove(name: str) -> None:
    """Drop a tool's cached copy (all versions)."""
    shutil.rmtree(cache_root() / "tools" / name, ignore_errors=True)

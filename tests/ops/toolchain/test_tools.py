"""The pinned toolchain: tools.toml contents, and each install path (cache, verified download, Go build) for real."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import re
import subprocess
import sys
import tarfile
import threading
import time
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.core import REPO_ROOT
from ops.toolchain import doctor, tools

VERSIONS = tomllib.loads((REPO_ROOT / "base-images" / "versions.toml").read_text())
KUBE_TOOLS = (
    "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kubelet", "kubeadm", "kube-proxy",
)  # fmt: skip
# Built for the offline kind node image (kind/node-image) beside the Kubernetes binaries.
NODE_IMAGE_TOOLS = ("coredns", "metrics-server", "crictl", "kube-router")
OPTIONAL = {"tilt", "cluster-autoscaler"}


# --- tools.toml ------------------------------------------------------------------------------------


def test_every_tool_is_pinned_at_an_exact_version() -> None:
    manifest = tools.load_manifest()
    expected = {
        *KUBE_TOOLS, *NODE_IMAGE_TOOLS, "kustomize", "etcd", "kwok", "kwokctl", "kind", "vegeta", "tilt",
        "cluster-autoscaler", "karpenter-kwok",
    }  # fmt: skip
    assert set(manifest.tools) == expected
    for spec in manifest.tools.values():
        assert re.fullmatch(r"v\d+\.\d+\.\d+", spec.version), spec
        assert spec.build is not None, f"{spec.name}: every tool needs the build-from-source path"
        if spec.download is not None:
            assert spec.download.url.startswith("https://"), spec.name
            assert spec.download.verified or spec.download.sha256 == tools.UNVERIFIED, spec.name
            if spec.download.checksums:  # published by the same upstream, over https, beside the asset
                assert spec.download.checksums.startswith("https://"), spec.name
                assert spec.download.checksums.split("/")[2] == spec.download.url.split("/")[2], spec.name


def test_kubernetes_versions_follow_the_compatibility_matrix() -> None:
    manifest = tools.load_manifest()
    minor = VERSIONS["eks"]["kubernetes_minor"]
    for name in KUBE_TOOLS:
        assert manifest.tools[name].version.startswith(f"v{minor}."), name
    wrapper = manifest.wrappers["kubernetes"]
    assert wrapper.require["k8s.io/kubernetes"] == manifest.tools["kube-apiserver"].version
    assert wrapper.replace_version == "v0." + manifest.tools["kube-apiserver"].version.removeprefix("v1.")
    assert manifest.tools["cluster-autoscaler"].version == VERSIONS["addons"]["cluster_autoscaler"]
    assert manifest.tools["cluster-autoscaler"].version.startswith(f"v{minor}.")


def test_the_kubernetes_wrapper_replaces_exactly_the_staging_modules() -> None:
    """The replace list must track k8s.io/kubernetes' own go.mod (read from the module cache tools.install filled)."""
    manifest = tools.load_manifest()
    version = manifest.wrappers["kubernetes"].require["k8s.io/kubernetes"]
    gomod = Path(tools.go_env()["GOMODCACHE"]) / "cache/download/k8s.io/kubernetes/@v" / f"{version}.mod"
    staging = {line.split()[0] for line in gomod.read_text().splitlines() if "=> ./staging/" in line}
    assert staging == set(manifest.wrappers["kubernetes"].replace)


def test_only_tilt_and_cluster_autoscaler_are_optional() -> None:
    manifest = tools.load_manifest()
    assert {n for n, s in manifest.tools.items() if not s.required} == OPTIONAL


# --- a local upstream: an HTTP server on 127.0.0.1 that counts requests --------------------------------


class _Upstream:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[str] = []
        upstream = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: object, **kwargs: object) -> None:
                super().__init__(*args, directory=str(upstream.root), **kwargs)  # type: ignore[arg-type]

            def do_GET(self) -> None:
                upstream.requests.append(self.path)
                super().do_GET()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/{name}"


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[_Upstream]:
    root = tmp_path / "upstream"
    root.mkdir()
    server = _Upstream(root)
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


@pytest.fixture
def cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty per-user cache; the Go build cache stays the shared warm one (it is content-addressed)."""
    monkeypatch.setenv("GOCACHE", tools.go_env()["GOCACHE"])
    home = tmp_path / "xdg-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))
    return home


def fake_binary(version: str) -> bytes:
    return f"#!/bin/sh\necho 'faketool version {version}'\n".encode()


def write_manifest(
    path: Path, url: str, sha256: str, member: str | None = None, build: str = "", checksums: str = ""
) -> tools.Manifest:
    member_line = f', member = "{member}"' if member else ""
    member_line += f', checksums = "{checksums}"' if checksums else ""
    path.write_text(
        f"""
[tools.faketool]
version = "v1.2.3"
required = true
version_args = ["--version"]
version_regex = 'version (v[0-9.]+)'
download = {{ url = "{url}", sha256 = "{sha256}"{member_line} }}
{build}
"""
    )
    return tools.load_manifest(path)


# --- path 2: verified download -------------------------------------------------------------------------


def test_unverified_download_is_refused_without_fetching(upstream: _Upstream, cache_home: Path, tmp_path: Path) -> None:
    (upstream.root / "faketool").write_bytes(fake_binary("v1.2.3"))
    manifest = write_manifest(tmp_path / "tools.toml", upstream.url("faketool"), tools.UNVERIFIED)
    status = tools.obtain("faketool", manifest)
    assert status.path is None
    assert upstream.requests == []
    assert any("unverified" in note for note in status.notes)
    assert not tools.binary_path(manifest.tools["faketool"]).exists()


def test_verified_download_installs_then_the_cache_answers(
    upstream: _Upstream, cache_home: Path, tmp_path: Path
) -> None:
    payload = fake_binary("v1.2.3")
    (upstream.root / "faketool").write_bytes(payload)
    manifest = write_manifest(
        tmp_path / "tools.toml",
        upstream.url("faketool"),
        hashlib.sha256(payload).hexdigest(),
    )
    first = tools.obtain("faketool", manifest)
    assert (first.source, first.found) == ("download", "v1.2.3")
    assert first.path == cache_home / "eks-inference" / "tools" / "faketool" / "v1.2.3" / "faketool"
    stamp = json.loads((first.path.parent / tools.STAMP_NAME).read_text())
    assert stamp["sha256"] == hashlib.sha256(payload).hexdigest()
    second = tools.obtain("faketool", manifest)
    assert second.source == "cache (download)"
    assert len(upstream.requests) == 1


def test_checksum_mismatch_installs_nothing(upstream: _Upstream, cache_home: Path, tmp_path: Path) -> None:
    (upstream.root / "faketool").write_bytes(fake_binary("v1.2.3"))
    manifest = write_manifest(tmp_path / "tools.toml", upstream.url("faketool"), "0" * 64)
    status = tools.obtain("faketool", manifest)
    assert status.path is None
    assert status.source == "missing"
    assert any("sha256 mismatch" in note for note in status.notes)
    assert not tools.binary_path(manifest.tools["faketool"]).exists()


def test_download_unpacks_the_pinned_member_of_a_tarball(upstream: _Upstream, cache_home: Path, tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = fake_binary("v1.2.3")
        info = tarfile.TarInfo("faketool-v1.2.3-linux-amd64/faketool")
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
    (upstream.root / "faketool.tar.gz").write_bytes(buf.getvalue())
    manifest = write_manifest(
        tmp_path / "tools.toml",
        upstream.url("faketool.tar.gz"),
        hashlib.sha256(buf.getvalue()).hexdigest(),
        member="faketool-v1.2.3-linux-amd64/faketool",
    )
    status = tools.obtain("faketool", manifest)
    assert (status.source, status.found) == ("download", "v1.2.3")


def test_a_binary_reporting_another_version_is_rejected(upstream: _Upstream, cache_home: Path, tmp_path: Path) -> None:
    payload = fake_binary("v9.9.9")
    (upstream.root / "faketool").write_bytes(payload)
    manifest = write_manifest(
        tmp_path / "tools.toml",
        upstream.url("faketool"),
        hashlib.sha256(payload).hexdigest(),
    )
    status = tools.obtain("faketool", manifest)
    assert status.path is None
    assert any("v9.9.9" in note for note in status.notes)


# --- path 3: Go build through a module proxy (a file:// proxy here, the real one in tools.install) --------


def make_module_proxy(root: Path, module: str, version: str) -> None:
    """A GOPROXY=file:// tree serving one module with a main package that prints main.version."""
    files = {
        "go.mod": f"module {module}\n\ngo 1.22\n",
        "main.go": (
            'package main\n\nimport "fmt"\n\nvar version = "dev"\n\n'
            'func main() { fmt.Println("faketool version", version) }\n'
        ),
    }
    vdir = root / module / "@v"
    vdir.mkdir(parents=True)
    (vdir / "list").write_text(version + "\n")
    (vdir / f"{version}.info").write_text(json.dumps({"Version": version, "Time": "2026-01-01T00:00:00Z"}))
    (vdir / f"{version}.mod").write_text(files["go.mod"])
    with zipfile.ZipFile(vdir / f"{version}.zip", "w") as zf:
        for name, text in files.items():
            zf.writestr(f"{module}@{version}/{name}", text)


def test_falls_through_to_a_go_build_when_the_download_is_unverified(
    upstream: _Upstream,
    cache_home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    module = "example.test/faketool"
    make_module_proxy(tmp_path / "goproxy", module, "v1.2.3")
    monkeypatch.setenv("GOPROXY", (tmp_path / "goproxy").as_uri())
    monkeypatch.setenv("GOSUMDB", "off")
    build = f'build = {{ module = "{module}", package = "{module}", ldflags = ["-X main.version=v1.2.3"] }}'
    manifest = write_manifest(tmp_path / "tools.toml", upstream.url("faketool"), tools.UNVERIFIED, build=build)
    started = time.monotonic()
    status = tools.obtain("faketool", manifest)
    assert (status.source, status.found) == ("build", "v1.2.3"), status.notes
    assert upstream.requests == []  # the unverified download was never attempted
    assert status.path is not None
    assert status.path.read_bytes()[:4] == b"\x7fELF"
    assert time.monotonic() - started < 300


def test_a_module_the_proxy_refuses_is_reported_unavailable(
    cache_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An empty file:// proxy answers "not found" the way proxy.golang.org answers 403 for tilt/CA.
    (tmp_path / "goproxy").mkdir()
    monkeypatch.setenv("GOPROXY", (tmp_path / "goproxy").as_uri())
    monkeypatch.setenv("GOSUMDB", "off")
    build = 'build = { module = "example.test/absent", package = "example.test/absent" }'
    manifest = write_manifest(
        tmp_path / "tools.toml",
        "https://127.0.0.1:9/none",
        tools.UNVERIFIED,
        build=build,
    )
    status = tools.obtain("faketool", manifest)
    assert status.path is None
    assert any(note.startswith("build:") for note in status.notes)
    recorded = json.loads((tools.tool_dir(manifest.tools["faketool"]) / tools.UNAVAILABLE_NAME).read_text())
    assert recorded["notes"] == status.notes


# --- the real toolchain (after `invoke tools.install`) ----------------------------------------------------


def test_required_tools_are_installed_at_their_pinned_versions() -> None:
    by_name = {st.name: st for st in tools.statuses()}
    missing = {n: (st.found, st.source) for n, st in by_name.items() if st.required and not st.ok}
    assert not missing, f"run `invoke tools.install`: {missing}"
    assert tools.ensure("vegeta") == tools.binary_path(tools.load_manifest().tools["vegeta"])


def test_ensure_with_an_unknown_name_or_help_flag_prints_usage_not_a_traceback() -> None:
    for argument in ("--help", "no-such-tool"):
        done = subprocess.run(
            [sys.executable, "-m", "invoke", "tools.ensure", argument], cwd=REPO_ROOT, capture_output=True, text=True
        )
        assert done.returncode == 2, done.stderr
        assert "usage: invoke tools.ensure NAME" in done.stderr, done.stderr
        assert "kubectl" in done.stderr
        assert "Traceback" not in done.stderr


def test_doctor_is_green_here_and_red_with_an_empty_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert doctor.run(require_docker=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert not doctor.run(require_docker=False)


def test_doctor_catches_a_cached_binary_that_changed(upstream: _Upstream, cache_home: Path, tmp_path: Path) -> None:
    payload = fake_binary("v1.2.3")
    (upstream.root / "faketool").write_bytes(payload)
    path = tmp_path / "tools.toml"
    manifest = write_manifest(path, upstream.url("faketool"), hashlib.sha256(payload).hexdigest())
    installed = tools.obtain("faketool", manifest).path
    assert installed is not None
    assert [st.source for st in tools.statuses(manifest, verify=True)] == ["cache (download)"]
    installed.write_bytes(payload + b"# tampered\n")
    (status,) = tools.statuses(manifest, verify=True)
    assert status.source == "cache (corrupt)"
    assert not status.ok


# --- path 2b: verified against the checksum file upstream publishes beside the release -------------------


def test_download_verified_against_a_bare_digest_file(upstream: _Upstream, cache_home: Path, tmp_path: Path) -> None:
    """dl.k8s.io's layout: release/<version>/bin/linux/amd64/<binary> and <binary>.sha256 holding the digest."""
    folder = upstream.root / "release" / "v1.2.3" / "bin" / "linux" / "amd64"
    folder.mkdir(parents=True)
    payload = fake_binary("v1.2.3")
    (folder / "faketool").write_bytes(payload)
    (folder / "faketool.sha256").write_text(hashlib.sha256(payload).hexdigest())
    url = upstream.url("release/v1.2.3/bin/linux/amd64/faketool")
    manifest = write_manifest(tmp_path / "tools.toml", url, tools.UNVERIFIED, checksums=url + ".sha256")
    status = tools.obtain("faketool", manifest)
    assert (status.source, status.found) == ("download", "v1.2.3")
    stamp = json.loads((tools.tool_dir(manifest.tools["faketool"]) / tools.STAMP_NAME).read_text())
    assert stamp["verified"] == (
        f"sha256 {hashlib.sha256(payload).hexdigest()} of {url}, from the upstream checksum file {url}.sha256"
    )
    assert upstream.requests == [
        "/release/v1.2.3/bin/linux/amd64/faketool.sha256",
        "/release/v1.2.3/bin/linux/amd64/faketool",
    ]


def _release_with_checksums_txt(
    upstream: _Upstream,
    digest_of_ours: str | None,
    archive: str = "faketool_v1.2.3_linux_amd64.tar.gz",
    checksums_name: str = "checksums.txt",
    others: tuple[str, ...] = ("faketool_v1.2.3_darwin_arm64.tar.gz", "faketool_v1.2.3_windows.zip"),
    tag: str = "faketool%2Fv1.2.3",
) -> tuple[str, str]:
    """GitHub's layout (goreleaser): releases/download/<tag>/<archive> and a checksum file listing every asset."""
    folder = upstream.root / "releases" / "download" / tag
    folder.mkdir(parents=True)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = fake_binary("v1.2.3")
        info = tarfile.TarInfo("faketool")
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
    (folder / archive).write_bytes(buf.getvalue())
    ours = digest_of_ours or hashlib.sha256(buf.getvalue()).hexdigest()
    lines = [f"{str(i) * 64}  {name}" for i, name in enumerate(others, 1)]
    lines.insert(len(lines) // 2, f"{ours}  {archive}")
    (folder / checksums_name).write_text("\n".join(lines) + "\n")
    base = upstream.url("releases/download/" + tag.replace("%", "%25"))
    return f"{base}/{archive}", f"{base}/{checksums_name}"


# The layouts of the upstreams pinned with a checksum file (tools.toml says where each was read): vegeta's release
# job runs `sha256sum *` into vegeta_<version>_checksums.txt; tilt's goreleaser writes checksums.txt, where the
# alpine archive's name differs from ours by one word.
LAYOUTS = {
    "vegeta": (
        "vegeta_12.13.0_linux_amd64.tar.gz",
        "vegeta_12.13.0_checksums.txt",
        ("vegeta_12.13.0_darwin_amd64.tar.gz", "vegeta_12.13.0_linux_arm64.tar.gz", "vegeta_12.13.0_pubkey.asc"),
        "v12.13.0",
    ),
    "tilt": (
        "tilt.0.37.6.linux.x86_64.tar.gz",
        "checksums.txt",
        ("tilt.0.37.6.linux-alpine.x86_64.tar.gz", "tilt.0.37.6.mac.x86_64.tar.gz", "tilt.0.37.6.windows.x86_64.zip"),
        "v0.37.6",
    ),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_the_pinned_checksum_layouts_verify_and_catch_a_mismatch(
    layout: str, upstream: _Upstream, cache_home: Path, tmp_path: Path
) -> None:
    archive, checksums_name, others, tag = LAYOUTS[layout]
    pinned = tools.load_manifest().tools[layout].download
    assert pinned is not None
    assert pinned.checksums is not None
    assert (pinned.url.rsplit("/", 1)[1], pinned.checksums.rsplit("/", 1)[1]) == (archive, checksums_name)
    assert pinned.checksums.rsplit("/", 1)[0] == pinned.url.rsplit("/", 1)[0]  # beside the asset, same tag
    url, checksums = _release_with_checksums_txt(upstream, None, archive, checksums_name, others, tag)
    manifest = write_manifest(tmp_path / "tools.toml", url, tools.UNVERIFIED, member="faketool", checksums=checksums)
    status = tools.obtain("faketool", manifest)
    assert (status.source, status.found) == ("download", "v1.2.3"), status.notes
    tools.remove("faketool")
    bad = tmp_path / "bad"
    bad.mkdir()
    url, checksums = _release_with_checksums_txt(upstream, "0" * 64, archive, checksums_name, others, tag + "-bad")
    manifest = write_manifest(bad / "tools.toml", url, tools.UNVERIFIED, member="faketool", checksums=checksums)
    status = tools.obtain("faketool", manifest)
    assert status.path is None
    assert any("sha256 mismatch" in n for n in status.notes), status.notes


def test_download_verified_against_checksums_txt(upstream: _Upstream, cache_home: Path, tmp_path: Path) -> None:
    url, checksums = _release_with_checksums_txt(upstream, None)
    manifest = write_manifest(tmp_path / "tools.toml", url, tools.UNVERIFIED, member="faketool", checksums=checksums)
    status = tools.obtain("faketool", manifest)
    assert (status.source, status.found) == ("download", "v1.2.3"), status.notes


def test_a_mismatch_with_the_published_checksum_installs_nothing(
    upstream: _Upstream, cache_home: Path, tmp_path: Path
) -> None:
    url, checksums = _release_with_checksums_txt(upstream, "0" * 64)
    manifest = write_manifest(tmp_path / "tools.toml", url, tools.UNVERIFIED, member="faketool", checksums=checksums)
    status = tools.obtain("faketool", manifest)
    assert status.path is None
    assert any("sha256 mismatch" in n and "upstream checksum file" in n for n in status.notes), status.notes
    assert not tools.binary_path(manifest.tools["faketool"]).exists()


def test_a_checksum_file_without_our_asset_is_refused_before_the_download(
    upstream: _Upstream, cache_home: Path, tmp_path: Path
) -> None:
    url, checksums = _release_with_checksums_txt(upstream, None)
    other = url.replace("linux_amd64", "linux_s390x")
    manifest = write_manifest(tmp_path / "tools.toml", other, tools.UNVERIFIED, checksums=checksums)
    status = tools.obtain("faketool", manifest)
    assert status.path is None
    assert any("lists no sha256" in n for n in status.notes), status.notes
    assert all(r.endswith("checksums.txt") for r in upstream.requests)


def test_a_tool_without_a_version_flag_is_read_from_its_go_build_info(tmp_path: Path) -> None:
    """karpenter-kwok has no --version: the version is the main module's, as Go records it in the binary."""
    spec = tools.load_manifest().tools["karpenter-kwok"]
    assert spec.version_from == "buildinfo"
    binary = tmp_path / "karpenter-kwok"
    # What `go version -m` prints comes from these bytes of the binary; running it is never needed.
    binary.write_bytes(b"\x7fELF...path\tsigs.k8s.io/karpenter/kwok\nmod\tsigs.k8s.io/karpenter\tv1.15.0\th1:x=\n")
    assert tools.found_version(spec, binary) == "v1.15.0"
    binary.write_bytes(b"\x7fELF...mod\tsigs.k8s.io/karpenter\tv1.14.3\th1:x=\n")
    assert not tools.versions_match(spec.version, tools.found_version(spec, binary))
    binary.write_bytes(b"\x7fELF no build info")
    assert tools.found_version(spec, binary) is None
    real = tools.cached("karpenter-kwok")
    if real is not None:  # the real build reports its pinned version the same way
        assert tools.found_version(spec, real) == spec.version


def test_a_tool_can_build_with_its_own_go_toolchain() -> None:
    """sigs.k8s.io/karpenter needs Go >= 1.26.9: only its build gets GOTOOLCHAIN=go1.27.3, the others keep [go]."""
    manifest = tools.load_manifest()
    build = manifest.tools["karpenter-kwok"].build
    assert build is not None
    assert build.toolchain == "go1.27.3"
    assert tools.go_env(manifest, build.toolchain)["GOTOOLCHAIN"] == "go1.27.3"
    assert tools.go_env(manifest)["GOTOOLCHAIN"] == manifest.go_toolchain == "local"
    assert all(t.build is None or t.build.toolchain is None for n, t in manifest.tools.items() if n != "karpenter-kwok")

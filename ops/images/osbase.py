"""The OS base image: upstream debian:<release>-slim, or a debootstrapped rootfs imported offline."""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from pathlib import Path

from ops.core import IMAGE_PREFIX, cache_root, console
from ops.images.docker import ImageError, fingerprint, image_exists, run
from ops.images.versions import load_versions

ROOTFS_DIR = cache_root() / "rootfs"


DEBOOTSTRAP_INCLUDE = ("python3", "python3-venv", "ca-certificates")


def debian_mirror(release: str) -> str:
    """The Debian mirror apt on this host is configured with (deb822 or one-line sources)."""
    sources = sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    for path in sources:
        for stanza in path.read_text().split("\n\n"):
            fields = {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in stanza.splitlines()) if k and v}
            if release in fields.get("Suites", "").split() and "URIs" in fields:
                return fields["URIs"].split()[0]
    legacy = Path("/etc/apt/sources.list")
    if legacy.is_file():
        for line in legacy.read_text().splitlines():
            m = re.match(rf"deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+{release}\s", line)
            if m:
                return m.group(1)
    return "http://deb.debian.org/debian"


def offline_os_image() -> str:
    v = load_versions()
    return f"{IMAGE_PREFIX}/debian:{v['os']['debian_release']}-minbase"


def os_image(offline: bool) -> str:
    """The image the base Dockerfiles start FROM."""
    return offline_os_image() if offline else str(load_versions()["os"]["upstream_image"])


def rootfs_tarball(release: str) -> Path:
    """Cached debootstrap rootfs, keyed by release and package set, outside the checkout."""
    key = fingerprint(release, *DEBOOTSTRAP_INCLUDE)
    return ROOTFS_DIR / f"debian-{release}-minbase-{key}.tar"


def ensure_os_base(offline: bool, *, force: bool = False) -> str:
    """Make the OS base image present locally; offline: debootstrap once per release (cached), then docker import."""
    ref = os_image(offline)
    if image_exists(ref) and not force:
        console.print(f"[green]OS base present[/green] {ref}")
        return ref
    if not offline:
        run(["docker", "pull", ref])
        return ref
    release = str(load_versions()["os"]["debian_release"])
    tarball = rootfs_tarball(release)
    if force or not tarball.is_file():
        debootstrap(release, tarball)
    labels = {
        "org.opencontainers.image.title": f"debian {release} minbase (debootstrap)",
        "org.opencontainers.image.description": "debootstrap --variant=minbase " + " ".join(DEBOOTSTRAP_INCLUDE),
    }
    changes: list[str] = []
    for k, v in labels.items():
        changes += ["--change", f'LABEL {k}="{v}"']
    changes += ["--change", "ENV LANG=C.UTF-8", "--change", 'CMD ["/bin/bash"]']
    run(["docker", "import", *changes, str(tarball), ref])
    return ref


def debootstrap(release: str, tarball: Path) -> None:
    """Build a minbase rootfs with Debian's python3 from the configured mirror and tar it to `tarball`."""
    if shutil.which("debootstrap") is None:
        raise ImageError("debootstrap is missing: apt-get install -y debootstrap (or run .ci/docker-engine.sh)")
    tarball.parent.mkdir(parents=True, exist_ok=True)
    mirror = debian_mirror(release)
    with tempfile.TemporaryDirectory(prefix="rootfs-", dir=tarball.parent) as tmp:
        rootfs = Path(tmp) / "rootfs"
        started = time.monotonic()
        run(
            [
                "nice",
                "-n",
                "19",
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(DEBOOTSTRAP_INCLUDE)}",
                release,
                str(rootfs),
                mirror,
            ]
        )
        # Drop what a container never uses: apt lists/caches, docs, man pages, locales but C.
        for sub in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man", "usr/share/info"):
            target = rootfs / sub
            if target.is_dir():
                for child in target.iterdir():
                    if child.is_symlink() or child.is_file():
                        child.unlink()
                    elif child.is_dir() and child.name != "partial":
                        shutil.rmtree(child)
        partial = tarball.with_suffix(".partial")
        run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(partial), "."])
        partial.rename(tarball)
        console.print(f"debootstrap {release}: {time.monotonic() - started:.0f}s -> {tarball}")

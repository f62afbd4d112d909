"""The CPU base's wheel path against a PyTorch-style CPU index on 127.0.0.1 (the real one is unreachable here)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.images import lock as image_lock
from ops.images import versions as image_versions


def make_wheel(folder: Path, name: str, version: str) -> Path:
    """A minimal valid wheel (pip download checks its metadata against the file name)."""
    path = folder / f"{name}-{version}-cp311-cp311-manylinux_2_28_x86_64.whl"
    dist_info = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{dist_info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        tag = "cp311-cp311-manylinux_2_28_x86_64"
        zf.writestr(f"{dist_info}/WHEEL", f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: false\nTag: {tag}\n")
        zf.writestr(f"{dist_info}/RECORD", "")
    return path


@pytest.fixture
def cpu_index(tmp_path: Path) -> Iterator[str]:
    """A PEP 503 index with torch and torchvision `+cpu` wheels, on a loopback port."""
    root = tmp_path / "index"
    for name, version in image_versions.cpu_pins().items():
        project = root / name
        project.mkdir(parents=True)
        wheel = make_wheel(project, name, version)
        (project / "index.html").write_text(f'<html><body><a href="{wheel.name}">{wheel.name}</a></body></html>')
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_reachability_probe(cpu_index: str) -> None:
    assert image_lock.cpu_index_reachable(cpu_index)
    assert not image_lock.cpu_index_reachable("http://127.0.0.1:9/", timeout_s=1.0)


def test_cpu_wheels_are_downloaded_and_hash_pinned(cpu_index: str, tmp_path: Path) -> None:
    wheelhouse = tmp_path / "wheelhouse"
    hashes = image_lock.download_cpu_wheels(cpu_index, wheelhouse)
    assert set(hashes) == {"torch", "torchvision"}
    for name, version in image_versions.cpu_pins().items():
        (wheel,) = wheelhouse.glob(f"{name}-{version}-*.whl")
        assert hashes[name] == [hashlib.sha256(wheel.read_bytes()).hexdigest()]

    blocks = image_lock.split_requirements(image_lock.export_requirements())
    text = image_lock.render_cpu_index_requirements(blocks, hashes)
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith((" ", "#"))]
    names = {image_lock.normalize(ln.split("==")[0]) for ln in lines}
    assert f"torch=={image_versions.cpu_pins()['torch']} --hash=sha256:{hashes['torch'][0]}" in lines
    assert {"numpy", "pillow"} <= names  # torchvision's CPU-side dependencies stay
    assert not {n for n in names if n.startswith(("nvidia-", "cuda-")) or n == "triton"}
    # Every requirement is hash-pinned, so the image's `pip install --require-hashes` accepts the file.
    for name, block in image_lock.split_requirements(text).items():
        assert "--hash=sha256:" in block, name

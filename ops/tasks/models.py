"""invoke tasks for model bundles: build the demo bundles, convert torchvision weights into a bundle."""

from __future__ import annotations

import json
from pathlib import Path

from invoke import Collection, Context

from ops.core import cache_root
from ops.core import out as console
from ops.tasks.common import ops_task


@ops_task(help={"out": "Folder for the bundles (default: models/ in the repository)."})
def build(c: Context, out: str = "") -> None:
    """Build the demo bundles (image: shapes CNN, text: MiniLM + linear head) deterministically on CPU; idempotent."""
    from ops.models import DEFAULT_OUT, build_all

    with console.status("building demo bundles") as status:

        def progress(message: str) -> None:
            status.update(message)
            console.log(message)

        paths = build_all(Path(out) if out else DEFAULT_OUT, progress=progress)
    for name, path in paths.items():
        info = json.loads((path / "build-info.json").read_text())
        console.print(f"[green]{name}[/] {path}  accuracy {info['accuracy']:.3f}  sha256 {info['weights_sha256'][:12]}")


@ops_task(
    help={
        "arch": "torchvision architecture (resnet50, resnet18, mobilenet_v3_small).",
        "weights": "Local torchvision .pth state dict; omit to download torchvision's ImageNet weights (internet).",
        "out": "Bundle folder to write.",
        "version": "Version string recorded in the bundle.",
        "sha256": "Full sha256 to pin the downloaded weights (torchvision's file-name prefix is always checked).",
    }
)
def convert(
    c: Context,
    arch: str = "resnet50",
    weights: str = "",
    out: str = "",
    version: str = "imagenet1k-v1",
    sha256: str = "",
) -> None:
    """Convert torchvision ImageNet weights into a safetensors bundle (the production bundle format)."""
    import torchvision

    from ops.models import DEFAULT_OUT, convert_torchvision, download_torchvision_weights

    if weights:
        categories = list(torchvision.models.get_model_weights(arch).DEFAULT.meta["categories"])
        path = Path(weights)
    else:
        path, categories = download_torchvision_weights(arch, cache_root() / "weights", sha256 or None)
    target = Path(out) if out else DEFAULT_OUT / f"{arch}-imagenet"
    convert_torchvision(path, target, architecture=arch, labels=categories, version=version)
    console.print(f"[green]bundle written[/] {target}")


ns = Collection("models", build, convert)

"""Preprocessing cost per image: JPEG decode, resize + center crop, normalize, on CPU (the service's code) and GPU."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from ops.perf.bodies import body

STAGES = ("decode", "resize", "normalize", "full")
# ops.perf.bodies: a typical web photo (500x375) and a phone upload (4000x3000); the service resizes the short side
# to 256 and crops 224 for resnet50-sized bundles.
BODIES = ("photo", "large")
RESIZE, CROP = 256, 224
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def cpu_stages(name: str) -> dict[str, Callable[[], Any]]:
    """The service's own CPU path (image_classifier.model): Pillow decode with draft, resize/crop, normalize."""
    from image_classifier.model import ImageSpec, decode_image, resize_and_crop  # type: ignore[import-untyped, unused-ignore]

    data = body(name).jpeg
    spec = ImageSpec(CROP, RESIZE, MEAN, STD)
    formats = frozenset({"JPEG", "PNG", "WEBP"})
    mean = torch.tensor(MEAN).view(3, 1, 1)
    std = torch.tensor(STD).view(3, 1, 1)

    def decode() -> Any:
        return decode_image(
            data,
            allowed_formats=formats,
            max_pixels=40_000_000,
            min_side=8,
            draft_size=RESIZE,
        )

    image = decode()
    item = resize_and_crop(image, spec)

    def normalize(x: torch.Tensor = item) -> torch.Tensor:
        return x.float().div_(255).sub_(mean).div_(std)

    return {
        "decode": decode,
        "resize": lambda: resize_and_crop(image, spec),
        "normalize": normalize,
        "full": lambda: normalize(resize_and_crop(decode(), spec)),
    }


def cuda_stages(name: str) -> dict[str, Callable[[], Any]]:
    """nvJPEG decode and tensor resize/normalize on the GPU, each synchronized inside the call."""
    import torchvision.transforms.v2.functional as tvf  # type: ignore[import-untyped, unused-ignore]
    from torchvision.io import decode_jpeg  # type: ignore[import-untyped, unused-ignore]

    data = torch.frombuffer(bytearray(body(name).jpeg), dtype=torch.uint8)
    mean = torch.tensor(MEAN, device="cuda").view(3, 1, 1)
    std = torch.tensor(STD, device="cuda").view(3, 1, 1)

    def synced(fn: Callable[[], Any]) -> Callable[[], Any]:
        def call() -> Any:
            out = fn()
            torch.cuda.synchronize()
            return out

        return call

    def decode() -> torch.Tensor:
        return decode_jpeg(data, device="cuda")

    def resize(x: torch.Tensor) -> torch.Tensor:
        return tvf.center_crop(tvf.resize(x, [RESIZE], antialias=True), [CROP])

    def normalize(x: torch.Tensor) -> torch.Tensor:
        return x.float().div_(255).sub_(mean).div_(std)

    image = decode()
    item = resize(image)
    return {
        "decode": synced(decode),
        "resize": synced(lambda: resize(image)),
        "normalize": synced(lambda: normalize(item)),
        "full": synced(lambda: normalize(resize(decode()))),
    }


@pytest.fixture(scope="module")
def stages_by_device() -> dict[str, Callable[[str], dict[str, Callable[[], Any]]]]:
    return {"cpu": cpu_stages, "cuda": cuda_stages}


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("name", BODIES)
def test_preprocess(benchmark: Any, device: str, name: str, stage: str, stages_by_device: dict[str, Any]) -> None:
    """Time one image through one preprocessing stage."""
    call = stages_by_device[device](name)[stage]
    call()  # warm: first nvJPEG handle, allocator
    benchmark.group = f"preprocess {device}"
    benchmark.extra_info.update(
        kind="preprocess",
        device=device,
        stage=stage,
        image=body(name).label,
        crop=CROP,
    )
    out = benchmark(call)
    assert out is not None
    benchmark.extra_info["images_per_s"] = round(1 / benchmark.stats.stats.median, 2)

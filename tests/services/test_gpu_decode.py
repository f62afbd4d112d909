"""GPU JPEG decode: which GPUs and which JPEGs take it (CPU), its fallbacks and geometry (CPU, with torchvision's CPU
decoder standing in for nvJPEG), and parity with the Pillow path on a real GPU (skipped without CUDA)."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from image_classifier import gpudecode
from image_classifier.demo import LABELS, render_sample
from image_classifier.model import (
    EncodedImage,
    ImageClassifier,
    ImageSpec,
    decode_image,
    resize_and_crop,
    resize_plan,
)
from image_classifier.settings import Settings
from ops.perf.bodies import photo_jpeg as sample_jpeg
from serving.errors import InvalidImage
from testkit import encode

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def cpu_model(bundles: dict[str, Path]) -> ImageClassifier:
    """The demo model on the CPU, with GPU decode forced on: preprocess then decides as an engine with it would."""
    model = ImageClassifier(Settings(model_uri=str(bundles["image-demo"]), device="cpu", gpu_decode_max_pixels=10**6))
    model.load()
    assert model.gpu_decode is False, "GPU decode must stay off on the CPU"
    model.gpu_decode = True
    return model


def photo(width: int = 500, height: int = 375, seed: int = 0) -> Image.Image:
    return Image.open(io.BytesIO(sample_jpeg(width, height, seed))).convert("RGB")


def exif_with_orientation(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[gpudecode.EXIF_ORIENTATION] = orientation
    return exif.tobytes()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("NVIDIA H200", True),
        ("NVIDIA H100 80GB HBM3", True),
        ("NVIDIA A100-SXM4-80GB", True),
        ("NVIDIA A30", True),
        ("NVIDIA GH200 480GB", True),
        ("Tesla T4", False),
        ("NVIDIA A10G", False),
        ("NVIDIA L4", False),
        ("NVIDIA GeForce RTX 4090", False),
        ("NVIDIA RTX A1000", False),
    ],
)
def test_hardware_jpeg_engines_are_known_by_gpu_model(name: str, expected: bool) -> None:
    assert gpudecode.has_hardware_jpeg(name) is expected


# Each case: the JPEG (or other format) bytes, and whether the GPU path takes them.
ELIGIBILITY: dict[str, tuple[Callable[[], bytes], bool]] = {
    "baseline 4:2:0": (lambda: encode(photo()), True),
    "baseline 4:4:4": (lambda: encode(photo(), subsampling=0), True),
    "baseline 4:2:2": (lambda: encode(photo(), subsampling=1), True),
    "grayscale": (lambda: encode(photo().convert("L")), True),
    "EXIF orientation 1": (lambda: encode(photo(), exif=exif_with_orientation(1)), True),
    "EXIF orientation 6 (rotated)": (lambda: encode(photo(), exif=exif_with_orientation(6)), False),
    "progressive": (lambda: encode(photo(), progressive=True), False),
    "CMYK": (lambda: encode(Image.new("CMYK", (300, 200), (10, 20, 30, 40))), False),
    "trailing bytes after the end": (lambda: encode(photo()) + b"trailer", False),
    "over gpu_decode_max_pixels": (lambda: encode(photo(1200, 900)), False),
    "PNG": (lambda: encode(photo(), "PNG"), False),
    "WebP": (lambda: encode(photo(), "WEBP"), False),
}


@pytest.mark.parametrize("case", ELIGIBILITY, ids=list(ELIGIBILITY))
def test_preprocess_sends_only_eligible_jpegs_to_the_gpu(cpu_model: ImageClassifier, case: str) -> None:
    make, on_gpu = ELIGIBILITY[case]
    data = make()
    item = cpu_model.preprocess(data)
    if on_gpu:
        assert isinstance(item, EncodedImage)
        assert item.data is data
        assert (item.width, item.height) == Image.open(io.BytesIO(data)).size
    else:
        assert isinstance(item, torch.Tensor)
        assert tuple(item.shape) == (3, cpu_model.spec.input_size, cpu_model.spec.input_size)


def test_the_header_checks_still_come_first(cpu_model: ImageClassifier) -> None:
    """A truncated baseline JPEG is no EncodedImage: it lacks its end marker, so the CPU path refuses it (400)."""
    with pytest.raises(InvalidImage):
        cpu_model.preprocess(encode(photo())[:-2000])
    with pytest.raises(InvalidImage, match="at least"):
        cpu_model.preprocess(encode(Image.new("RGB", (4, 300))))


def test_frame_marker_reads_the_frame_type() -> None:
    assert gpudecode.frame_marker(encode(photo())) == 0xC0
    assert gpudecode.frame_marker(encode(photo(), progressive=True)) == 0xC2
    assert gpudecode.frame_marker(b"\xff\xd8\xff\xe0\x00") is None
    assert gpudecode.frame_marker(encode(photo(), "PNG")) is None


def cpu_decoder(calls: list[int]) -> gpudecode.Decoder:
    """torchvision's CPU JPEG decoder, standing in for nvJPEG: same call, same failure on a bad image."""

    def decode(encoded: list[torch.Tensor]) -> list[torch.Tensor]:
        calls.append(len(encoded))
        out: list[torch.Tensor] = decode_jpeg(encoded, mode=ImageReadMode.RGB, device="cpu")
        return out

    return decode


def test_a_bad_image_fails_only_itself_in_the_batch_decode() -> None:
    good = encode(photo())
    bad = b"\xff\xd8\xff\xdb" + b"\x00" * 300
    calls: list[int] = []
    decoded = gpudecode.decode_each(gpudecode.as_tensors([good, bad, good]), cpu_decoder(calls))
    assert calls == [3, 1, 1, 1], "one call for the batch, then one per image"
    assert decoded[1] is None
    assert decoded[0] is not None
    assert decoded[2] is not None
    assert torch.equal(decoded[0], decoded[2])
    calls.clear()
    assert all(d is not None for d in gpudecode.decode_each(gpudecode.as_tensors([good, good]), cpu_decoder(calls)))
    assert calls == [2]


def test_as_tensors_copies_the_bytes() -> None:
    shared = bytearray(encode(photo()))
    (tensor,) = gpudecode.as_tensors([memoryview(shared)])
    shared[:] = b"\x00" * len(shared)
    assert bytes(tensor[:2].tolist()) == b"\xff\xd8", "the tensor must not be a view of the caller's buffer"


def test_device_resize_and_crop_match_the_pillow_path() -> None:
    """The GPU path's geometry (resize_plan + resize_and_crop_batch) on torchvision-decoded pixels, here on the
    CPU, against the service's Pillow path (draft decode included) on the same bytes: same sizes, pixels within half
    a level on average (measured: 0.14-0.17, 0.36 for the 4000x3000 that Pillow decodes at 1/8 scale)."""
    spec = ImageSpec(224, 256, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    datas = [sample_jpeg(500, 375, seed=1), sample_jpeg(375, 500, seed=2), sample_jpeg(4000, 3000, seed=3)]
    datas.append(encode(render_sample(LABELS[0], 7, size=300)))
    datas.append(encode(photo(640, 480).convert("L")))
    decoded = decode_jpeg(gpudecode.as_tensors(datas), mode=ImageReadMode.RGB, device="cpu")
    plans = [resize_plan(d.shape[2], d.shape[1], spec) for d in decoded]
    on_device = gpudecode.resize_and_crop_batch(decoded, plans, spec.input_size)
    for data, tensor in zip(datas, on_device, strict=True):
        pillow = resize_and_crop(
            decode_image(
                data,
                allowed_formats=frozenset({"JPEG"}),
                max_pixels=40_000_000,
                min_side=8,
                draft_size=spec.resize_size,
            ),
            spec,
        )  # service
        assert tensor.shape == pillow.shape == (3, 224, 224)
        assert tensor.dtype == torch.uint8
        difference = (tensor.float() - pillow.float()).abs().mean()
        assert difference <= 0.5, f"mean absolute difference {difference:.2f} levels"


def test_mixed_batches_keep_their_order(cpu_model: ImageClassifier) -> None:
    """Tensors and EncodedImages in any mix come back in the items' order (EncodedImages decoded by torchvision's
    CPU decoder here); a non-JPEG EncodedImage falls back to the CPU path, a broken one raises InvalidImage."""
    datas = [encode(render_sample(label, 40 + i, size=260)) for i, label in enumerate(LABELS)]
    tensors = [resize_and_crop(cpu_model.decode(d), cpu_model.spec) for d in datas]
    encoded = [EncodedImage(d, 260, 260) for d in datas]
    mixed: list[torch.Tensor | EncodedImage] = [tensors[0], encoded[1], tensors[2], encoded[3]]
    reference = cpu_model.predict(tensors)
    result = cpu_model.predict(mixed)
    assert result.shape == reference.shape
    assert torch.equal(result.argmax(1), reference.argmax(1))
    assert torch.allclose(result, reference, atol=2e-2)
    png = EncodedImage(encode(render_sample(LABELS[2], 42, size=260), "PNG"), 260, 260)
    assert torch.allclose(cpu_model.predict([tensors[0], png])[1], cpu_model.predict([tensors[2]])[0], atol=1e-5)
    broken = EncodedImage(b"\xff\xd8\xff\xdb" + b"\x00" * 300, 260, 260)
    with pytest.raises(InvalidImage):
        cpu_model.predict([tensors[0], broken, encoded[1]])


# -- on a real GPU -------------------------------------------------------------------------------------------------


def parity_images() -> tuple[dict[str, bytes], dict[str, bytes]]:
    """Photo-like bodies (the benchmark's 500x375, a 4000x3000 upload, a grayscale), and one demo image per label
    scaled up to 500x375 (what the demo model knows, so its top-1 means something)."""
    photos = {
        "photo 500x375": sample_jpeg(500, 375, seed=5),
        "photo 375x500": sample_jpeg(375, 500, seed=6),
        "upload 4000x3000": sample_jpeg(4000, 3000, seed=7),
        "grayscale 640x480": encode(photo(640, 480, seed=8).convert("L")),
    }
    demos = {
        f"demo {label}": encode(render_sample(label, 11 + i, size=200).resize((500, 375), Image.Resampling.BICUBIC))
        for i, label in enumerate(LABELS)
    }
    return photos, demos


# Mean absolute difference, in levels of 255, between the CPU (libjpeg-turbo, draft, Pillow bilinear) and GPU
# (nvJPEG, antialiased bilinear) preprocessing of one image. Measured on the CPU with torchvision's decoder in
# nvJPEG's place: 0.14-0.17 levels, 0.36 for the 4000x3000 upload (Pillow decodes it at 1/8 scale, the GPU whole);
# the bound leaves room for nvJPEG's own IDCT and chroma upsampling.
PARITY_MEAN_ABS_LEVELS = 5.0
# Mean share of the top-k classes both paths agree on. The demo model is trained (top-1 on its own kind of image);
# a random-init resnet50 answers nearly the same for every input, so its top-5 is a weak, but cheap, check.
PARITY_TOP1_DEMO = 0.75
PARITY_TOP5_RESNET50 = 0.8


@needs_cuda
@pytest.mark.gpu
def test_gpu_preprocessing_matches_the_cpu_path(bundles: dict[str, Path]) -> None:
    from ops.perf.benchmodels import ensure_resnet50_bundle

    photos, demos = parity_images()
    for bundle, top, images, bound in (
        (bundles["image-demo"], 1, demos, PARITY_TOP1_DEMO),
        (ensure_resnet50_bundle(), 5, {**photos, **demos}, PARITY_TOP5_RESNET50),
    ):
        gpu = ImageClassifier(Settings(model_uri=str(bundle), device="cuda", max_batch_size=16))
        gpu.load()
        assert gpu.gpu_decode, f"GPU decode should be on for {torch.cuda.get_device_name()}: {gpu.notes}"
        cpu = ImageClassifier(Settings(model_uri=str(bundle), device="cpu"))
        cpu.load()
        cpu_items = [cpu.preprocess(d) for d in images.values()]
        gpu_items = [gpu.preprocess(d) for d in images.values()]
        assert all(isinstance(i, EncodedImage) for i in gpu_items)
        with torch.inference_mode():
            gpu_pixels = gpu._decode_on_device(gpu_items)  # type: ignore[arg-type]
        figures = {}
        for name, cpu_item, gpu_item in zip(images, cpu_items, gpu_pixels.cpu(), strict=True):
            assert isinstance(cpu_item, torch.Tensor)
            figures[name] = round(float((cpu_item.float() - gpu_item.float()).abs().mean()), 3)
        print(f"mean abs pixel difference, CPU vs GPU preprocessing, levels of 255: {figures}")
        assert max(figures.values()) <= PARITY_MEAN_ABS_LEVELS, figures
        on_cpu = cpu.predict(cpu_items).topk(top, dim=1).indices
        on_gpu = gpu.predict(gpu_items).topk(top, dim=1).indices.cpu()
        overlap = [len(set(a.tolist()) & set(b.tolist())) / top for a, b in zip(on_cpu, on_gpu, strict=True)]
        print(f"top-{top} overlap, CPU vs GPU preprocessing, {gpu.name}: {dict(zip(images, overlap, strict=True))}")
        assert sum(overlap) / len(overlap) >= bound, overlap


@needs_cuda
@pytest.mark.gpu
def test_gpu_decode_isolates_bad_images_and_serves_every_batch_size(bundles: dict[str, Path]) -> None:
    model = ImageClassifier(Settings(model_uri=str(bundles["image-demo"]), device="cuda", max_batch_size=16))
    model.load()
    assert model.gpu_decode, model.notes
    assert model.graphs is not None, model.notes
    assert model.describe()["gpu_decode"] is True
    good = [model.preprocess(encode(render_sample(label, 60 + i, size=300))) for i, label in enumerate(LABELS * 4)]
    assert all(isinstance(i, EncodedImage) for i in good)
    for n in range(1, 17):
        assert model.predict(good[:n]).shape == (n, len(LABELS))
    png_bytes = encode(render_sample(LABELS[0], 61, size=300), "PNG")
    png = EncodedImage(png_bytes, 300, 300)
    alone = model.predict([model.preprocess(png_bytes)])
    assert torch.allclose(model.predict([good[0], png, good[1]])[1], alone[0], atol=2e-3), "PNG: CPU fallback"
    broken = EncodedImage(b"\xff\xd8\xff\xdb" + b"\x00" * 300, 300, 300)
    with pytest.raises(InvalidImage):
        model.predict([good[0], broken, good[1]])
    assert model.predict(good[:3]).shape == (3, len(LABELS)), "the GPU decoder still works after a failure"

"""Demo bundles meet their accuracy bars, and torchvision weights convert into bundles the service serves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision

from image_classifier.model import ImageClassifier, build_network, resize_and_crop
from image_classifier.settings import Settings
from ops.models import convert_torchvision, load_text_dataset, stratified_split
from serving.bundle import read_bundle


def test_image_demo_bundle_meets_its_accuracy_bar(bundles: dict[str, Path]) -> None:
    info = json.loads((bundles["image-demo"] / "build-info.json").read_text())
    assert info["accuracy"] >= 0.95
    assert info["test_images"] >= 400
    bundle = read_bundle(bundles["image-demo"])
    assert bundle.sha256 == info["weights_sha256"]
    assert bundle.config.architecture in torchvision.models.list_models()


def test_text_demo_bundle_meets_its_accuracy_bar(bundles: dict[str, Path]) -> None:
    info = json.loads((bundles["text-demo"] / "build-info.json").read_text())
    assert info["accuracy"] >= 0.90
    assert info["test_texts"] >= 40


def test_text_dataset_is_large_balanced_and_split_without_overlap() -> None:
    rows = load_text_dataset()
    labels = [label for _, label in rows]
    assert len(rows) >= 200
    assert set(labels) == {"ok", "spam", "harassment", "contact_info"}
    assert min(labels.count(x) for x in set(labels)) >= 40
    assert len({text.lower() for text, _ in rows}) == len(rows), "duplicate texts would leak into the held-out set"
    train, test = stratified_split(rows, 0.2, seed=1)
    assert not set(train) & set(test)
    assert len(train) + len(test) == len(rows)


def test_torchvision_weights_convert_to_a_bundle_that_serves_identically(tmp_path: Path) -> None:
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    weights = tmp_path / "resnet18-local.pth"
    torch.save(reference.state_dict(), weights)  # what torchvision publishes: a plain state dict
    labels = [f"class-{i}" for i in range(10)]
    bundle_dir = convert_torchvision(weights, tmp_path / "bundle", architecture="resnet18", labels=labels, version="t1")

    model = ImageClassifier(Settings(model_uri=str(bundle_dir), device="cpu"))
    model.load()
    image = torch.randint(0, 256, (3, 224, 224), dtype=torch.uint8)
    served = model.predict([image])
    with torch.inference_mode():
        x = (image.float().unsqueeze(0) / 255 - model.mean) / model.std
        expected = torch.softmax(reference(x), dim=1)
    assert torch.allclose(served, expected, atol=1e-5)
    assert model.postprocess(served)[0][0]["label"] == labels[int(expected.argmax())]


def test_mismatched_weights_are_refused(tmp_path: Path) -> None:
    weights = tmp_path / "wrong.pth"
    torch.save(build_network("resnet18", 3).state_dict(), weights)
    with pytest.raises(RuntimeError, match="size mismatch"):
        convert_torchvision(weights, tmp_path / "b", architecture="resnet18", labels=["a", "b"], version="x")


def test_preprocessing_resizes_any_aspect_ratio_to_the_input_size() -> None:
    from PIL import Image

    from image_classifier.model import IMAGENET_MEAN, IMAGENET_STD, ImageSpec

    spec = ImageSpec(32, 36, IMAGENET_MEAN, IMAGENET_STD)
    for size in [(500, 40), (40, 500), (33, 33), (4000, 3000)]:
        tensor = resize_and_crop(Image.new("RGB", size, (10, 200, 30)), spec)
        assert tensor.shape == (3, 32, 32)
        assert tensor.dtype == torch.uint8
        assert tensor[:, 16, 16].tolist() == [10, 200, 30]


def test_cuda_request_falls_back_to_cpu_and_says_so(bundles: dict[str, Path]) -> None:
    model = ImageClassifier(Settings(model_uri=str(bundles["image-demo"]), device="cuda", precision="fp16"))
    if torch.cuda.is_available():
        assert model.device.type == "cuda"
        assert model.notes == []
    else:
        assert model.device.type == "cpu"
        assert model.precision == "fp32"
        assert any("falling back to CPU" in note for note in model.notes)

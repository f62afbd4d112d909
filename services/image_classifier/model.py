"""The image classifier model: torchvision network + bundle weights, Pillow decoding, device-side normalization."""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torchvision
from PIL import Image, ImageOps, UnidentifiedImageError

from image_classifier.settings import Settings
from serving.errors import InvalidImage, ModelLoadError
from serving.model import DTYPES, Model

log = logging.getLogger(__name__)

# The architectures a bundle may name; all are plain torchvision constructors (weights come from the bundle).
ARCHITECTURES = {
    "shufflenet_v2_x0_5": torchvision.models.shufflenet_v2_x0_5,
    "mobilenet_v3_small": torchvision.models.mobilenet_v3_small,
    "resnet18": torchvision.models.resnet18,
    "resnet50": torchvision.models.resnet50,
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ImageSpec:
    """How a bundle wants its input: resize the short side, center-crop, normalize."""

    input_size: int
    resize_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_bundle(cls, extra: dict[str, Any]) -> ImageSpec:
        input_size = int(extra.get("input_size", 224))
        return cls(
            input_size=input_size,
            resize_size=int(extra.get("resize_size", round(input_size * 256 / 224))),
            mean=tuple(extra.get("mean", IMAGENET_MEAN)),
            std=tuple(extra.get("std", IMAGENET_STD)),
        )


def build_network(architecture: str, num_classes: int) -> torch.nn.Module:
    """An untrained torchvision network of the bundle's architecture, with the bundle's number of classes."""
    try:
        constructor = ARCHITECTURES[architecture]
    except KeyError:
        raise ModelLoadError(f"unknown architecture {architecture!r}; known: {sorted(ARCHITECTURES)}") from None
    network: torch.nn.Module = constructor(weights=None, num_classes=num_classes)
    return network


def resize_and_crop(image: Image.Image, spec: ImageSpec) -> torch.Tensor:
    """Short side to `resize_size`, center crop to `input_size`; returns a uint8 CHW tensor (normalized later)."""
    width, height = image.size
    scale = spec.resize_size / min(width, height)
    new_size = (max(spec.input_size, round(width * scale)), max(spec.input_size, round(height * scale)))
    image = image.resize(new_size, Image.Resampling.BILINEAR, reducing_gap=3.0)
    left = (new_size[0] - spec.input_size) // 2
    top = (new_size[1] - spec.input_size) // 2
    image = image.crop((left, top, left + spec.input_size, top + spec.input_size))
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def decode_image(
    data: bytes, *, allowed_formats: frozenset[str], max_pixels: int, min_side: int, draft_size: int | None = None
) -> Image.Image:
    """Decode untrusted bytes: allowed formats only, size checked before decoding pixels, EXIF orientation applied."""
    if not data:
        raise InvalidImage("the image is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.format not in allowed_formats:
                raise InvalidImage(f"image format {image.format} is not allowed; send one of {sorted(allowed_formats)}")
            width, height = image.size
            if width * height > max_pixels:
                raise InvalidImage(f"image is {width}x{height}: more than the {max_pixels} pixel limit")
            if min(width, height) < min_side:
                raise InvalidImage(f"image is {width}x{height}: both sides must be at least {min_side} pixels")
            if draft_size and image.format == "JPEG":
                image.draft("RGB", (draft_size, draft_size))  # let libjpeg decode at reduced scale
            image.load()
            return ImageOps.exif_transpose(image).convert("RGB")
    except InvalidImage:
        raise
    # Fixed messages for the client: Pillow's own name internals such as `<_io.BytesIO object at 0x...>`.
    except UnidentifiedImageError as exc:
        raise InvalidImage("not a decodable image", detail=str(exc)) from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidImage(f"image has more than {max_pixels} pixels", detail=str(exc)) from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:  # truncated or corrupt data
        raise InvalidImage("corrupt or truncated image", detail=f"{type(exc).__name__}: {exc}") from exc


class TopK(list[dict[str, Any]]):
    """One image's top-k predictions, as /v1/predict answers them; `probabilities` keeps its whole softmax row (in
    label order) for the Open Inference Protocol's outputs (serving.v2), at no extra device work."""

    probabilities: np.ndarray


class ImageClassifier(Model[bytes, torch.Tensor, TopK]):
    """Top-k classifier: preprocess per image on CPU (uint8), normalize and run per batch on the device."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.settings: Settings = settings
        self.channels_last = settings.channels_last

    def load(self) -> None:
        bundle = self.load_bundle()
        config = bundle.config
        self.spec = ImageSpec.from_bundle(config.extra)
        network = build_network(config.architecture, len(config.labels))
        try:
            network.load_state_dict(bundle.state_dict())
        except RuntimeError as exc:
            raise ModelLoadError(f"bundle weights do not fit {config.architecture}: {exc}") from exc
        network.eval().to(self.device)
        if self.channels_last:
            network = network.to(memory_format=torch.channels_last)
        self.network = network
        self.mean = torch.tensor(self.spec.mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(self.spec.std, device=self.device).view(1, 3, 1, 1)
        self.top_k = min(self.settings.top_k, len(self.labels))

    def decode(self, data: bytes) -> Image.Image:
        return decode_image(
            data,
            allowed_formats=self.settings.allowed_formats,
            max_pixels=self.settings.max_image_pixels,
            min_side=self.settings.min_image_side,
            draft_size=self.spec.resize_size,
        )

    def preprocess(self, raw: bytes) -> torch.Tensor:
        return resize_and_crop(self.decode(raw), self.spec)

    def predict(self, items: Sequence[torch.Tensor]) -> torch.Tensor:
        batch = torch.stack(list(items))
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        with torch.inference_mode():
            x = batch.float().div_(255).sub_(self.mean).div_(self.std)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            autocast = (
                torch.autocast("cuda", dtype=DTYPES[self.precision]) if self.precision in DTYPES else nullcontext()
            )
            with autocast:
                logits = self.network(x)
            return torch.softmax(logits.float(), dim=1)

    def postprocess(self, outputs: torch.Tensor) -> list[TopK]:
        probabilities = outputs.cpu()
        scores, indices = probabilities.topk(self.top_k, dim=1)
        results = []
        for row, row_s, row_i in zip(probabilities.numpy(), scores.tolist(), indices.tolist(), strict=True):
            top = TopK({"label": self.labels[i], "score": round(s, 6)} for s, i in zip(row_s, row_i, strict=True))
            top.probabilities = row
            results.append(top)
        return results

    def warmup_item(self) -> torch.Tensor:
        """An item made the way a request's is, from encoded bytes of every allowed format: the first request would
        otherwise pay for Pillow's plugins and the resize path (40 ms against 0.9 ms for a small JPEG here)."""
        item = torch.zeros(3, self.spec.input_size, self.spec.input_size, dtype=torch.uint8)
        side = max(self.spec.resize_size, self.settings.min_image_side) + 16
        for fmt in sorted(self.settings.allowed_formats):
            encoded = io.BytesIO()
            Image.new("RGB", (side, side), (127, 127, 127)).save(encoded, fmt)
            item = self.preprocess(encoded.getvalue())
        return item

    def describe(self) -> dict[str, Any]:
        if self.bundle is None and self.engine_described is not None:  # a front: the engine's model
            return self.engine_described
        return {
            "architecture": self.bundle.config.architecture if self.bundle else None,
            "weights_sha256": self.bundle.sha256 if self.bundle else None,
            "input_size": self.spec.input_size,
            "channels_last": self.channels_last,
        }

    # -- the engine/front split (serving.ipc) -----------------------------------------------------------------------
    engine_described: dict[str, Any] | None = None
    ITEM_TENSOR = 0  # a uint8 CHW tensor of the bundle's input size, decoded and cropped in the front

    def slot_sizes(self) -> tuple[int, int]:
        return 3 * self.spec.input_size**2, 4 * len(self.labels)

    def pack_item(self, item: torch.Tensor) -> tuple[int, bytes | memoryview]:
        return self.ITEM_TENSOR, item.contiguous().numpy().data.cast("B")

    def unpack_item(self, kind: int, data: memoryview) -> torch.Tensor:
        if kind != self.ITEM_TENSOR:
            raise ValueError(f"unknown item kind {kind}")
        side = self.spec.input_size
        return torch.frombuffer(data, dtype=torch.uint8).view(3, side, side)

    def pack_output(self, output: TopK) -> bytes | memoryview:
        return np.ascontiguousarray(output.probabilities, dtype=np.float32).data.cast("B")

    def unpack_output(self, data: memoryview) -> TopK:
        row = np.frombuffer(data, dtype=np.float32).copy()
        best = np.argsort(-row, kind="stable")[: self.top_k]
        top = TopK({"label": self.labels[i], "score": round(float(row[i]), 6)} for i in best)
        top.probabilities = row
        return top

    def front_info(self) -> dict[str, Any]:
        return {**super().front_info(), "spec": asdict(self.spec), "top_k": self.top_k, "describe": self.describe()}

    def adopt(self, info: dict[str, Any]) -> None:
        super().adopt(info)
        spec = info["spec"]
        self.spec = ImageSpec(spec["input_size"], spec["resize_size"], tuple(spec["mean"]), tuple(spec["std"]))
        self.top_k = int(info["top_k"])
        self.engine_described = dict(info["describe"])

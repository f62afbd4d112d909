"""The image classifier model: torchvision network + bundle weights, Pillow (or GPU) decoding, device-side
normalization, CUDA graphs per batch bucket."""

from __future__ import annotations

import io
import logging
import struct
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torchvision
from PIL import Image, ImageOps, UnidentifiedImageError

from image_classifier import gpudecode
from image_classifier.graphs import StaticBatchRunner, graph_buckets, inverse_order
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


def resize_plan(width: int, height: int, spec: ImageSpec) -> tuple[int, int, int, int]:
    """Short side to `resize_size` (never below `input_size`), then the centred `input_size` square: returns the
    resized (width, height) and the crop's (left, top). The CPU and the GPU paths both cut by this plan."""
    scale = spec.resize_size / min(width, height)
    new_width = max(spec.input_size, round(width * scale))
    new_height = max(spec.input_size, round(height * scale))
    return new_width, new_height, (new_width - spec.input_size) // 2, (new_height - spec.input_size) // 2


def resize_and_crop(image: Image.Image, spec: ImageSpec) -> torch.Tensor:
    """Short side to `resize_size`, center crop to `input_size`; returns a uint8 CHW tensor (normalized later)."""
    new_width, new_height, left, top = resize_plan(*image.size, spec)
    image = image.resize((new_width, new_height), Image.Resampling.BILINEAR, reducing_gap=3.0)
    image = image.crop((left, top, left + spec.input_size, top + spec.input_size))
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


@contextmanager
def _image_errors(max_pixels: int) -> Iterator[None]:
    """Pillow's faults as InvalidImage (400) with fixed messages; decompression-bomb warnings are errors."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except InvalidImage:
        raise
    # Fixed messages for the client: Pillow's own name internals such as `<_io.BytesIO object at 0x...>`.
    except UnidentifiedImageError as exc:
        raise InvalidImage("not a decodable image", detail=str(exc)) from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidImage(f"image has more than {max_pixels} pixels", detail=str(exc)) from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:  # truncated or corrupt data
        raise InvalidImage("corrupt or truncated image", detail=f"{type(exc).__name__}: {exc}") from exc


def open_image(
    data: bytes | memoryview, *, allowed_formats: frozenset[str], max_pixels: int, min_side: int
) -> Image.Image:
    """Open untrusted bytes reading the header only: allowed formats only, size checked, no pixel decoded yet."""
    if not data:
        raise InvalidImage("the image is empty")
    with _image_errors(max_pixels):
        image = Image.open(io.BytesIO(data))
        if image.format not in allowed_formats:
            raise InvalidImage(f"image format {image.format} is not allowed; send one of {sorted(allowed_formats)}")
        width, height = image.size
        if width * height > max_pixels:
            raise InvalidImage(f"image is {width}x{height}: more than the {max_pixels} pixel limit")
        if min(width, height) < min_side:
            raise InvalidImage(f"image is {width}x{height}: both sides must be at least {min_side} pixels")
        return image


def load_rgb(image: Image.Image, *, max_pixels: int, draft_size: int | None = None) -> Image.Image:
    """Decode an opened image's pixels (a JPEG at reduced scale when `draft_size` allows), EXIF orientation applied."""
    with _image_errors(max_pixels):
        if draft_size and image.format == "JPEG":
            image.draft("RGB", (draft_size, draft_size))  # let libjpeg decode at reduced scale
        image.load()
        return ImageOps.exif_transpose(image).convert("RGB")


def decode_image(
    data: bytes | memoryview,
    *,
    allowed_formats: frozenset[str],
    max_pixels: int,
    min_side: int,
    draft_size: int | None = None,
) -> Image.Image:
    """Decode untrusted bytes: allowed formats only, size checked before decoding pixels, EXIF orientation applied."""
    image = open_image(data, allowed_formats=allowed_formats, max_pixels=max_pixels, min_side=min_side)
    return load_rgb(image, max_pixels=max_pixels, draft_size=draft_size)


@dataclass(frozen=True)
class EncodedImage:
    """JPEG bytes that passed the header checks and suit nvJPEG's batched path (gpudecode.gpu_refusal), decoded on
    the GPU with the rest of their batch in `predict`. `data` may be a view of shared memory that is valid only
    until `predict` returns: nothing keeps a reference to it past that."""

    data: bytes | memoryview
    width: int
    height: int


Item = torch.Tensor | EncodedImage
"""A preprocessed image: uint8 CHW pixels (CPU path), or JPEG bytes the engine decodes on the GPU."""


def probability_rows(outputs: torch.Tensor) -> np.ndarray:
    """`predict`'s probabilities on the host, one contiguous float32 row per item (what answers and slots hold)."""
    return np.ascontiguousarray(outputs.cpu().numpy(), dtype=np.float32)


class TopK(list[dict[str, Any]]):
    """One image's top-k predictions, as /v1/predict answers them; `probabilities` keeps its whole softmax row (in
    label order) for the Open Inference Protocol's outputs (serving.v2), at no extra device work."""

    probabilities: np.ndarray


class ImageClassifier(Model[bytes, Item, TopK]):
    """Top-k classifier: preprocess per image (uint8 on the CPU, or JPEG bytes for the GPU), then per batch on the
    device: GPU decode of the JPEGs, normalize and run, replaying a CUDA graph per batch bucket where it can."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.settings: Settings = settings
        self.channels_last = settings.channels_last
        self.gpu_decode = False  # set by load(): JPEGs go to the GPU (see gpudecode.HARDWARE_JPEG_GPUS)
        self.graphs: StaticBatchRunner | None = None  # set by load() on CUDA with cuda_graphs on

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
        if self.device.type == "cuda":
            self.gpu_decode = self._probe_gpu_decode()
            if self.settings.cuda_graphs:
                self.graphs = self._capture_graphs()

    def _probe_gpu_decode(self) -> bool:
        """gpu_decode=auto: on when the GPU has hardware JPEG engines and nvJPEG decodes a test image right."""
        if self.settings.gpu_decode == "off":
            return False
        name = torch.cuda.get_device_name(self.device)
        if not gpudecode.has_hardware_jpeg(name):
            log.info("GPU decode off: %s has no hardware JPEG engines (gpudecode.HARDWARE_JPEG_GPUS)", name)
            return False
        side = max(self.spec.resize_size, self.settings.min_image_side) + 16
        sample = io.BytesIO()
        Image.new("RGB", (side + 8, side), (90, 160, 30)).save(sample, "JPEG")
        try:
            (decoded,) = gpudecode.nvjpeg_decoder(self.device)(gpudecode.as_tensors([sample.getvalue()]))
            torch.cuda.synchronize(self.device)
            if tuple(decoded.shape) != (3, side, side + 8) or decoded.device.type != "cuda":
                raise RuntimeError(f"nvJPEG gave {tuple(decoded.shape)} on {decoded.device} for 3x{side}x{side + 8}")
            if abs(float(decoded[1].float().mean()) - 160) > 8:
                raise RuntimeError(f"nvJPEG decoded a flat green 160 as {float(decoded[1].float().mean()):.1f}")
        except Exception as exc:  # a GPU feature that fails at load falls back, it never stops the service
            self.notes.append(f"GPU_DECODE=auto: nvJPEG failed on {name} ({type(exc).__name__}: {exc}): CPU decode")
            return False
        log.info("GPU decode on: %s has hardware JPEG engines", name)
        return True

    def _capture_graphs(self) -> StaticBatchRunner | None:
        """One CUDA graph per batch bucket, checked against eager on a random batch; None (eager) if that fails."""
        size = self.spec.input_size
        runner = StaticBatchRunner(
            self._forward, (3, size, size), graph_buckets(self.settings.max_batch_size), self.device
        )
        try:
            runner.capture()
            generator = torch.Generator().manual_seed(0)
            n = min(3, runner.buckets[-1])
            check = [torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=generator) for _ in range(n)]
            replayed, eager = runner.run(check), self._eager(check, None)
            tolerance = 1e-3 if self.precision == "fp32" else 3e-2
            if not torch.allclose(replayed, eager, atol=tolerance):
                raise RuntimeError(f"replay differs from eager by {float((replayed - eager).abs().max()):.3g}")
        except Exception as exc:  # eager stays the fallback: a failed capture costs speed, never service
            self.notes.append(f"CUDA_GRAPHS=true: capture failed ({type(exc).__name__}: {exc}): running eager")
            del runner
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            return None
        log.info("CUDA graphs captured for batch sizes %s", runner.buckets)
        return runner

    def decode(self, data: bytes | memoryview) -> Image.Image:
        return decode_image(
            data,
            allowed_formats=self.settings.allowed_formats,
            max_pixels=self.settings.max_image_pixels,
            min_side=self.settings.min_image_side,
            draft_size=self.spec.resize_size,
        )

    def preprocess(self, raw: bytes) -> Item:
        """The header checks, then: an EncodedImage for the GPU when GPU decode is on and the JPEG suits it
        (no pixel decoded here), else the CPU path's uint8 CHW tensor. Touches no CUDA (fronts run it)."""
        s = self.settings
        image = open_image(
            raw, allowed_formats=s.allowed_formats, max_pixels=s.max_image_pixels, min_side=s.min_image_side
        )
        fits = self.encoded_max_bytes is None or len(raw) <= self.encoded_max_bytes  # a split front's slot
        if self.gpu_decode and fits and gpudecode.gpu_refusal(image, raw, s.gpu_decode_max_pixels) is None:
            width, height = image.size
            return EncodedImage(raw, width, height)
        return resize_and_crop(
            load_rgb(image, max_pixels=s.max_image_pixels, draft_size=self.spec.resize_size), self.spec
        )

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 NCHW on the device -> softmax probabilities: normalize, layout and autocast (also what each graph
        captures; autocast's weight cache must be off inside a capture)."""
        x = batch.float().div_(255).sub_(self.mean).div_(self.std)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        autocast = (
            torch.autocast("cuda", dtype=DTYPES[self.precision], cache_enabled=False)
            if self.precision in DTYPES
            else nullcontext()
        )
        with autocast:
            logits = self.network(x)
        return torch.softmax(logits.float(), dim=1)

    def _eager(self, host: Sequence[torch.Tensor], on_device: torch.Tensor | None) -> torch.Tensor:
        parts = []
        if host:
            batch = torch.stack(list(host))
            if self.device.type == "cuda":
                batch = batch.pin_memory().to(self.device, non_blocking=True)
            parts.append(batch)
        if on_device is not None:
            parts.append(on_device)
        with torch.inference_mode():
            return self._forward(parts[0] if len(parts) == 1 else torch.cat(parts))

    def _decode_on_device(self, encoded: Sequence[EncodedImage]) -> torch.Tensor:
        """uint8 NCHW on the device for the batch's JPEGs: one nvJPEG call, then resize and crop on the GPU. An image
        the GPU cannot decode, alone either, takes the CPU path (InvalidImage there when it is really bad)."""
        tensors = gpudecode.as_tensors([e.data for e in encoded])  # copies: `data` may be gone after predict
        decoded = gpudecode.decode_each(tensors, gpudecode.nvjpeg_decoder(self.device))
        good: list[int] = []
        images: list[torch.Tensor] = []
        for i, (image, e) in enumerate(zip(decoded, encoded, strict=True)):
            if image is not None and tuple(image.shape) == (3, e.height, e.width):
                good.append(i)
                images.append(image)
        plans = [resize_plan(encoded[i].width, encoded[i].height, self.spec) for i in good]
        resized = gpudecode.resize_and_crop_batch(images, plans, self.spec.input_size)
        items: list[torch.Tensor | None] = [None] * len(encoded)
        for i, tensor in zip(good, resized, strict=True):
            items[i] = tensor
        for i, item in enumerate(items):
            if item is None:
                log.info(
                    "GPU decode failed for a %dx%d JPEG: decoding it on the CPU", encoded[i].width, encoded[i].height
                )
                fallback = resize_and_crop(self.decode(bytes(encoded[i].data)), self.spec)
                items[i] = fallback.to(self.device, non_blocking=False)
        return torch.stack([item for item in items if item is not None])

    def predict(self, items: Sequence[Item]) -> torch.Tensor:
        """Probabilities for a batch of tensors and EncodedImages (any mix), in the items' order."""
        host = [(i, item) for i, item in enumerate(items) if not isinstance(item, EncodedImage)]
        encoded = [(i, item) for i, item in enumerate(items) if isinstance(item, EncodedImage)]
        with torch.inference_mode():
            on_device = self._decode_on_device([e for _, e in encoded]) if encoded else None
            pixels = [t for _, t in host]
            if self.graphs is not None and len(items) <= self.graphs.buckets[-1]:
                probabilities = self.graphs.run(pixels, on_device)
            else:
                probabilities = self._eager(pixels, on_device)
            inverse = inverse_order([i for i, _ in host] + [i for i, _ in encoded])
            if inverse is None:
                return probabilities
            return probabilities[torch.tensor(inverse, device=probabilities.device)]

    def postprocess(self, outputs: torch.Tensor) -> list[TopK]:
        return [self.top(row) for row in probability_rows(outputs)]

    def top(self, row: np.ndarray) -> TopK:
        """One image's answer from its probability row: the k best, equal scores in label order (in one process and
        in a split front alike; torch.topk leaves the order of ties unspecified)."""
        best = np.argsort(-row, kind="stable")[: self.top_k]
        top = TopK({"label": self.labels[i], "score": round(float(row[i]), 6)} for i in best)
        top.probabilities = row
        return top

    def warmup_item(self) -> Item:
        """An item made the way a request's is, from encoded bytes of every allowed format: the first request would
        otherwise pay for Pillow's plugins and the resize path (40 ms against 0.9 ms for a small JPEG here). With GPU
        decode on it is the JPEG's EncodedImage, so the warm-up runs nvJPEG and the GPU resize at every batch size
        (and the JPEG's CPU path, the fallback, is warmed here too)."""
        item: Item = torch.zeros(3, self.spec.input_size, self.spec.input_size, dtype=torch.uint8)
        encoded_item: EncodedImage | None = None
        side = max(self.spec.resize_size, self.settings.min_image_side) + 16
        for fmt in sorted(self.settings.allowed_formats):
            encoded = io.BytesIO()
            Image.new("RGB", (side, side), (127, 127, 127)).save(encoded, fmt)
            item = self.preprocess(encoded.getvalue())
            if isinstance(item, EncodedImage):
                encoded_item = item
                item = resize_and_crop(self.decode(item.data), self.spec)
        return encoded_item or item

    def describe(self) -> dict[str, Any]:
        if self.bundle is None and self.engine_described is not None:  # a front: the engine's model
            return self.engine_described
        return {
            "architecture": self.bundle.config.architecture if self.bundle else None,
            "weights_sha256": self.bundle.sha256 if self.bundle else None,
            "input_size": self.spec.input_size,
            "channels_last": self.channels_last,
            "cuda_graphs": list(self.graphs.buckets) if self.graphs is not None else None,
            "gpu_decode": self.gpu_decode,
        }

    # -- the engine/front split (serving.ipc) -----------------------------------------------------------------------
    engine_described: dict[str, Any] | None = None
    encoded_max_bytes: int | None = None  # a split front: larger JPEGs decode in the front (they would not fit a slot)
    ITEM_TENSOR = 0  # a uint8 CHW tensor of the bundle's input size, decoded and cropped in the front
    ITEM_JPEG = 1  # an EncodedImage: width and height (2 x uint32), then the JPEG's bytes, decoded on the GPU
    # A slot's room for a JPEG with GPU decode on: a 500x375 photo is 50-150 KB; a larger upload decodes in the
    # front instead, where libjpeg's draft scaling decodes it at 1/2-1/8 scale. 2 fronts x 128 slots = 128 MiB.
    JPEG_SLOT_BYTES = 512 * 1024
    _JPEG_HEADER = struct.Struct("<II")

    def slot_sizes(self) -> tuple[int, int]:
        pixels = 3 * self.spec.input_size**2
        return (max(pixels, self.JPEG_SLOT_BYTES) if self.gpu_decode else pixels), 4 * len(self.labels)

    def pack_item(self, item: Item) -> tuple[int, bytes | memoryview]:
        if isinstance(item, EncodedImage):
            return self.ITEM_JPEG, self._JPEG_HEADER.pack(item.width, item.height) + bytes(item.data)
        return self.ITEM_TENSOR, item.contiguous().numpy().data.cast("B")

    def unpack_item(self, kind: int, data: memoryview) -> Item:
        if kind == self.ITEM_JPEG:
            width, height = self._JPEG_HEADER.unpack_from(data)
            return EncodedImage(data[self._JPEG_HEADER.size :], width, height)
        if kind != self.ITEM_TENSOR:
            raise ValueError(f"unknown item kind {kind}")
        side = self.spec.input_size
        return torch.frombuffer(data, dtype=torch.uint8).view(3, side, side)

    def pack_output(self, output: TopK) -> bytes | memoryview:
        return np.ascontiguousarray(output.probabilities, dtype=np.float32).data.cast("B")

    def engine_outputs(self, outputs: torch.Tensor) -> list[bytes | memoryview]:
        """The probabilities' rows as they are: the front picks the top k (`unpack_output`), not the engine."""
        return [row.data.cast("B") for row in probability_rows(outputs)]

    def unpack_output(self, data: memoryview) -> TopK:
        return self.top(np.frombuffer(data, dtype=np.float32).copy())

    def front_info(self) -> dict[str, Any]:
        return {
            **super().front_info(),
            "spec": asdict(self.spec),
            "top_k": self.top_k,
            "gpu_decode": self.gpu_decode,
            "describe": self.describe(),
        }

    def adopt(self, info: dict[str, Any]) -> None:
        super().adopt(info)
        spec = info["spec"]
        self.spec = ImageSpec(spec["input_size"], spec["resize_size"], tuple(spec["mean"]), tuple(spec["std"]))
        self.top_k = int(info["top_k"])
        self.gpu_decode = bool(info["gpu_decode"])  # the front sends eligible JPEGs as they came
        self.encoded_max_bytes = self.JPEG_SLOT_BYTES - self._JPEG_HEADER.size
        self.engine_described = dict(info["describe"])

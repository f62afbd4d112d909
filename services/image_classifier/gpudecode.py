"""GPU JPEG decode for the image model: which GPUs have hardware JPEG engines, which JPEGs go there, and the batch
decode (nvJPEG through torchvision) with its resize and center crop on the device."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the usual alias
from PIL import Image, JpegImagePlugin

log = logging.getLogger(__name__)

# GPUs with hardware JPEG decode engines (NVJPG) that nvJPEG's hardware backend drives, by the model token of
# torch.cuda.get_device_name ("NVIDIA A100-SXM4-80GB" -> "A100"). nvJPEG's documentation names the A100, A30 and
# H100 (Hopper: H100, H200, H800, H20, GH200 share the engines); the Blackwell data-centre parts list NVJPG engines
# too. Not here, so decoding stays on the CPU: T4 and V100 (none), A10/A10G (none), and L4/L40S, whose datasheets
# list NVJPG engines that nobody here has yet measured through nvJPEG. Add a GPU only after measuring it.
HARDWARE_JPEG_GPUS = frozenset({"A100", "A800", "A30", "H100", "H200", "H800", "H20", "GH200", "B100", "B200", "GB200"})

# Chroma layouts nvJPEG's hardware path decodes that Pillow names (JpegImagePlugin.get_sampling): 4:4:4, 4:2:2, 4:2:0.
GPU_SAMPLINGS = frozenset({0, 1, 2})
BASELINE_SOF = 0xC0  # the only frame type sent to the GPU: baseline DCT, Huffman (progressive keeps the CPU)
EXIF_ORIENTATION = 0x0112
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # C4 DHT, C8 JPG, CC DAC are not frames


def has_hardware_jpeg(device_name: str) -> bool:
    """True when the GPU named `device_name` has hardware JPEG engines (see HARDWARE_JPEG_GPUS)."""
    return any(token in HARDWARE_JPEG_GPUS for token in re.split(r"[^A-Za-z0-9]+", device_name.upper()))


def frame_marker(data: bytes | memoryview) -> int | None:
    """The JPEG's start-of-frame marker (0xC0 baseline, 0xC2 progressive, ...), read from the segment headers; None
    when the stream is malformed or reaches its scan first."""
    view = memoryview(data)
    if bytes(view[:2]) != b"\xff\xd8":
        return None
    pos = 2
    while pos + 4 <= len(view):
        if view[pos] != 0xFF:
            return None
        marker = view[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in _SOF_MARKERS:
            return int(marker)
        if marker in (0xDA, 0xD9):  # start of scan / end of image before any frame
            return None
        pos += 2 + int.from_bytes(view[pos + 2 : pos + 4], "big")
    return None


def gpu_refusal(image: Image.Image, data: bytes | memoryview, max_pixels: int) -> str | None:
    """Why this opened (header-only) image keeps the CPU path, or None when it may be decoded on the GPU: a
    complete baseline 8-bit JPEG, grayscale or YCbCr 4:4:4/4:2:2/4:2:0, upright (EXIF orientation 1), not too big."""
    if not isinstance(image, JpegImagePlugin.JpegImageFile):
        return f"{image.format} is decoded on the CPU"
    width, height = image.size
    if width * height > max_pixels:
        return f"{width}x{height} is more than the {max_pixels} pixels decoded on the GPU"
    if image.mode not in ("RGB", "L"):
        return f"{image.mode} JPEG"
    if image.mode == "RGB":
        if JpegImagePlugin.get_sampling(image) not in GPU_SAMPLINGS:
            return "chroma subsampling other than 4:4:4, 4:2:2 or 4:2:0"
        if "adobe" in image.info and image.info.get("adobe_transform") != 1:
            return "Adobe RGB-coded JPEG"  # transform 0: the components are RGB, not YCbCr
    if frame_marker(data) != BASELINE_SOF:
        return "not a baseline JPEG (progressive, extended, lossless or arithmetic-coded)"
    if bytes(memoryview(data)[-2:]) != b"\xff\xd9":
        return "no end-of-image marker at the end (truncated, or trailing data)"
    if "exif" in image.info and image.getexif().get(EXIF_ORIENTATION, 1) != 1:
        return "EXIF orientation other than 1"
    return None


def as_tensors(datas: Sequence[bytes | memoryview]) -> list[torch.Tensor]:
    """The encoded images as 1-D uint8 CPU tensors, copied into one buffer: the caller's bytes (or shared memory) are
    not kept, and read-only bytes need no writable view."""
    total = sum(len(d) for d in datas)
    arena = torch.empty(total, dtype=torch.uint8)
    flat = arena.numpy()
    tensors, offset = [], 0
    for data in datas:
        size = len(data)
        flat[offset : offset + size] = np.frombuffer(data, dtype=np.uint8)
        tensors.append(arena[offset : offset + size])
        offset += size
    return tensors


Decoder = Callable[[list[torch.Tensor]], list[torch.Tensor]]


def nvjpeg_decoder(device: torch.device) -> Decoder:
    """One torchvision.io.decode_jpeg call for the whole list, decoded to RGB on `device` (nvJPEG on CUDA)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    def decode(encoded: list[torch.Tensor]) -> list[torch.Tensor]:
        out: list[torch.Tensor] = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
        return out

    return decode


def decode_each(encoded: list[torch.Tensor], decode: Decoder) -> list[torch.Tensor | None]:
    """Decode the batch in one call; when it fails (it returns nothing then), decode one image at a time, so only the
    images that fail alone are None (the caller decodes those on the CPU, which names the fault)."""
    try:
        return list(decode(encoded))
    except (RuntimeError, ValueError) as exc:  # torchvision's checks and nvJPEG's status codes
        if len(encoded) == 1:
            log.info("GPU decode of one image failed: %s", exc)
            return [None]
        log.info("GPU decode of a batch of %d failed (%s): decoding one by one", len(encoded), exc)
    out: list[torch.Tensor | None] = []
    for one in encoded:
        try:
            out.append(decode([one])[0])
        except (RuntimeError, ValueError) as exc:  # torchvision's checks and nvJPEG's status codes
            log.info("GPU decode of one image failed: %s", exc)
            out.append(None)
    return out


def resize_and_crop_batch(
    images: Sequence[torch.Tensor], plans: Sequence[tuple[int, int, int, int]], size: int
) -> list[torch.Tensor]:
    """The device-side twin of model.resize_and_crop: each uint8 CHW image resized (bilinear, antialiased) to its
    plan's (width, height), then the size x size square at the plan's (left, top) cut out; uint8 CHW each. Images
    of the same shape and plan are resized as one batch (one kernel for a batch of same-sized uploads)."""
    groups: dict[tuple[tuple[int, ...], tuple[int, int, int, int]], list[int]] = {}
    for i, (image, plan) in enumerate(zip(images, plans, strict=True)):
        groups.setdefault((tuple(image.shape), plan), []).append(i)
    out: list[torch.Tensor | None] = [None] * len(images)
    for (_, (width, height, left, top)), members in groups.items():
        batch = torch.stack([images[i] for i in members]).float()
        resized = F.interpolate(batch, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
        crops = resized[:, :, top : top + size, left : left + size].round_().clamp_(0, 255).to(torch.uint8)
        for i, crop in zip(members, crops, strict=True):
            out[i] = crop
    return [t for t in out if t is not None]

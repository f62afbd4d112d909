"""The benchmark request bodies: one deterministic photo-like JPEG generator, at the sizes every benchmark names.

`photo` (500x375, the size of a typical web photo; the default of the ratio table, the peers, the clients and the
GPU runner), `large` (4000x3000, a 12 MP phone upload) and `tiny` (160x160, the old default, kept for comparison
with the earlier reference runs and labelled so). The content is photo-like, not flat colour: smooth gradients,
a few soft-edged shapes with hard edges, and sensor-like noise, so that the JPEG is about as large (and as costly to
decode) as a real photo of its size: about 50-60 KB at quality 90 for 500x375.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass

# name -> (width, height); DEFAULT_BODY is what every benchmark sends unless told otherwise.
SIZES: dict[str, tuple[int, int]] = {"photo": (500, 375), "large": (4000, 3000), "tiny": (160, 160)}
DEFAULT_BODY = "photo"
QUALITY = 90


@dataclass(frozen=True)
class Body:
    """One request body of the benchmarks: its name, pixel size and JPEG bytes."""

    name: str
    width: int
    height: int
    jpeg: bytes

    def describe(self) -> dict[str, object]:
        """What a results file records about the body (never the bytes)."""
        return {"name": self.name, "width": self.width, "height": self.height, "bytes": len(self.jpeg)}

    @property
    def label(self) -> str:
        return f"{self.name} {self.width}x{self.height} JPEG, {len(self.jpeg) / 1024:.1f} KiB"


def photo_jpeg(width: int, height: int, seed: int = 7, quality: int = QUALITY) -> bytes:
    """A photo-like JPEG of `width` x `height`, the same bytes for the same arguments (numpy + Pillow only).

    The same scene at every size (shapes and gradients scale with the image), so a larger image has the same
    content at more pixels, as a larger photo of the same scene would.
    """
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    # The scene is drawn at most 500 px wide and scaled up (bicubic) to the target, as a larger photo of the same
    # scene has the same edges over more pixels; the noise is added at the full size.
    shrink = max(1.0, width / 500)
    scene_w, scene_h = max(1, round(width / shrink)), max(1, round(height / shrink))
    ys = np.linspace(0.0, 1.0, scene_h, dtype=np.float32)[:, None]
    xs = np.linspace(0.0, 1.0, scene_w, dtype=np.float32)[None, :]
    channels = []
    for phase in rng.uniform(0, 2 * np.pi, size=(3, 3)):
        # A sky-to-ground gradient and two slow waves per channel: the smooth part of a photo.
        channel = 150 - 90 * ys + 35 * np.sin(5 * xs + phase[0]) * np.cos(3 * ys + phase[1])
        channel = channel + 20 * np.sin(17 * (xs + ys) + phase[2])
        channels.append(channel)
    base = np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.uint8)
    image = Image.fromarray(base, "RGB")
    draw = ImageDraw.Draw(image)
    scale = min(scene_w, scene_h)
    for _ in range(12):
        # Objects: hard-edged ellipses and rectangles in muted colours.
        x0, y0 = rng.uniform(0, scene_w), rng.uniform(0, scene_h)
        w, h = rng.uniform(0.08, 0.35) * scale, rng.uniform(0.08, 0.35) * scale
        colour = tuple(int(c) for c in rng.integers(30, 230, size=3))
        box = (x0, y0, x0 + w, y0 + h)
        if rng.random() < 0.5:
            draw.ellipse(box, fill=colour)
        else:
            draw.rectangle(box, fill=colour)
    # A little lens blur softens the edges (as optics do), then sensor noise on every pixel: what makes a photo's
    # JPEG ten times larger than a drawing's.
    image = image.filter(ImageFilter.GaussianBlur(radius=0.75))
    if (scene_w, scene_h) != (width, height):
        image = image.resize((width, height), Image.Resampling.BICUBIC)
    pixels = np.asarray(image, dtype=np.float32)
    pixels += rng.standard_normal(size=pixels.shape, dtype=np.float32) * 7.0
    noisy = np.clip(pixels, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noisy, "RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


@functools.cache
def body(name: str = DEFAULT_BODY) -> Body:
    """The named benchmark body (`photo`, `large`, `tiny`), generated once per process."""
    if name not in SIZES:
        raise ValueError(f"unknown body {name!r}: expected one of {', '.join(SIZES)}")
    width, height = SIZES[name]
    return Body(name, width, height, photo_jpeg(width, height))


def sample_body(name: str = DEFAULT_BODY) -> bytes:
    """The JPEG bytes of the named benchmark body."""
    return body(name).jpeg

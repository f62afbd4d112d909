"""The benchmark bodies: deterministic, photo-like (a JPEG about as large as a photo's), at the sizes they name."""

from __future__ import annotations

import io

import pytest
from PIL import Image, ImageStat

from ops.perf import bodies


def test_the_photo_body_is_a_photo_sized_jpeg_and_the_same_every_time() -> None:
    photo = bodies.body("photo")
    assert bodies.DEFAULT_BODY == "photo"
    assert photo.jpeg == bodies.photo_jpeg(500, 375)  # deterministic: the same bytes from a fresh render
    image = Image.open(io.BytesIO(photo.jpeg))
    assert (image.format, image.size) == ("JPEG", (500, 375))
    # A flat or drawn image compresses to a few KB; a photo of this size at quality 90 is tens of KB.
    assert 40_000 <= len(photo.jpeg) <= 80_000, len(photo.jpeg)
    spread = ImageStat.Stat(image.convert("L")).stddev[0]
    assert spread > 20, spread  # gradients and shapes, not one colour
    assert photo.describe() == {"name": "photo", "width": 500, "height": 375, "bytes": len(photo.jpeg)}


def test_tiny_and_large_keep_their_sizes_and_the_large_upload_fits_the_service_body_limit() -> None:
    from image_classifier.settings import Settings  # type: ignore[import-untyped, unused-ignore]

    tiny = bodies.body("tiny")
    assert Image.open(io.BytesIO(tiny.jpeg)).size == (160, 160)
    large = bodies.body("large")
    assert Image.open(io.BytesIO(large.jpeg)).size == (4000, 3000)
    limits = Settings(model_uri="x")
    assert len(large.jpeg) <= limits.max_body_bytes
    assert large.width * large.height <= limits.max_image_pixels
    assert len(large.jpeg) > 40 * len(bodies.body("photo").jpeg)  # about 64x the pixels of the photo


def test_an_unknown_body_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown body"):
        bodies.body("huge")

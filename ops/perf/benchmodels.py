"""The models the benchmarks time, loaded through the served model class so model-only and HTTP numbers compare."""

from __future__ import annotations

import os
import platform
import tempfile
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch

from ops.core import REPO_ROOT, cache_root
from ops.perf.localservice import LocalService

DEMO_BUNDLE = REPO_ROOT / "models" / "image-demo"
# Random-init resnet50 bundle (weights do not change latency); cached outside the checkout, rebuilt when missing.
CACHE_ROOT = cache_root() / "bench"
MODELS = ("resnet50", "demo")


def cuda_available() -> bool:
    """True when torch can run kernels on a GPU here."""
    return torch.cuda.is_available()


def ensure_demo_bundle(path: Path = DEMO_BUNDLE) -> Path:
    """The image demo bundle (`invoke models.build` output), built now when it is missing (image only: the text
    bundle needs packages a GPU benchmark machine lacks)."""
    if not (path / "model.safetensors").is_file():
        from ops.models import build_image_demo

        build_image_demo(path)
    return path


def ensure_resnet50_bundle(root: Path = CACHE_ROOT) -> Path:
    """A bundle holding a randomly initialised torchvision resnet50 (1000 classes, 224 px)."""
    path = root / "resnet50-random"
    if (path / "model.safetensors").is_file():
        return path
    import torchvision  # type: ignore[import-untyped, unused-ignore]

    from serving.bundle import write_bundle  # type: ignore[import-untyped, unused-ignore]

    torch.manual_seed(0)
    network = torchvision.models.resnet50(weights=None)
    config = {
        "name": "resnet50-random",
        "version": "0",
        "architecture": "resnet50",
        "labels": [f"class-{i}" for i in range(1000)],
        "input_size": 224,
        "resize_size": 256,
    }
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        write_bundle(Path(tmp) / "bundle", config, network.state_dict())
        os.replace(Path(tmp) / "bundle", path)
    return path


def bundle_for(model: str) -> Path:
    """Bundle directory for a benchmark model name ("resnet50" or "demo"), or a bundle directory given as a path."""
    if "/" in model and Path(model).is_dir():
        return Path(model).resolve()
    if model == "demo":
        return ensure_demo_bundle()
    if model == "resnet50":
        return ensure_resnet50_bundle()
    raise ValueError(f"unknown benchmark model {model!r}; known: {MODELS}")


@dataclass(frozen=True)
class ModelCase:
    """One model-only configuration; `id` is the readable pytest id."""

    model: str
    device: str
    batch_size: int
    precision: str = "fp32"
    channels_last: bool = False
    compile: str = "eager"  # eager | compile | cudagraphs

    @property
    def id(self) -> str:
        layout = "cl" if self.channels_last else "nchw"
        suffix = "" if self.compile == "eager" else f"-{self.compile}"
        return f"{self.model}-{self.device}-b{self.batch_size}-{self.precision}-{layout}{suffix}"

    @property
    def load_key(self) -> tuple[str, str, str, bool, str]:
        """Cases that share a loaded model (everything but the batch size)."""
        return (
            self.model,
            self.device,
            self.precision,
            self.channels_last,
            self.compile,
        )


def load_classifier(
    model: str,
    device: str,
    precision: str = "fp32",
    channels_last: bool = False,
    compile: str = "eager",
) -> Any:
    """An `image_classifier.model.ImageClassifier`, loaded exactly as the service loads it (plus optional compile)."""
    from image_classifier.model import ImageClassifier  # type: ignore[import-untyped, unused-ignore]
    from image_classifier.settings import Settings  # type: ignore[import-untyped, unused-ignore]

    values: dict[str, Any] = {
        "model_uri": str(bundle_for(model)),
        "device": device,
        "precision": precision,
        "channels_last": channels_last,
    }
    settings = Settings(**values)
    classifier = ImageClassifier(settings)
    classifier.load()
    if compile == "compile":
        classifier.network = cast(torch.nn.Module, torch.compile(classifier.network))
    elif compile == "cudagraphs":  # torch.compile's CUDA-graph mode
        classifier.network = cast(torch.nn.Module, torch.compile(classifier.network, mode="reduce-overhead"))
    return classifier


def timed_batch(classifier: Any, batch_size: int) -> Callable[[], Any]:
    """The timed call: one `predict` on a batch of preprocessed items, synchronized on CUDA so the time is real."""
    items = [classifier.warmup_item() for _ in range(batch_size)]

    def call() -> Any:
        out = classifier.predict(items)
        classifier.synchronize()
        return out

    return call


def machine_info() -> dict[str, Any]:
    """Device, torch version and host facts that every result file states."""
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda_available": cuda_available(),
        # A shared machine's load changes every number here; the summary states it.
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if cuda_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["gpu_capability"] = f"sm_{props.major}{props.minor}"
    return info


def machine_line(info: dict[str, Any] | None = None) -> str:
    """One line for a result file: device, CPU, torch."""
    info = info or machine_info()
    device = info.get("gpu") or "CPU only"
    return f"{device}; {info.get('cpu')} x {info.get('cpu_count')}; torch {info.get('torch')}"


def local_image_service(url: str, model: str, log_path: Path) -> AbstractContextManager[LocalService | None]:
    """Nothing when a URL is given; else a local image service on `model`'s bundle that may fetch from any port
    of 127.0.0.1 (the loopback image server's port is chosen when it starts, after the service)."""
    if url:
        return nullcontext(None)
    settings = {"MODEL_URI": str(bundle_for(model)), "FETCH_ALLOWED_HOSTS": "127.0.0.1:*", "LOG_LEVEL": "warning"}
    return LocalService("image_classifier", settings, log_path=log_path)

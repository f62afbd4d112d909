"""The small interface every served model implements, and the device/precision choices they share."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

import torch

from serving.bundle import Bundle, resolve_bundle
from serving.settings import ServingSettings

log = logging.getLogger(__name__)

Raw = TypeVar("Raw")
Item = TypeVar("Item")
Out = TypeVar("Out")

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def pick_device(requested: str) -> tuple[torch.device, str | None]:
    """The device to run on, and a note when the request could not be honoured (CUDA asked for but absent)."""
    if requested == "cpu":
        return torch.device("cpu"), None
    if torch.cuda.is_available():
        return torch.device("cuda"), None
    if requested == "cuda":
        return torch.device("cpu"), "DEVICE=cuda but CUDA is not available: falling back to CPU"
    return torch.device("cpu"), None


def effective_precision(requested: str, device: torch.device) -> tuple[str, str | None]:
    """fp16/bf16 autocast is a CUDA option; on CPU the service runs fp32 and says so."""
    if requested != "fp32" and device.type != "cuda":
        return "fp32", f"PRECISION={requested} is a CUDA option: running fp32 on {device.type}"
    return requested, None


class Model(ABC, Generic[Raw, Item, Out]):
    """load() once; preprocess() per request item, in a worker thread; predict()+postprocess() per batch."""

    name: str
    version: str
    labels: list[str]
    # True when preprocessing one item costs less than a hop to a worker thread and back (tokenizing a short text):
    # it then runs, still timed and under the deadline, on the event loop.
    preprocess_inline: bool = False

    def __init__(self, settings: ServingSettings) -> None:
        self.settings = settings
        self.notes: list[str] = []  # what could not be honoured, shown in the log and /v1/models
        self.device, note = pick_device(settings.device)
        self.precision, precision_note = effective_precision(settings.precision, self.device)
        self.notes += [n for n in (note, precision_note) if n]
        self.bundle: Bundle | None = None

    def load_bundle(self) -> Bundle:
        """Resolve the configured bundle (path or verified URL) and take name, version and labels from it."""
        s = self.settings
        bundle = resolve_bundle(s.model_uri, s.model_sha256, s.model_cache_dir)
        self.bundle = bundle
        self.name, self.version, self.labels = bundle.config.name, bundle.config.version, list(bundle.config.labels)
        return bundle

    @abstractmethod
    def load(self) -> None: ...

    @abstractmethod
    def preprocess(self, raw: Raw) -> Item: ...

    @abstractmethod
    def predict(self, items: Sequence[Item]) -> Any: ...

    @abstractmethod
    def postprocess(self, outputs: Any) -> list[Out]: ...

    @abstractmethod
    def warmup_item(self) -> Item:
        """A representative preprocessed item, used to warm every batch size before readiness."""

    def describe(self) -> dict[str, Any]:
        return {}

    # -- the engine/front split (serving.ipc): what crosses the process boundary, as bytes in a shared slot ---------
    # A model that supports the split implements these; the default refuses, so SPLIT=true fails at start, not later.
    def slot_sizes(self) -> tuple[int, int]:
        """(bytes of the largest packed item, bytes of one packed output): the size of a front's shared slots."""
        raise NotImplementedError(f"{type(self).__name__} does not support the engine/front split")

    def pack_item(self, item: Item) -> tuple[int, bytes | memoryview]:
        """A preprocessed item as (kind, bytes) for a slot; `unpack_item` in the engine turns it back."""
        raise NotImplementedError(f"{type(self).__name__} does not support the engine/front split")

    def unpack_item(self, kind: int, data: memoryview) -> Item:
        """The item from a slot (a view: valid until `predict` returns; copy whatever must live longer)."""
        raise NotImplementedError(f"{type(self).__name__} does not support the engine/front split")

    def pack_output(self, output: Out) -> bytes | memoryview:
        raise NotImplementedError(f"{type(self).__name__} does not support the engine/front split")

    def unpack_output(self, data: memoryview) -> Out:
        raise NotImplementedError(f"{type(self).__name__} does not support the engine/front split")

    def front_info(self) -> dict[str, Any]:
        """What a front process needs from the engine's loaded model to preprocess and answer (JSON-able)."""
        return {
            "name": self.name,
            "version": self.version,
            "labels": self.labels,
            "device": str(self.device),
            "precision": self.precision,
            "notes": self.notes,
        }

    def adopt(self, info: dict[str, Any]) -> None:
        """In a front: become the preprocessing side of the engine's model (no weights, no device), from its
        `front_info`. Subclasses extend it with what their preprocessing needs."""
        self.name, self.version, self.labels = info["name"], info["version"], list(info["labels"])
        self.device, self.precision, self.notes = torch.device(info["device"]), info["precision"], list(info["notes"])

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

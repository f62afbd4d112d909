"""The model every peer server serves: our ImageClassifier and bundle, loaded as our service loads it."""

from __future__ import annotations

from typing import Any

import torch

MODEL_NAME = "image-demo"


def load_model(
    model_uri: str,
    max_batch_size: int,
    device: str = "cpu",
    precision: str = "fp32",
    channels_last: bool = False,
) -> Any:
    """An ImageClassifier loaded from the bundle as our service loads it (device, precision, layout), warmed up for
    batch sizes 1..max, with our thread count."""
    from image_classifier.model import ImageClassifier  # type: ignore[import-untyped, unused-ignore]
    from image_classifier.settings import Settings  # type: ignore[import-untyped, unused-ignore]
    from serving.settings import default_torch_threads  # type: ignore[import-untyped, unused-ignore]

    torch.set_num_threads(default_torch_threads())
    settings = Settings.model_validate(
        {
            "model_uri": model_uri,
            "device": device,
            "precision": precision,
            "channels_last": channels_last,
            "max_batch_size": max_batch_size,
        }
    )
    classifier = ImageClassifier(settings)
    classifier.load()
    item = classifier.warmup_item()
    for size in range(1, max_batch_size + 1):
        classifier.postprocess(classifier.predict([item] * size))
    return classifier

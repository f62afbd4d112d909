"""The model every peer server serves: our ImageClassifier and demo bundle, loaded as our service loads it."""

from __future__ import annotations

from typing import Any

import torch

MODEL_NAME = "image-demo"


def load_model(model_uri: str, max_batch_size: int) -> Any:
    """An ImageClassifier loaded from the bundle and warmed up for batch sizes 1..max, with our thread count."""
    from image_classifier.model import ImageClassifier  # type: ignore[import-untyped, unused-ignore]
    from image_classifier.settings import Settings  # type: ignore[import-untyped, unused-ignore]
    from serving.settings import default_torch_threads  # type: ignore[import-untyped, unused-ignore]

    torch.set_num_threads(default_torch_threads())
    classifier = ImageClassifier(Settings(model_uri=model_uri, device="cpu", max_batch_size=max_batch_size))
    classifier.load()
    item = classifier.warmup_item()
    for size in range(1, max_batch_size + 1):
        classifier.postprocess(classifier.predict([item] * size))
    return classifier

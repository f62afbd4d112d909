"""Model-only latency and throughput: one `predict` per timed call, per model/device/batch/precision/layout."""

from __future__ import annotations

from typing import Any

import pytest

from ops.perf.benchmodels import ModelCase, timed_batch

WARMUP_CALLS = 3


@pytest.mark.benchmark(group="model")
def test_predict(benchmark: Any, model_case: ModelCase, classifier_cache: Any) -> None:
    """Time `ImageClassifier.predict` on a ready batch (normalize, forward, softmax; CUDA synchronized)."""
    classifier = classifier_cache.get(model_case)
    call = timed_batch(classifier, model_case.batch_size)
    for _ in range(WARMUP_CALLS):  # cuDNN autotuning, allocator growth, compile: all outside the timed calls
        call()
    benchmark.group = f"model {model_case.model} {model_case.device}"
    benchmark.extra_info.update(
        kind="model",
        model=model_case.model,
        device=model_case.device,
        batch_size=model_case.batch_size,
        precision=model_case.precision,
        channels_last=model_case.channels_last,
        compile=model_case.compile,
        input_size=classifier.spec.input_size,
    )
    out = benchmark(call)
    assert out.shape == (model_case.batch_size, len(classifier.labels))
    benchmark.extra_info["images_per_s"] = round(model_case.batch_size / benchmark.stats.stats.median, 2)

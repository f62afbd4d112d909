"""CUDA graphs in the image model: buckets, padding and slicing (CPU, the runner without capture), and on a real GPU
graph against eager outputs, every batch size served without recapture, and per-bucket timings (printed)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from image_classifier.demo import LABELS, render_sample
from image_classifier.graphs import StaticBatchRunner, bucket_for, graph_buckets, inverse_order
from image_classifier.model import ImageClassifier
from image_classifier.settings import Settings
from testkit import encode

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize(
    ("max_batch_size", "buckets"),
    [
        (1, (1,)),
        (2, (1, 2)),
        (16, (1, 2, 4, 8, 16)),
        (64, (1, 2, 4, 8, 16, 32, 64)),
        (100, (1, 2, 4, 8, 16, 32, 64, 100)),
        (128, (1, 2, 4, 8, 16, 32, 64, 128)),
    ],
)
def test_buckets_are_powers_of_two_up_to_the_largest_batch(max_batch_size: int, buckets: tuple[int, ...]) -> None:
    assert graph_buckets(max_batch_size) == buckets


def test_a_batch_takes_the_smallest_bucket_that_holds_it() -> None:
    buckets = graph_buckets(100)
    assert [bucket_for(n, buckets) for n in (1, 2, 3, 5, 8, 9, 33, 64, 65, 100)] == [
        1,
        2,
        4,
        8,
        8,
        16,
        64,
        64,
        100,
        100,
    ]
    for n in (0, 101):
        with pytest.raises(ValueError, match="fits no bucket"):
            bucket_for(n, buckets)
    with pytest.raises(ValueError, match="at least 1"):
        graph_buckets(0)


def test_inverse_order_puts_rows_back() -> None:
    assert inverse_order([0, 1, 2]) is None
    order = [2, 0, 3, 1]
    inverse = inverse_order(order)
    assert inverse is not None
    rows = torch.tensor(order)  # row p holds item order[p]
    assert rows[torch.tensor(inverse)].tolist() == [0, 1, 2, 3]


class Recorder:
    """A forward that records the batch sizes it is called with; each output row is its input image's pixel sum."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        self.sizes.append(batch.shape[0])
        return batch.flatten(1).sum(1, keepdim=True).float()


def test_batches_are_padded_to_their_bucket_and_sliced_back() -> None:
    forward = Recorder()
    runner = StaticBatchRunner(forward, (3, 4, 4), graph_buckets(8), torch.device("cpu"))
    images = [torch.full((3, 4, 4), i, dtype=torch.uint8) for i in range(1, 9)]
    for n in range(1, 9):
        out = runner.run(images[:n])
        assert out.shape == (n, 1)
        assert out[:, 0].tolist() == [48.0 * i for i in range(1, n + 1)]
    assert forward.sizes == [1, 2, 4, 4, 8, 8, 8, 8], "each batch runs at its bucket's size"
    out = runner.run(images[:1])
    assert out[:, 0].tolist() == [48.0], "rows left from a bigger batch stay out of the answer"
    assert out.data_ptr() != runner.static_in.data_ptr()


def test_host_rows_then_device_rows() -> None:
    runner = StaticBatchRunner(Recorder(), (3, 4, 4), graph_buckets(8), torch.device("cpu"))
    host = [torch.full((3, 4, 4), 1, dtype=torch.uint8), torch.full((3, 4, 4), 2, dtype=torch.uint8)]
    on_device = torch.stack([torch.full((3, 4, 4), 7, dtype=torch.uint8)] * 3)
    assert runner.run(host, on_device)[:, 0].tolist() == [48.0, 96.0, 336.0, 336.0, 336.0]
    assert runner.run([], on_device[:1])[:, 0].tolist() == [336.0]


def demo_items(model: ImageClassifier, n: int) -> list[torch.Tensor]:
    """n preprocessed demo images (CPU path: uint8 CHW tensors)."""
    cpu = [model.preprocess(encode(render_sample(LABELS[i % len(LABELS)], 700 + i))) for i in range(n)]
    return [item for item in cpu if isinstance(item, torch.Tensor)]


def test_the_padded_network_answers_as_the_unpadded_one(bundles: dict[str, Path]) -> None:
    """The real model's forward through the runner (no capture on the CPU): every size 1..max padded to its bucket
    gives the rows that an unpadded batch gives."""
    model = ImageClassifier(Settings(model_uri=str(bundles["image-demo"]), device="cpu", max_batch_size=8))
    model.load()
    assert model.graphs is None, "no graphs on the CPU: eager is the CPU path"
    size = model.spec.input_size
    runner = StaticBatchRunner(model._forward, (3, size, size), graph_buckets(8), model.device)
    items = demo_items(model, 8)
    assert len(items) == 8
    for n in range(1, 9):
        padded, eager = runner.run(items[n - 1 :: -1][:n]), model.predict(items[n - 1 :: -1][:n])
        assert torch.allclose(padded, eager, atol=1e-5), n


def test_cuda_graphs_stay_off_on_the_cpu(bundles: dict[str, Path]) -> None:
    model = ImageClassifier(Settings(model_uri=str(bundles["image-demo"]), device="cpu", cuda_graphs=True))
    model.load()
    assert model.graphs is None
    assert model.describe()["cuda_graphs"] is None
    assert not model.notes


# -- on a real GPU -------------------------------------------------------------------------------------------------


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize(("precision", "channels_last", "tolerance"), [("fp32", False, 1e-3), ("fp16", True, 2e-2)])
def test_graph_replay_matches_eager(
    bundles: dict[str, Path], precision: str, channels_last: bool, tolerance: float
) -> None:
    settings = dict(model_uri=str(bundles["image-demo"]), device="cuda", max_batch_size=16, gpu_decode="off")
    graphs = ImageClassifier(Settings(**settings, precision=precision, channels_last=channels_last))  # type: ignore[arg-type]
    eager = ImageClassifier(Settings(**settings, precision=precision, channels_last=channels_last, cuda_graphs=False))  # type: ignore[arg-type]
    graphs.load()
    eager.load()
    assert graphs.graphs is not None, graphs.notes
    assert graphs.describe()["cuda_graphs"] == [1, 2, 4, 8, 16]
    assert eager.graphs is None
    assert not graphs.notes
    items = demo_items(graphs, 16)
    for n in (1, 3, 16):
        replayed, reference = graphs.predict(items[:n]), eager.predict(items[:n])
        assert replayed.shape == reference.shape == (n, len(LABELS))
        assert (replayed.argmax(1) == reference.argmax(1)).float().mean() >= 0.95
        assert torch.allclose(replayed, reference, atol=tolerance), float((replayed - reference).abs().max())


@needs_cuda
@pytest.mark.gpu
def test_a_warm_model_serves_every_batch_size_without_recapture(bundles: dict[str, Path]) -> None:
    model = ImageClassifier(
        Settings(model_uri=str(bundles["image-demo"]), device="cuda", max_batch_size=12, gpu_decode="off")
    )
    model.load()
    runner = model.graphs
    assert runner is not None, model.notes
    assert runner.buckets == (1, 2, 4, 8, 12)
    graphs = dict(runner.graphs)

    def no_eager(batch: torch.Tensor) -> torch.Tensor:
        raise AssertionError(f"an eager forward (or a capture) ran for a batch of {batch.shape[0]}")

    runner.forward = no_eager
    model._forward = no_eager  # type: ignore[method-assign]
    items = demo_items(model, 12)
    for n in range(1, 13):
        assert model.predict(items[:n]).shape == (n, len(LABELS))
    assert runner.graphs == graphs, "no graph was captured after load"
    assert all(runner.graphs[b] is graphs[b] for b in graphs)


@needs_cuda
@pytest.mark.gpu
def test_graph_and_eager_timings_per_bucket() -> None:
    """Not a pass/fail figure: prints resnet50 fp16 channels_last model-only p50 per bucket, graph vs eager (the GPU
    run reads them with -s); asserts only that both ran."""
    from ops.perf.benchmodels import ensure_resnet50_bundle

    settings = dict(
        model_uri=str(ensure_resnet50_bundle()), device="cuda", precision="fp16", channels_last=True, max_batch_size=128
    )
    graphs = ImageClassifier(Settings(**settings, gpu_decode="off"))  # type: ignore[arg-type]
    eager = ImageClassifier(Settings(**settings, gpu_decode="off", cuda_graphs=False))  # type: ignore[arg-type]
    graphs.load()
    eager.load()
    assert graphs.graphs is not None, graphs.notes
    item = torch.randint(0, 256, (3, 224, 224), dtype=torch.uint8)
    rows = []
    for bucket in graphs.graphs.buckets:
        p50 = {}
        for name, model in (("graph", graphs), ("eager", eager)):
            batch = [item] * bucket
            model.postprocess(model.predict(batch))
            samples = []
            for _ in range(15):
                start = time.perf_counter()
                model.postprocess(model.predict(batch))
                samples.append(time.perf_counter() - start)
            p50[name] = sorted(samples)[len(samples) // 2]
        graph_s, eager_s = p50["graph"], p50["eager"]
        rows.append(
            f"b{bucket}: graph {graph_s * 1e3:.2f} ms ({bucket / graph_s:,.0f} img/s), "
            f"eager {eager_s * 1e3:.2f} ms ({bucket / eager_s:,.0f} img/s), x{eager_s / graph_s:.2f}"
        )
    print(f"resnet50 fp16 channels_last predict+postprocess p50, {torch.cuda.get_device_name()}:\n" + "\n".join(rows))
    assert len(rows) == len(graphs.graphs.buckets)

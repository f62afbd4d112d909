"""CUDA graphs for the image model: one graph per batch bucket, replayed on a static input a batch is padded into."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch

log = logging.getLogger(__name__)

Forward = Callable[[torch.Tensor], torch.Tensor]
"""uint8 NCHW on the device -> probabilities (N, classes), float32: normalize, layout, autocast and network."""

WARMUP_RUNS = 2  # eager runs per bucket before capture (cuDNN picks its kernels, lazy initialization happens)


def graph_buckets(max_batch_size: int) -> tuple[int, ...]:
    """The batch sizes graphs are captured for: the powers of two below `max_batch_size`, then `max_batch_size`
    itself, so a full batch (the common one under load) is never padded."""
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be at least 1, not {max_batch_size}")
    powers = [1 << i for i in range(max_batch_size.bit_length()) if 1 << i < max_batch_size]
    return (*powers, max_batch_size)


def bucket_for(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds `n` items (buckets in ascending order)."""
    for bucket in buckets:
        if bucket >= n >= 1:
            return bucket
    raise ValueError(f"a batch of {n} fits no bucket of {tuple(buckets)}")


def inverse_order(order: Sequence[int]) -> list[int] | None:
    """Where each original position went, for rows laid out in `order` (None when `order` is already 0..n-1)."""
    if all(i == position for position, i in enumerate(order)):
        return None
    inverse = [0] * len(order)
    for position, i in enumerate(order):
        inverse[i] = position
    return inverse


class StaticBatchRunner:
    """Runs `forward` on fixed batch sizes: a batch of n is written into the first n rows of a static uint8 input
    (rows n..bucket keep stale images, harmless: no layer mixes rows in eval mode), and the first n output rows are
    returned. On CUDA each bucket is a captured graph replayed on that input; `capture=False` calls `forward` on the
    padded input instead (the CPU tests run this path: same padding and slicing, no graph).

    One thread at a time (the engine's inference thread): the static buffers are shared by every call.
    """

    def __init__(
        self,
        forward: Forward,
        item_shape: tuple[int, ...],
        buckets: Sequence[int],
        device: torch.device,
    ) -> None:
        self.forward = forward
        self.buckets = tuple(sorted(buckets))
        self.device = device
        batch_shape = (self.buckets[-1], *item_shape)
        self.static_in = torch.zeros(batch_shape, dtype=torch.uint8, device=device)
        cuda = device.type == "cuda"
        # Host side of the copy: pinned, so the host-to-device copy is asynchronous and does not stage.
        self.host_in = torch.zeros(batch_shape, dtype=torch.uint8, pin_memory=cuda)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.static_out: dict[int, torch.Tensor] = {}
        self._copied: torch.cuda.Event | None = torch.cuda.Event() if cuda else None

    @property
    def captured(self) -> bool:
        return bool(self.graphs)

    def capture(self) -> None:
        """Capture one graph per bucket, largest first, sharing one memory pool (the graphs never run at once)."""
        with torch.inference_mode():
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for bucket in reversed(self.buckets):
                    for _ in range(WARMUP_RUNS):
                        self.forward(self.static_in[:bucket])
            torch.cuda.current_stream(self.device).wait_stream(side)
            torch.cuda.synchronize(self.device)
            pool = torch.cuda.graph_pool_handle()
            for bucket in reversed(self.buckets):
                graph = torch.cuda.CUDAGraph()
                # thread_local: CUDA work of other threads (a front never has any; tests might) cannot void it
                with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
                    out = self.forward(self.static_in[:bucket])
                self.graphs[bucket], self.static_out[bucket] = graph, out
            torch.cuda.synchronize(self.device)

    def run(self, host: Sequence[torch.Tensor], on_device: torch.Tensor | None = None) -> torch.Tensor:
        """Probabilities for `host` items (uint8 CHW on the CPU) then `on_device` rows (uint8 NCHW on the device),
        in that order: a new tensor of n rows, not a view of the static output (the next call overwrites that)."""
        k = len(host)
        n = k + (0 if on_device is None else on_device.shape[0])
        bucket = bucket_for(n, self.buckets)
        with torch.inference_mode():
            if k:
                if self._copied is not None:
                    self._copied.synchronize()  # the last host-to-device copy has read the pinned rows
                torch.stack(list(host), out=self.host_in[:k])
                self.static_in[:k].copy_(self.host_in[:k], non_blocking=True)
                if self._copied is not None:
                    self._copied.record()
            if on_device is not None and on_device.shape[0]:
                self.static_in[k:n].copy_(on_device)
            if bucket in self.graphs:
                self.graphs[bucket].replay()
                out = self.static_out[bucket]
            else:
                out = self.forward(self.static_in[:bucket])
            return out[:n].clone()

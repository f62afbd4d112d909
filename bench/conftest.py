"""pytest-benchmark setup: the device/batch/precision matrix, shared fixtures, and the machine facts in every JSON."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from ops.perf.benchmodels import MODELS, ModelCase, cuda_available, load_classifier
from ops.perf.benchmodels import machine_info as describe_machine

# Small on CPU so `invoke bench` finishes in minutes on 2 cores; --bench-full for the whole matrix.
CPU_BATCHES = (1, 8)
CPU_BATCHES_FULL = (1, 8, 32, 64)
CUDA_BATCHES = (1, 8, 32, 64, 128, 256)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("bench", "eks-inference benchmarks")
    group.addoption(
        "--bench-device",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="auto: cpu, plus cuda when present; cpu/cuda: only that device (cuda skips when absent).",
    )
    group.addoption(
        "--bench-full",
        action="store_true",
        help="The full CPU matrix (batches up to 64, channels_last).",
    )
    group.addoption(
        "--bench-compile",
        action="store_true",
        help="Add torch.compile (and CUDA graphs on CUDA) variants.",
    )
    group.addoption(
        "--bench-models",
        default=",".join(MODELS),
        help="Comma list of models: resnet50,demo.",
    )
    group.addoption(
        "--bench-http-batching",
        default="on,off",
        help="HTTP benchmarks: which services to start, batching on and/or off (each is one service start).",
    )
    group.addoption(
        "--bench-precisions",
        default="",
        help="Override CUDA precisions, e.g. fp16 (default: fp32,fp16,bf16).",
    )
    group.addoption(
        "--bench-layouts",
        default="",
        help="Override CUDA layouts: nchw and/or channels_last (default: both).",
    )
    group.addoption(
        "--bench-batches",
        default="",
        help="Override batch sizes, e.g. 1,16 (default: per device).",
    )


def selected_devices(config: pytest.Config) -> list[str]:
    """Devices to parametrize over; cuda is listed even when absent when asked for, so it shows as skipped."""
    choice = config.getoption("--bench-device")
    if choice == "auto":
        return ["cpu", "cuda"] if cuda_available() else ["cpu"]
    return [choice]


def _listed(config: pytest.Config, option: str) -> list[str]:
    return [part.strip() for part in str(config.getoption(option)).split(",") if part.strip()]


def model_cases(config: pytest.Config) -> list[ModelCase]:
    """The model-only matrix; batch size varies fastest so one loaded model serves consecutive cases."""
    full = config.getoption("--bench-full")
    compile_variants = config.getoption("--bench-compile")
    override = [int(b) for b in config.getoption("--bench-batches").split(",") if b.strip()]
    models = [m.strip() for m in config.getoption("--bench-models").split(",") if m.strip()]
    cases = []
    for device in selected_devices(config):
        if device == "cuda":
            batches = override or list(CUDA_BATCHES)
            precisions = _listed(config, "--bench-precisions") or ["fp32", "fp16", "bf16"]
            layouts = [name == "channels_last" for name in _listed(config, "--bench-layouts")] or [False, True]
            compiles = ["eager", "compile", "cudagraphs"] if compile_variants else ["eager"]
        else:
            batches = override or list(CPU_BATCHES_FULL if full else CPU_BATCHES)
            # The service runs fp32 on CPU (autocast is a CUDA option there), so CPU benches fp32 only.
            precisions = ["fp32"]
            layouts = [False, True] if full else [False]
            compiles = ["eager", "compile"] if compile_variants else ["eager"]
        for model in models:
            for precision in precisions:
                for channels_last in layouts:
                    for compile_mode in compiles:
                        for batch in batches:
                            cases.append(
                                ModelCase(
                                    model,
                                    device,
                                    batch,
                                    precision,
                                    channels_last,
                                    compile_mode,
                                )
                            )
    return cases


NO_CUDA = pytest.mark.skipif(not cuda_available(), reason="CUDA is not available on this machine")


def _param(value: Any, device: str, id_: str) -> Any:
    return pytest.param(value, id=id_, marks=[pytest.mark.gpu, NO_CUDA] if device == "cuda" else [])


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "model_case" in metafunc.fixturenames:
        cases = model_cases(metafunc.config)
        metafunc.parametrize("model_case", [_param(c, c.device, c.id) for c in cases])
    if "device" in metafunc.fixturenames:
        # Module scope, so a module-scoped service fixture can depend on the device.
        metafunc.parametrize(
            "device",
            [_param(d, d, d) for d in selected_devices(metafunc.config)],
            scope="module",
        )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect (not skip) the HTTP cases whose batching mode --bench-http-batching leaves out."""
    wanted = {f"batching-{mode.strip()}" for mode in config.getoption("--bench-http-batching").split(",")}
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        mode = callspec.params.get("service") if callspec is not None else None
        (drop if mode is not None and mode not in wanted else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict[str, Any]) -> None:
    """Every saved JSON states device, torch version and host facts (the load average goes elsewhere: it differs
    between runs, and pytest-benchmark --benchmark-compare warns on any machine_info difference)."""
    facts = describe_machine()
    facts.pop("load_average_1m", None)
    machine_info["eks_inference"] = facts


def pytest_benchmark_update_json(config: pytest.Config, benchmarks: Any, output_json: dict[str, Any]) -> None:
    """The machine's load when the run ended: a shared machine's load moves every number."""
    output_json["load_average_1m"] = round(os.getloadavg()[0], 2)


class _ClassifierCache:
    """Keeps the last loaded classifier so consecutive batch sizes reuse it; frees GPU memory on switch."""

    def __init__(self) -> None:
        self.key: tuple[Any, ...] | None = None
        self.value: Any = None

    def get(self, case: ModelCase) -> Any:
        if self.key != case.load_key:
            self.value = None
            gc.collect()
            if cuda_available():
                torch.cuda.empty_cache()
            self.value = load_classifier(
                case.model,
                case.device,
                case.precision,
                case.channels_last,
                case.compile,
            )
            self.key = case.load_key
        return self.value


@pytest.fixture(scope="session")
def classifier_cache() -> Iterator[_ClassifierCache]:
    cache = _ClassifierCache()
    yield cache
    cache.value = None

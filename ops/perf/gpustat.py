"""GPU utilization while a load level runs: `nvidia-smi -lms` sampling, or NVML through pynvml; skipped cleanly.

Utilization is NVML's `utilization.gpu`: the share of the last sample period in which at least one kernel ran on
the GPU (coarse: one busy SM counts as busy), the figure every serving system's users quote.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import tempfile
import threading
from types import TracebackType
from typing import IO, Any, Self

from ops import core

SAMPLE_MS = 100


def sampler_kind() -> str | None:
    """`nvidia-smi`, `pynvml`, or None when neither can read the GPU here."""
    if shutil.which("nvidia-smi"):
        return "nvidia-smi"
    try:
        import pynvml  # type: ignore[import-not-found, unused-ignore]

        pynvml.nvmlInit()
        return "pynvml"
    except Exception:  # no library, no driver, no GPU: all mean "cannot sample"
        return None


def summarize(samples: list[float]) -> dict[str, Any]:
    """Mean, p50 and max of utilization samples (percent); the first one is dropped (it covers time before)."""
    kept = samples[1:] if len(samples) > 1 else samples
    if not kept:
        return {}
    return {
        "mean": round(statistics.fmean(kept), 1),
        "p50": round(statistics.median(kept), 1),
        "max": round(max(kept), 1),
        "samples": len(kept),
    }


def parse_smi(text: str) -> list[float]:
    """GPU 0's utilization per line of `nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits`."""
    values = []
    for line in text.splitlines():
        first = line.split(",")[0].strip()
        try:
            values.append(float(first))
        except ValueError:
            continue  # "[N/A]", a partial last line
    return values


class GpuSampler:
    """`with GpuSampler() as gpu: ...` samples GPU 0 every SAMPLE_MS; `gpu.result` is then summarize()'s dict,
    or {"skipped": why} where nothing can sample."""

    def __init__(self, kind: str | None = "auto") -> None:
        self.kind = sampler_kind() if kind == "auto" else kind
        self.result: dict[str, Any] = {}
        self._proc: subprocess.Popen[Any] | None = None
        self._out: IO[bytes] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._samples: list[float] = []

    def __enter__(self) -> Self:
        if self.kind == "nvidia-smi":
            self._out = tempfile.TemporaryFile()
            self._proc = core.start(
                [
                    "nvidia-smi",
                    "--query-gpu=utilization.gpu",
                    "--format=csv,noheader,nounits",
                    "--id=0",
                    f"-lms={SAMPLE_MS}",
                ],
                stdout=self._out,
                stderr=subprocess.DEVNULL,
            )
        elif self.kind == "pynvml":
            self._thread = threading.Thread(target=self._nvml_loop, name="gpu-sampler", daemon=True)
            self._thread.start()
        return self

    def _nvml_loop(self) -> None:
        import pynvml

        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        while not self._stop.wait(SAMPLE_MS / 1000):
            self._samples.append(float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._proc is not None and self._out is not None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
            self._out.seek(0)
            self._samples = parse_smi(self._out.read().decode(errors="replace"))
            self._out.close()
        elif self._thread is not None:
            self._stop.set()
            self._thread.join(5)
        if self.kind is None:
            self.result = {"skipped": "no nvidia-smi and no pynvml here"}
        else:
            self.result = summarize(self._samples) or {"skipped": f"{self.kind} gave no samples"}
            self.result["by"] = self.kind

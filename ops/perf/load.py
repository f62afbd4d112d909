"""vegeta load tests on /v1/predict: loopback image server, targets file, constant-rate and step attacks, reports."""

from __future__ import annotations

import functools
import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from ops import core
from ops.core import OpsError, console, is_dry, out
from ops.fileserver import FileServer
from ops.perf.closedloop import Call, VegetaReport
from ops.perf.report import timestamp

# The defaults of `invoke bench.load` (and of the step run `invoke bench.capacity` starts): stated here only.
RATE = 20.0
DURATION = "10s"
HIST_BUCKETS = "0,5ms,10ms,25ms,50ms,100ms,250ms,500ms,1s,2.5s,5s"
START_RATE = 5.0
FACTOR = 2.0
MAX_RATE = 320.0
SLO_P99_MS = 250.0
MIN_SUCCESS = 0.99
IMAGES = 8
ATTACK_TIMEOUT = "10s"
# vegeta opens workers as needed to hold the rate; cap them so an overloaded service cannot exhaust the machine.
MAX_WORKERS = 256


def vegeta_path() -> Path:
    """The vegeta binary: $VEGETA (bench/gpu/run.sh sets it), else the pinned one (ops.toolchain), else PATH."""
    if os.environ.get("VEGETA"):
        return Path(os.environ["VEGETA"])
    from ops.toolchain import tools  # inside the function: the GPU runner imports this module without the toolchain

    try:
        return Path(tools.ensure("vegeta"))
    except OpsError as error:  # fall back to PATH, and say why if that fails too
        reason = str(error)
    found = shutil.which("vegeta")
    if not found:
        raise FileNotFoundError(f"vegeta not found ({reason}): `invoke tools.install -n vegeta`, or set VEGETA")
    return Path(found)


def write_sample_images(folder: Path, count: int = 8, size: int = 224) -> list[str]:
    """Write `count` JPEG inputs into `folder` and return their file names.

    The demo model's own renderer draws them, so they are correct, classifiable inputs for the demo bundle.
    """
    folder.mkdir(parents=True, exist_ok=True)
    from image_classifier.demo import LABELS, render_sample  # type: ignore[import-untyped, unused-ignore]

    names = []
    for index in range(count):
        image = render_sample(LABELS[index % len(LABELS)], index, size=size).convert("RGB")
        name = f"sample-{index:03d}.jpg"
        image.save(folder / name, format="JPEG", quality=90)
        names.append(name)
    return names


class ImageServer(FileServer):
    """The load tests' image origin: a folder on 127.0.0.1 (a free port)."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder, name="image-server")


def write_targets(path: Path, base_url: str, calls: Sequence[Call]) -> Path:
    """Write a vegeta JSON-format targets file: the calls against `base_url`, sent round-robin."""
    path.write_text("".join(call.vegeta_json(base_url) + "\n" for call in calls))
    return path


@dataclass
class LoadResult:
    """One constant-rate attack: offered rate, what came back, and where its artefacts are."""

    rate: float
    duration: str
    requests: int
    throughput: float
    success: float
    latency_ms: dict[str, float]
    status_codes: dict[str, int]
    errors: list[str]
    folder: str
    artefacts: dict[str, str] = field(default_factory=dict)
    service_cpu_seconds: float | None = None

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return asdict(self)


def parse_json_report(report: dict[str, object], *, rate: float, duration: str, folder: Path) -> LoadResult:
    """Build a LoadResult from `vegeta report -type=json` output (closedloop.VegetaReport reads it)."""
    read = VegetaReport.of(report)
    return LoadResult(
        rate=rate,
        duration=duration,
        requests=read.requests,
        throughput=round(read.throughput, 3),
        success=read.success,
        latency_ms=read.latency_ms,
        status_codes=read.status_codes,
        errors=read.errors[:20],
        folder=str(folder),
    )


def attack(
    vegeta: Path,
    targets: Path,
    folder: Path,
    *,
    rate: float,
    duration: str,
    hist_buckets: str = HIST_BUCKETS,
    timeout: str = ATTACK_TIMEOUT,
    max_workers: int = MAX_WORKERS,
    title: str = "",
    echo: Callable[[str], None] | None = None,
    extra_args: Sequence[str] = (),
) -> LoadResult:
    """One constant-rate attack; writes results.bin, report.txt, report.json, hist.txt and plot.html into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    results = folder / "results.bin"
    attack_argv = [
        str(vegeta),
        "attack",
        "-format=json",
        f"-targets={targets}",
        f"-rate={rate:g}/1s",
        f"-duration={duration}",
        f"-timeout={timeout}",
        f"-max-workers={max_workers}",
        f"-output={results}",
        *extra_args,
    ]
    reports = {
        "report.txt": [str(vegeta), "report", "-type=text", str(results)],
        "report.json": [str(vegeta), "report", "-type=json", str(results)],
        "hist.txt": [
            str(vegeta),
            "report",
            f"-type=hist[{hist_buckets}]",
            str(results),
        ],
        "plot.html": [
            str(vegeta),
            "plot",
            f"-title={title or f'{rate:g} rps for {duration}'}",
            str(results),
        ],
    }
    if echo:
        echo(" ".join(attack_argv))
    core.run(attack_argv, capture=False)
    for name, argv in reports.items():
        if echo:
            echo(" ".join(argv) + f" > {folder / name}")
        (folder / name).write_text(core.run(argv).stdout)
    result = parse_json_report(
        json.loads((folder / "report.json").read_text()),
        rate=rate,
        duration=duration,
        folder=folder,
    )
    result.artefacts = {name.split(".")[0]: str(folder / name) for name in ["results.bin", *reports]}
    return result


@dataclass
class LoadPlan:
    """What to attack and how: the service base URL and the image server that feeds it."""

    service_url: str
    results_root: Path
    image_count: int = IMAGES
    hist_buckets: str = HIST_BUCKETS
    timeout: str = ATTACK_TIMEOUT
    max_workers: int = MAX_WORKERS
    # Send the sample images as raw JPEG bodies instead of {"image_url": ...}: for a service that cannot reach
    # this machine's loopback image server (a pod in a cluster, behind a port-forward or a NodePort).
    raw: bool = False


PREDICT = "/v1/predict"


class LoadSession:
    """Prepare one run folder (images, image server, targets) and attack from it; use as a context manager."""

    def __init__(
        self,
        plan: LoadPlan,
        *,
        folder: Path | None = None,
        echo: Callable[[str], None] | None = None,
    ) -> None:
        self.plan = plan
        self.folder = folder or plan.results_root / timestamp()
        self.echo = echo
        self.vegeta = vegeta_path()
        images = self.folder / "images"
        self.image_names = write_sample_images(images, plan.image_count)
        self.image_server = ImageServer(images)
        self.targets = self.folder / "targets.jsonl"
        self.cpu_probe: Callable[[], float] | None = None

    def __enter__(self) -> Self:
        if self.plan.raw:
            folder = self.folder / "images"
            calls = [Call(PREDICT, "image/jpeg", (folder / name).read_bytes()) for name in self.image_names]
        else:
            self.image_server.__enter__()
            calls = [Call.json(PREDICT, {"image_url": f"{self.image_server.url}/{n}"}) for n in self.image_names]
        write_targets(self.targets, self.plan.service_url, calls)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.plan.raw:
            self.image_server.__exit__(exc_type, exc, tb)

    def constant(self, rate: float, duration: str, *, sub: str = "") -> LoadResult:
        """One constant-rate attack into the run folder (or a sub-folder of it)."""
        before = self.cpu_probe() if self.cpu_probe else None
        result = attack(
            self.vegeta,
            self.targets,
            self.folder / sub if sub else self.folder,
            rate=rate,
            duration=duration,
            hist_buckets=self.plan.hist_buckets,
            timeout=self.plan.timeout,
            max_workers=self.plan.max_workers,
            echo=self.echo,
        )
        if before is not None and self.cpu_probe is not None:
            result.service_cpu_seconds = round(self.cpu_probe() - before, 3)
        (Path(result.folder) / "result.json").write_text(json.dumps(result.to_dict(), indent=2))
        return result

    def step(
        self,
        rates: Sequence[float],
        step_duration: str,
        *,
        slo_p99_ms: float,
        min_success: float = MIN_SUCCESS,
        on_step: Callable[[LoadResult, bool], None] | None = None,
    ) -> StepRun:
        """Raise the rate step by step until the p99 SLO or the success ratio breaks; writes steps.json."""
        steps: list[LoadResult] = []
        for rate in rates:
            result = self.constant(rate, step_duration, sub=f"step-{rate:g}rps")
            ok = result.latency_ms["p99"] <= slo_p99_ms and result.success >= min_success
            steps.append(result)
            if on_step:
                on_step(result, ok)
            if not ok:
                break
        run = StepRun(
            service_url=self.plan.service_url,
            slo_p99_ms=slo_p99_ms,
            min_success=min_success,
            step_duration=step_duration,
            steps=steps,
            folder=str(self.folder),
        )
        run.save(self.folder / "steps.json")
        return run


@dataclass
class StepRun:
    """A step run: every step's result, and the SLO it was judged against."""

    service_url: str
    slo_p99_ms: float
    min_success: float
    step_duration: str
    steps: list[LoadResult]
    folder: str
    meta: dict[str, object] = field(default_factory=dict)

    def sustainable(self) -> LoadResult | None:
        """The highest-rate step that met both the p99 SLO and the success ratio (None if none did)."""
        good = [s for s in self.steps if s.latency_ms["p99"] <= self.slo_p99_ms and s.success >= self.min_success]
        return max(good, key=lambda s: s.rate) if good else None

    def save(self, path: Path) -> Path:
        """Write as JSON."""
        data = asdict(self)
        sustainable = self.sustainable()
        data["sustainable_rate"] = sustainable.rate if sustainable else 0.0
        path.write_text(json.dumps(data, indent=2))
        return path

    @classmethod
    def load(cls, path: Path) -> StepRun:
        """Read a steps.json written by `save`."""
        data = json.loads(path.read_text())
        data.pop("sustainable_rate", None)
        data["steps"] = [LoadResult(**s) for s in data["steps"]]
        return cls(**data)


def step_rates(start: float, factor: float, stop: float, increment: float = 0.0) -> list[float]:
    """Rates from `start` up to `stop`: multiply by `factor`, or add `increment` when it is > 0."""
    if start <= 0 or stop < start or (increment <= 0 and factor <= 1):
        raise ValueError("need 0 < start <= stop and factor > 1 (or increment > 0)")
    rates = []
    rate = start
    while rate <= stop + 1e-9:
        rates.append(round(rate, 3))
        rate = rate + increment if increment > 0 else rate * factor
    return rates


def find_latest(root: Path, name: str) -> Path | None:
    """The newest `<root>/<timestamp>/<name>` (run folders sort by time), or None."""
    candidates = sorted(p for p in root.glob(f"*/{name}") if p.is_file())
    return candidates[-1] if candidates else None


@dataclass
class LoadOptions:
    """What `invoke bench.load` was asked for: a constant-rate attack, or a step run with `step`."""

    url: str = ""  # empty: start a local image service on 127.0.0.1
    model: str = "demo"
    rate: float = RATE
    duration: str = DURATION
    hist_buckets: str = HIST_BUCKETS
    images: int = IMAGES
    raw: bool = False
    step: bool = False
    start_rate: float = START_RATE
    factor: float = FACTOR
    max_rate: float = MAX_RATE
    increment: float = 0.0
    slo_p99_ms: float = SLO_P99_MS
    min_success: float = MIN_SUCCESS


def run_load(opts: LoadOptions, folder: Path) -> LoadResult | StepRun | None:
    """The `invoke bench.load` flow into `folder`: a local service unless a URL is given, the image server, the
    attack(s) and the printed report. Under a dry run it says what it would do and returns None."""
    if is_dry():
        what = "step up the rate" if opts.step else f"attack at {opts.rate:g} rps"
        against = opts.url or "a local image service"
        console.print(f"would {what} for {opts.duration} per run against {against} into {folder}")
        return None
    from ops.perf.benchmodels import local_image_service, machine_line

    folder.mkdir(parents=True, exist_ok=True)
    with local_image_service(opts.url, opts.model, folder / "service.log") as service:
        target = service.url if service is not None else opts.url
        plan = LoadPlan(target, folder.parent, image_count=opts.images, hist_buckets=opts.hist_buckets, raw=opts.raw)
        echo = functools.partial(console.print, style="dim", markup=False, soft_wrap=True)
        with LoadSession(plan, folder=folder, echo=lambda line: echo(f"$ {line}")) as session:
            if service is not None:
                session.cpu_probe = service.cpu_seconds
            if not opts.step:
                result = session.constant(opts.rate, opts.duration)
                out.print((folder / "report.txt").read_text(), markup=False, highlight=False, soft_wrap=True)
                console.print(f"results: {folder} (report.txt, report.json, hist.txt, plot.html)")
                if result.success < 1.0:
                    console.print(f"[yellow]success ratio {result.success:.2%}[/yellow]")
                return result
            rates = step_rates(opts.start_rate, opts.factor, opts.max_rate, opts.increment)

            def report(res: LoadResult, ok: bool) -> None:
                mark = "[green]ok[/green]" if ok else "[red]broken[/red]"
                console.print(
                    f"{res.rate:>8g} rps  p99 {res.latency_ms['p99']:9.2f} ms  success {res.success:.2%}  {mark}"
                )

            run = session.step(
                rates, opts.duration, slo_p99_ms=opts.slo_p99_ms, min_success=opts.min_success, on_step=report
            )
            run.meta = {"machine": machine_line(), "model": opts.model, "url": target}
            run.save(folder / "steps.json")
            best = run.sustainable()
            console.print(
                f"highest sustainable rate per pod: {best.rate if best else 0:g} rps (p99 <= {opts.slo_p99_ms:g} ms)"
            )
            console.print(f"results: {folder / 'steps.json'}")
            return run

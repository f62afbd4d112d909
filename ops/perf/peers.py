"""Our service and the peer servers (LitServe, KServe, PyTriton) side by side: same bundle, model class, body, client
and cores; on a GPU also our engine/front split with CPU and with GPU decode, and the GPU's utilization per level.

`python -m ops.perf.peers RESULTS_DIR --device cuda ...` is what bench/gpu/run.sh runs; `invoke bench.peers` runs
`compare` on CPU.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ops.perf import bodies
from ops.perf.closedloop import Call, Level, admission_for, attack, throughput_within
from ops.perf.defaults import BATCH_SIZE, LEVEL_DURATION_S, MAX_WAIT_MS, PEER_P99_BOUND_MS
from ops.perf.gpustat import GpuSampler
from ops.perf.localservice import LocalService, exit_on_sigterm, free_port
from ops.perf.pinning import Pinning, pinning_from

# The CPU comparison (`invoke bench.peers`) and the GPU one (bench/gpu/run.sh); every name `--servers` takes.
SERVERS = ("ours", "ours-json", "litserve", "kserve")
GPU_SERVERS = ("ours", "ours-split-cpu", "ours-split-gpu", "litserve", "pytriton")
KNOWN_SERVERS = (*SERVERS, "ours-split-cpu", "ours-split-gpu", "pytriton")
PEER_PACKAGES = {"litserve": "litserve", "kserve": "kserve", "pytriton": "pytriton"}
# Longest wait for a server to be ready (load, warm-up for every batch size, CUDA graphs): past it, the server is
# reported as failed and the next one runs (the GPU run's budget cannot wait the 180 s LocalService would).
READY_TIMEOUT_S = 120.0
# Our variants: the settings each one needs the service to know (skipped, saying so, when it does not: the split
# and GPU decode land with issue 22's steps 3 and 4), and those it sets only when the service knows them.
# Single-process decodes on the CPU, as the service always did; CUDA graphs are on for every variant on a GPU.
VARIANTS: dict[str, tuple[dict[str, str], dict[str, str]]] = {
    "ours": ({}, {"GPU_DECODE": "off"}),
    "ours-json": ({}, {"GPU_DECODE": "off"}),
    "ours-split-cpu": ({"SPLIT": "true", "FRONTS": "{fronts}"}, {"GPU_DECODE": "off"}),
    "ours-split-gpu": ({"SPLIT": "true", "FRONTS": "{fronts}", "GPU_DECODE": "auto"}, {}),
}


@dataclass
class PeerConfig:
    """What to compare and how long; the defaults fit a 2-core CPU in about 2 minutes."""

    servers: tuple[str, ...] = SERVERS
    model: str = "demo"
    max_batch_size: int = BATCH_SIZE
    max_wait_ms: float = MAX_WAIT_MS
    concurrency: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    level_duration_s: float = LEVEL_DURATION_S
    p99_bound_ms: float = PEER_P99_BOUND_MS
    pin: str = "auto"
    device: str = "cpu"
    precision: str = "fp32"
    channels_last: bool = False
    body: str = bodies.DEFAULT_BODY
    fronts: int = 0  # front processes of the split; 0: the service's CPUs less two (the engine's), at least 1
    # LitServe's processes; 0: a third of the service's CPUs each (at least 1). It decodes in its inference
    # workers (workers_per_device), and parses HTTP in its API servers (num_api_servers).
    litserve_workers: int = 0
    litserve_api_servers: int = 0


@dataclass
class ServerResult:
    """One server's levels and the numbers the peer table reports."""

    server: str
    request: str
    batching: str
    levels: list[Level]
    saturation: float
    within_bound: float
    lone_p50_ms: float
    lone_p99_ms: float
    rss_mib: float
    notes: list[str] = field(default_factory=list)
    settings: dict[str, str] = field(default_factory=dict)  # what the server was started with (ours: its env)
    runtime: dict[str, str] = field(default_factory=dict)  # HTTP parser and event loop (LocalService.http_runtime)
    gpu_util: list[dict[str, Any]] = field(default_factory=list)  # per level, ops.perf.gpustat.summarize


def peer_available(server: str) -> bool:
    """True when the peer's package is installed (the `peers` dependency group); ours always is."""
    package = PEER_PACKAGES.get(server)
    return package is None or importlib.util.find_spec(package) is not None


def service_settings_known() -> set[str]:
    """The setting names (upper case, no prefix) the image service knows, from its Settings class."""
    from image_classifier.settings import Settings  # type: ignore[import-untyped, unused-ignore]

    return {name.upper() for name in Settings.model_fields}


def fronts_for(cfg: PeerConfig, pinning: Pinning) -> int:
    """The split's front processes: cfg.fronts, else the service's CPUs less two for the engine (at least 1)."""
    return cfg.fronts or max(1, pinning.service_cpus - 2)


def litserve_processes(cfg: PeerConfig, pinning: Pinning) -> tuple[int, int]:
    """(workers_per_device, num_api_servers) for LitServe: cfg's, else a third of the service's CPUs each."""
    share = max(1, pinning.service_cpus // 3)
    return cfg.litserve_workers or share, cfg.litserve_api_servers or share


def variant_settings(server: str, cfg: PeerConfig, pinning: Pinning, known: set[str]) -> tuple[dict[str, str], str]:
    """The extra settings of one of our variants, and why it cannot run here ('' when it can)."""
    required, optional = VARIANTS[server]
    fronts = str(fronts_for(cfg, pinning))
    settings = {k: v.format(fronts=fronts) for k, v in required.items()}
    missing = sorted(k for k in settings if k not in known)
    if missing:
        names = ", ".join(f"IMAGE_CLASSIFIER_{k}" for k in missing)
        return settings, f"the image service does not know {names} yet (Settings.model_fields)"
    if server == "ours-split-gpu" and cfg.device != "cuda":
        return settings, "GPU decode needs --device cuda"
    settings.update({k: v for k, v in optional.items() if k in known})
    if cfg.device == "cuda" and "CUDA_GRAPHS" in known:
        settings["CUDA_GRAPHS"] = "true"
    return settings, ""


def server_process(
    server: str, cfg: PeerConfig, pinning: Pinning, log_path: Path, extra: dict[str, str] | None = None
) -> tuple[LocalService, Call]:
    """The process serving `server` on the service CPUs, and the request it gets (the same JPEG for every one)."""
    from ops.perf.benchmodels import bundle_for

    bundle, body = str(bundle_for(cfg.model)), bodies.sample_body(cfg.body)
    if server.startswith("ours"):
        settings = {
            "MODEL_URI": bundle,
            "DEVICE": cfg.device,
            "PRECISION": cfg.precision,
            "CHANNELS_LAST": str(cfg.channels_last).lower(),
            "MAX_BATCH_SIZE": str(cfg.max_batch_size),
            "MAX_WAIT_MS": str(cfg.max_wait_ms),
            **admission_for(cfg.concurrency),
            "LOG_LEVEL": "warning",
            "REQUEST_TIMEOUT_S": "30",
            **(extra or {}),
        }
        # The split is a supervisor with children: a process group of its own, so that stop() ends every one.
        command = [sys.executable, "-m", "image_classifier"] if settings.get("SPLIT") == "true" else None
        service = LocalService(
            "image_classifier",
            settings,
            log_path=log_path,
            prefix_argv=pinning.service_prefix(),
            command=command,
            ready_timeout_s=READY_TIMEOUT_S,
        )
        if server != "ours-json":
            return service, Call("/v1/predict", "image/jpeg", body)
        document = json.dumps({"image_b64": base64.b64encode(body).decode()}).encode()
        return service, Call("/v1/predict", "application/json", document)
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "ops.perf.peerapps",
        server,
        f"--model-uri={bundle}",
        f"--port={port}",
        f"--max-batch-size={cfg.max_batch_size}",
        f"--max-wait-ms={cfg.max_wait_ms}",
        f"--device={cfg.device}",
        f"--precision={cfg.precision}",
        *(["--channels-last"] if cfg.channels_last else []),
    ]
    if server == "litserve":
        workers, api_servers = litserve_processes(cfg, pinning)
        command += [f"--workers-per-device={workers}", f"--api-servers={api_servers}"]
        ready, call = "/health", Call("/v1/predict", "image/jpeg", body)
    elif server == "pytriton":
        workers, _ = litserve_processes(cfg, pinning)  # model instances: as many as LitServe's workers
        command += [f"--workers-per-device={workers}"]
        from ops.perf.peermodel import MODEL_NAME
        from ops.perf.perfanalyzer import v2_binary_call

        # Triton's HTTP front: the v2 binary tensor extension carries the JPEG bytes as they are.
        ready, call = "/v2/health/ready", v2_binary_call(MODEL_NAME, "IMAGE", [body], shape=[1, 1])
    else:
        from ops.perf.peermodel import MODEL_NAME

        ready = f"/v1/models/{MODEL_NAME}"
        target_body = json.dumps({"instances": [{"image_b64": base64.b64encode(body).decode()}]}).encode()
        call = Call(f"/v1/models/{MODEL_NAME}:predict", "application/json", target_body)
    service = LocalService(
        f"peer_{server}",  # env prefix PEER_<SERVER>_: nothing a peer reads
        {},
        log_path=log_path,
        prefix_argv=pinning.service_prefix(),
        command=command,
        ready_path=ready,
        port=port,
        ready_timeout_s=READY_TIMEOUT_S,
    )
    return service, call


REQUESTS = {
    "ours": "raw JPEG body",
    "ours-json": '{"image_b64"} JSON',
    "ours-split-cpu": "raw JPEG body",
    "ours-split-gpu": "raw JPEG body",
    "litserve": "raw JPEG body",
    "kserve": 'v1 {"instances": [{"image_b64"}]} JSON',
    "pytriton": "v2 binary tensor extension (the JPEG bytes as one BYTES element)",
}


def batching_of(server: str, cfg: PeerConfig) -> str:
    if server == "kserve":
        return "none in-process (KServe batches in its Go agent sidecar)"
    if server == "pytriton":
        return f"Triton's dynamic batcher: max {cfg.max_batch_size}, queue delay {cfg.max_wait_ms:g} ms"
    return f"max {cfg.max_batch_size}, wait {cfg.max_wait_ms:g} ms"


def run_server(
    server: str,
    cfg: PeerConfig,
    pinning: Pinning,
    vegeta: Path,
    folder: Path,
    echo: Callable[[str], None],
    extra: dict[str, str] | None = None,
) -> ServerResult:
    """Start one server, check one answer, sweep the closed-loop levels (sampling the GPU on CUDA), read its
    memory and its HTTP parser and loop, stop it."""
    service, call = server_process(server, cfg, pinning, folder / f"{server}{_suffix(cfg)}.log", extra)
    levels: list[Level] = []
    gpu: list[dict[str, Any]] = []
    with service, tempfile.TemporaryDirectory() as scratch:
        import httpx

        answer = httpx.post(
            service.url + call.path,
            content=call.body,
            headers={"Content-Type": call.content_type, **dict(call.headers)},
            timeout=60,
        )
        answer.raise_for_status()
        runtime = service.http_runtime()
        for concurrency in cfg.concurrency:
            with GpuSampler("auto" if cfg.device == "cuda" else None) as sampler:
                level, _ = attack(
                    vegeta, service.url, call, concurrency, cfg.level_duration_s, Path(scratch), pinning.client_prefix()
                )
            gpu.append(sampler.result if cfg.device == "cuda" else {})
            busy = f"  GPU {gpu[-1]['mean']:5.1f}%" if "mean" in gpu[-1] else ""
            echo(
                f"  {server:<14} c={concurrency:<4} {level.throughput:8.1f} img/s  p50 {level.p50_ms:7.2f} ms  "
                f"p99 {level.p99_ms:8.2f} ms  ok {level.ok}/{level.requests}{busy}"
            )
            levels.append(level)
        rss = service.rss_bytes() / 2**20
    lone = next((level for level in levels if level.concurrency == 1), levels[0])
    notes = [] if all(level.ok == level.requests for level in levels) else ["some requests failed: see levels"]
    if server.startswith("ours-split"):
        notes.append("RSS sums every process: shared memory is counted once per process that maps it")
    return ServerResult(
        server=server,
        request=REQUESTS[server],
        batching=batching_of(server, cfg),
        levels=levels,
        saturation=max(level.throughput for level in levels),
        within_bound=throughput_within(levels, cfg.p99_bound_ms),
        lone_p50_ms=lone.p50_ms,
        lone_p99_ms=lone.p99_ms,
        rss_mib=round(rss, 1),
        notes=notes,
        settings=dict(service.settings) if server.startswith("ours") else {"argv": " ".join(service.command or [])},
        runtime=runtime,
        gpu_util=gpu,
    )


def _suffix(cfg: PeerConfig) -> str:
    """File-name suffix of a run on a body other than the default: `-large`."""
    return "" if cfg.body == bodies.DEFAULT_BODY else f"-{cfg.body}"


def reference(results: Sequence[ServerResult]) -> ServerResult | None:
    """The ours the peers are compared with: the variant with the best throughput within the bound (raw body)."""
    mine = [r for r in results if r.server.startswith("ours") and r.server != "ours-json"]
    return max(mine, key=lambda r: (r.within_bound, r.saturation), default=None)


def ratios(results: Sequence[ServerResult], ours: str | None = None) -> dict[str, dict[str, float]]:
    """ours ÷ peer for each peer: throughputs (above 1 is ours better) and lone p50 (below 1 is ours better).
    `ours` names the variant; by default the reference() one."""
    mine = next((r for r in results if r.server == ours), None) if ours else reference(results)
    if mine is None:
        return {}

    def div(a: float, b: float) -> float:
        return round(a / b, 3) if b else float("inf")

    return {
        r.server: {
            "saturation": div(mine.saturation, r.saturation),
            "within_bound": div(mine.within_bound, r.within_bound),
            "lone_p50": div(mine.lone_p50_ms, r.lone_p50_ms),
            "rss": div(mine.rss_mib, r.rss_mib),
        }
        for r in results
        if not r.server.startswith("ours")  # ours-json is our own server with kserve's kind of request
    }


def compare(cfg: PeerConfig, folder: Path, echo: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Every server in `cfg.servers` in turn, same body, client and cores; writes peers[-BODY].json, returns it."""
    from ops.perf.benchmodels import bundle_for, machine_info
    from ops.perf.load import vegeta_path

    folder.mkdir(parents=True, exist_ok=True)
    bundle_for(cfg.model)  # built now (demo, resnet50) rather than inside the first server's start
    pinning = pinning_from(cfg.pin)
    vegeta = vegeta_path()
    body = bodies.body(cfg.body)
    known = service_settings_known()
    echo(
        f"peers: {', '.join(cfg.servers)}; {cfg.model} {cfg.device} {cfg.precision}"
        f"{' channels_last' if cfg.channels_last else ''}, batch {cfg.max_batch_size}; {body.label}; "
        f"{pinning.label}; p99 bound {cfg.p99_bound_ms:g} ms"
    )
    results: list[ServerResult] = []
    skipped: dict[str, str] = {}
    machine = machine_info()

    def write() -> dict[str, Any]:
        """peers[-BODY].json as it stands: written after every server, so a run cut short keeps what it measured."""
        best = reference(results)
        document = {
            "config": asdict(cfg),
            "pinning": pinning.to_dict(),
            "machine": machine,
            "body": body.describe(),
            "servers": [asdict(r) for r in results],
            "reference": best.server if best else None,
            "ratios": ratios(results),
            "ratios_by_ours": {
                r.server: ratios(results, r.server)
                for r in results
                if r.server.startswith("ours") and r.server != "ours-json"
            },
            "skipped": skipped,
        }
        (folder / f"peers{_suffix(cfg)}.json").write_text(json.dumps(document, indent=2))
        return document

    for server in cfg.servers:
        if server not in KNOWN_SERVERS:
            raise ValueError(f"unknown server {server!r}; known: {', '.join(KNOWN_SERVERS)}")
        extra: dict[str, str] = {}
        if server in VARIANTS:
            extra, why = variant_settings(server, cfg, pinning, known)
        elif not peer_available(server):
            why = f"package {PEER_PACKAGES[server]!r} is not installed (uv sync --group peers, or the GPU wheels)"
        else:
            why = ""
        if why:
            skipped[server] = why
            echo(f"  {server}: skipped, {why}")
        else:
            try:
                results.append(run_server(server, cfg, pinning, vegeta, folder, echo, extra))
            except Exception as exc:  # one server that fails to start must not cost the others
                if server == "ours":
                    raise
                skipped[server] = f"failed: {type(exc).__name__}: {str(exc)[-1500:]}"
                echo(f"  {server}: {skipped[server]}")
        write()
    return write()


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m ops.perf.peers RESULTS_DIR ...`: the side-by-side run for machines without invoke (bench/gpu)."""
    import argparse

    from ops.core import console
    from ops.perf.plot import plot_peers_svg

    parser = argparse.ArgumentParser(description="Ours and the peer servers side by side, same body and client.")
    parser.add_argument("results", type=Path, help="Folder for peers[-BODY].json and peers[-BODY].svg.")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="Where every server runs its model.")
    parser.add_argument("--model", default="demo", help="demo, resnet50 or a bundle directory.")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"], help="Every server's.")
    parser.add_argument("--channels-last", action="store_true", help="NHWC for every server.")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="Every server's largest batch.")
    parser.add_argument("--max-wait-ms", type=float, default=MAX_WAIT_MS, help="Every server's batching wait.")
    parser.add_argument("--servers", default=",".join(SERVERS), help=f"Comma list of {', '.join(KNOWN_SERVERS)}.")
    parser.add_argument("--concurrency", default="1,2,4,8,16,32", help="Closed-loop client levels.")
    parser.add_argument("--level-duration", type=float, default=LEVEL_DURATION_S, help="Seconds per level.")
    parser.add_argument("--p99-bound", type=float, default=PEER_P99_BOUND_MS, help="Common p99 bound, ms.")
    parser.add_argument("--pin", default="auto", help="auto, none, or SERVICE_CPUS:CLIENT_CPUS.")
    parser.add_argument("--body", default=bodies.DEFAULT_BODY, choices=list(bodies.SIZES), help="ops.perf.bodies.")
    parser.add_argument("--fronts", type=int, default=0, help="Split front processes (0: service CPUs - 2).")
    parser.add_argument("--litserve-workers", type=int, default=0, help="workers_per_device (0: CPUs / 3).")
    parser.add_argument("--litserve-api-servers", type=int, default=0, help="num_api_servers (0: CPUs / 3).")
    args = parser.parse_args(argv)
    exit_on_sigterm()
    cfg = PeerConfig(
        servers=tuple(s for s in args.servers.split(",") if s),
        model=args.model,
        max_batch_size=args.batch_size,
        max_wait_ms=args.max_wait_ms,
        concurrency=tuple(int(c) for c in args.concurrency.split(",")),
        level_duration_s=args.level_duration,
        p99_bound_ms=args.p99_bound,
        pin=args.pin,
        device=args.device,
        precision=args.precision,
        channels_last=args.channels_last,
        body=args.body,
        fronts=args.fronts,
        litserve_workers=args.litserve_workers,
        litserve_api_servers=args.litserve_api_servers,
    )
    document = compare(cfg, args.results, echo=console.print)
    if document["servers"]:
        console.print(f"plot: {plot_peers_svg(document, args.results / f'peers{_suffix(cfg)}.svg')}")


if __name__ == "__main__":
    main()

"""Our service and the peer servers (LitServe, KServe) side by side: same bundle, model class, client and cores."""

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

from ops.perf.closedloop import Call, Level, admission_for, attack, throughput_within
from ops.perf.defaults import BATCH_SIZE, LEVEL_DURATION_S, MAX_WAIT_MS, PEER_P99_BOUND_MS
from ops.perf.localservice import LocalService, free_port
from ops.perf.pinning import Pinning, pinning_from

SERVERS = ("ours", "ours-json", "litserve", "kserve")
PEER_PACKAGES = {"litserve": "litserve", "kserve": "kserve"}


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


def peer_available(server: str) -> bool:
    """True when the peer's package is installed (the `peers` dependency group); ours always is."""
    package = PEER_PACKAGES.get(server)
    return package is None or importlib.util.find_spec(package) is not None


def server_process(server: str, cfg: PeerConfig, pinning: Pinning, log_path: Path) -> tuple[LocalService, Call]:
    """The process serving `server` on the service CPUs, and the request it gets."""
    from ops.perf.benchmodels import bundle_for
    from ops.perf.ratios import sample_body

    bundle, body = str(bundle_for(cfg.model)), sample_body()
    if server in ("ours", "ours-json"):
        service = LocalService(
            "image_classifier",
            {
                "MODEL_URI": bundle,
                "DEVICE": "cpu",
                "MAX_BATCH_SIZE": str(cfg.max_batch_size),
                "MAX_WAIT_MS": str(cfg.max_wait_ms),
                **admission_for(cfg.concurrency),
                "LOG_LEVEL": "warning",
                "REQUEST_TIMEOUT_S": "30",
            },
            log_path=log_path,
            prefix_argv=pinning.service_prefix(),
        )
        if server == "ours":
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
    ]
    if server == "litserve":
        ready, url, target_body, content_type = "/health", "/v1/predict", body, "image/jpeg"
    else:
        from ops.perf.peermodel import MODEL_NAME

        ready, url = f"/v1/models/{MODEL_NAME}", f"/v1/models/{MODEL_NAME}:predict"
        target_body = json.dumps({"instances": [{"image_b64": base64.b64encode(body).decode()}]}).encode()
        content_type = "application/json"
    service = LocalService(
        f"peer_{server}",  # env prefix PEER_<SERVER>_: nothing a peer reads
        {},
        log_path=log_path,
        prefix_argv=pinning.service_prefix(),
        command=command,
        ready_path=ready,
        port=port,
    )
    return service, Call(url, content_type, target_body)


REQUESTS = {
    "ours": "raw JPEG body",
    "ours-json": '{"image_b64"} JSON',
    "litserve": "raw JPEG body",
    "kserve": 'v1 {"instances": [{"image_b64"}]} JSON',
}


def batching_of(server: str, cfg: PeerConfig) -> str:
    if server == "kserve":
        return "none in-process (KServe batches in its Go agent sidecar)"
    return f"max {cfg.max_batch_size}, wait {cfg.max_wait_ms:g} ms"


def run_server(
    server: str,
    cfg: PeerConfig,
    pinning: Pinning,
    vegeta: Path,
    folder: Path,
    echo: Callable[[str], None],
) -> ServerResult:
    """Start one server, check one answer, sweep the closed-loop levels, read its memory, stop it."""
    service, call = server_process(server, cfg, pinning, folder / f"{server}.log")
    levels: list[Level] = []
    with service, tempfile.TemporaryDirectory() as scratch:
        import httpx

        answer = httpx.post(
            service.url + call.path, content=call.body, headers={"Content-Type": call.content_type}, timeout=30
        )
        answer.raise_for_status()
        for concurrency in cfg.concurrency:
            level, _ = attack(
                vegeta, service.url, call, concurrency, cfg.level_duration_s, Path(scratch), pinning.client_prefix()
            )
            echo(
                f"  {server:<10} c={concurrency:<3} {level.throughput:8.1f} img/s  p50 {level.p50_ms:7.2f} ms  "
                f"p99 {level.p99_ms:8.2f} ms  ok {level.ok}/{level.requests}"
            )
            levels.append(level)
        rss = service.rss_bytes() / 2**20
    lone = next((level for level in levels if level.concurrency == 1), levels[0])
    notes = [] if all(level.ok == level.requests for level in levels) else ["some requests failed: see levels"]
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
    )


def ratios(results: Sequence[ServerResult], ours: str = "ours") -> dict[str, dict[str, float]]:
    """ours ÷ peer for each peer: throughputs (above 1 is ours better) and lone p50 (below 1 is ours better)."""
    mine = next((r for r in results if r.server == ours), None)
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
    """Every server in `cfg.servers` in turn, same client and cores; writes peers.json and returns it."""
    from ops.perf.benchmodels import ensure_demo_bundle, machine_info
    from ops.perf.load import vegeta_path

    folder.mkdir(parents=True, exist_ok=True)
    if cfg.model == "demo":
        ensure_demo_bundle()
    pinning = pinning_from(cfg.pin)
    vegeta = vegeta_path()
    echo(f"peers: {', '.join(cfg.servers)}; {pinning.label}; p99 bound {cfg.p99_bound_ms:g} ms")
    results: list[ServerResult] = []
    skipped: dict[str, str] = {}
    for server in cfg.servers:
        if not peer_available(server):
            skipped[server] = f"package {PEER_PACKAGES[server]!r} is not installed (uv sync --group peers)"
            echo(f"  {server}: skipped, {skipped[server]}")
            continue
        results.append(run_server(server, cfg, pinning, vegeta, folder, echo))
    document = {
        "config": asdict(cfg),
        "pinning": pinning.to_dict(),
        "machine": machine_info(),
        "servers": [asdict(r) for r in results],
        "ratios": ratios(results),
        "skipped": skipped,
    }
    (folder / "peers.json").write_text(json.dumps(document, indent=2))
    return document

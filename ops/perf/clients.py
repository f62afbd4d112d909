"""Two load clients against one image service on the same cores: Triton's perf_analyzer and vegeta, closed loop.

At each client count, in turn (interleaved, so drift on a shared machine falls on every client alike):
- `perf_analyzer v2`: perf_analyzer's own request, the Open Inference Protocol with the binary tensor extension;
- `vegeta v2`: vegeta sending the byte-identical v2 request (`perfanalyzer.v2_binary_call`);
- `vegeta v1`: vegeta sending the raw JPEG to /v1/predict, the benchmarks' usual request.

The first pair differs only in the client, the second only in the protocol. Writes clients.json and clients.md.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ops.perf.closedloop import Call, Level, admission_for, attack
from ops.perf.defaults import BATCH_SIZE, MAX_WAIT_MS
from ops.perf.localservice import LocalService
from ops.perf.perfanalyzer import SweepOptions, sweep, v2_binary_call, write_input_data
from ops.perf.pinning import pinning_from

CLIENTS = ("perf_analyzer v2", "vegeta v2", "vegeta v1")


@dataclass
class ClientsConfig:
    model: str = "demo"
    device: str = "cpu"
    max_batch_size: int = BATCH_SIZE
    concurrency: tuple[int, ...] = (1, 2, 4, 8, 16)
    level_duration_s: float = 3.0
    pin: str = "auto"


def _uptime() -> str:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())


def compare_clients(cfg: ClientsConfig, folder: Path, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the three clients against one service process; returns (and writes) the document."""
    import httpx

    from ops.perf.benchmodels import bundle_for
    from ops.perf.bodies import sample_body
    from ops.perf.load import vegeta_path

    folder.mkdir(parents=True, exist_ok=True)
    pinning, body, vegeta = pinning_from(cfg.pin), sample_body(), vegeta_path()
    service = LocalService(
        "image_classifier",
        {
            "MODEL_URI": str(bundle_for(cfg.model)),
            "DEVICE": cfg.device,
            "MAX_BATCH_SIZE": str(cfg.max_batch_size),
            "MAX_WAIT_MS": str(MAX_WAIT_MS),
            **admission_for(cfg.concurrency),
            "LOG_LEVEL": "warning",
            "REQUEST_TIMEOUT_S": "30",
        },
        log_path=folder / "clients-service.log",
        prefix_argv=pinning.service_prefix(),
    )
    load_before = _uptime()
    levels: dict[str, list[Level]] = {client: [] for client in CLIENTS}
    with service, tempfile.TemporaryDirectory() as scratch:
        name = httpx.get(f"{service.url}/v1/models", timeout=30).json()["name"]
        calls = {
            "vegeta v2": v2_binary_call(name, "IMAGE", [body]),
            "vegeta v1": Call("/v1/predict", "image/jpeg", body),
        }
        for call in calls.values():  # each request answers 200 before anything is measured
            headers = {"Content-Type": call.content_type, **dict(call.headers)}
            httpx.post(service.url + call.path, content=call.body, headers=headers, timeout=30).raise_for_status()
        input_data = write_input_data(folder / "perf_analyzer-input.json", "IMAGE", [[body]])
        window = SweepOptions(window_s=cfg.level_duration_s / 3)
        for concurrency in cfg.concurrency:
            options = SweepOptions(concurrency=(concurrency,), window_s=window.window_s)
            (level,) = sweep(service.url, name, input_data, folder / "perf_analyzer", options, pinning.client_prefix())
            levels["perf_analyzer v2"].append(level)
            for client, call in calls.items():
                level, _ = attack(
                    vegeta, service.url, call, concurrency, cfg.level_duration_s, Path(scratch), pinning.client_prefix()
                )
                levels[client].append(level)
            for client in CLIENTS:
                got = levels[client][-1]
                echo(
                    f"  {client:<17} c={concurrency:<3} {got.throughput:8.1f} img/s  p50 {got.p50_ms:7.2f} ms  "
                    f"p99 {got.p99_ms:8.2f} ms  ok {got.ok}/{got.requests}"
                )
    document = {
        "config": asdict(cfg),
        "pinning": pinning.to_dict(),
        "loadavg_before": load_before,
        "loadavg_after": _uptime(),
        "levels": {client: [asdict(level) for level in got] for client, got in levels.items()},
    }
    (folder / "clients.json").write_text(json.dumps(document, indent=2) + "\n")
    (folder / "clients.md").write_text(markdown(document))
    return document


def markdown(document: dict[str, Any]) -> str:
    cfg, pinning = document["config"], document["pinning"]
    lines = [
        f"# perf_analyzer and vegeta against one image service ({cfg['model']}, {cfg['device']}, "
        f"MAX_BATCH_SIZE {cfg['max_batch_size']}; {pinning['label']})",
        "",
        f"/proc/loadavg before: `{document['loadavg_before']}`, after: `{document['loadavg_after']}`",
        "",
        "| clients | " + " | ".join(f"{c} img/s (p50 / p99 ms)" for c in CLIENTS) + " |",
        "|---|" + "---|" * len(CLIENTS),
    ]
    by_client = document["levels"]
    for index, first in enumerate(by_client[CLIENTS[0]]):
        cells = []
        for client in CLIENTS:
            level = by_client[client][index]
            cells.append(f"{level['throughput']:.1f} ({level['p50_ms']:.1f} / {level['p99_ms']:.1f})")
        lines.append(f"| {first['concurrency']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """`python -m ops.perf.clients RESULTS_DIR ...` (bench/gpu/run.sh calls it without invoke)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--model", default="demo")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--concurrency", default="1,2,4,8,16")
    parser.add_argument("--level-duration", type=float, default=3.0)
    parser.add_argument("--pin", default="auto")
    args = parser.parse_args(argv)
    cfg = ClientsConfig(
        model=args.model,
        device=args.device,
        max_batch_size=args.batch_size,
        concurrency=tuple(int(c) for c in args.concurrency.split(",")),
        level_duration_s=args.level_duration,
        pin=args.pin if args.device == "cpu" else "none",
    )
    compare_clients(cfg, args.results)
    print((args.results / "clients.md").read_text())


if __name__ == "__main__":
    main()

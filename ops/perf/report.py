"""The results folders, and the markdown summary and ratio table of a benchmark run (`python -m ops.perf.report`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ops.core import REPO_ROOT, console, out

# Every run folder of `invoke bench` (results/bench/<ts>), `invoke bench.load` (results/load/<ts>) and
# `invoke bench.capacity` (results/capacity/<ts>) is under it; gitignored.
RESULTS_ROOT = REPO_ROOT / "results"


def timestamp() -> str:
    """A folder-name-safe UTC timestamp, e.g. 20261128T235900Z."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def results_dir(kind: str) -> Path:
    """`results/<kind>`: where the run folders of `invoke <kind>` go."""
    return RESULTS_ROOT / kind


def new_run_dir(kind: str, label: str = "") -> Path:
    """A new run folder `results/<kind>/<UTC timestamp>[-<label>]` (not created)."""
    return results_dir(kind) / (f"{timestamp()}-{label}" if label else timestamp())


def _fmt(value: float, digits: int = 2) -> str:
    return f"{value:,.{digits}f}"


# Targets where smaller is better (milliseconds); every other target is a floor.
CEILINGS = frozenset({"overhead_ms", "lone_p50_gap_ms"})


def _target(ratio: dict[str, Any], key: str) -> str:
    target = (ratio.get("targets") or {}).get(key)
    if target is None or key not in ratio:
        return "-"
    if key in CEILINGS:
        return f"<= {target:g} ({'met' if ratio[key] <= target else 'missed'})"
    return f">= {target:g} ({'met' if ratio[key] >= target else 'missed'})"


def _pinning(ratio: dict[str, Any]) -> str:
    pinning = ratio.get("pinning") or {}
    if not pinning:
        return "unpinned (old method)"
    return f"svc {pinning['service']} / client {pinning['client']}" if pinning.get("pinned") else "unpinned"


RATIO_COLUMNS = (
    "model",
    "body",
    "device",
    "precision",
    "batch",
    "CPUs",
    "model-only img/s",
    "HTTP img/s (sat.)",
    "serving eff.",
    "eff. target",
    "batching gain",
    "gain target",
    "p99 bound ms",
    "HTTP p50 ms",
    "model p50 ms",
    "overhead ms",
    "overhead target",
    "lone p50 on / off ms",
    "lone gap target",
    "HTTP parser / loop",
)


def body_label(described: dict[str, Any] | None) -> str:
    """A results file's body (ops.perf.bodies.Body.describe) as `photo 500x375, 49.2 KiB`; older files: tiny."""
    if not described:
        return "tiny 160x160 (before bodies)"
    return f"{described['name']} {described['width']}x{described['height']}, {described['bytes'] / 1024:,.1f} KiB"


def runtime_label(runtime: dict[str, str] | None) -> str:
    """The HTTP parser and event loop a service ran with (LocalService.http_runtime), or `?` when not recorded."""
    return f"{runtime['http']} / {runtime['loop']}" if runtime else "?"


def ratio_rows(ratios: Sequence[dict[str, Any]]) -> list[list[str]]:
    """One row per measured configuration, in RATIO_COLUMNS order."""
    rows = []
    for r in ratios:
        cfg = r["config"]
        saturation = max(level["throughput"] for level in r["batching_on"])
        rows.append(
            [
                Path(cfg["model"]).name,
                body_label(r.get("body")),
                cfg["device"],
                cfg["precision"],
                str(cfg["batch_size"]),
                _pinning(r),
                _fmt(r["model_only_images_per_s"], 1),
                _fmt(saturation, 1),
                _fmt(r["serving_efficiency"], 3),
                _target(r, "serving_efficiency"),
                f"{r['batching_gain']:.2f}x",
                _target(r, "batching_gain"),
                _fmt(r["p99_bound_ms"], 1),
                _fmt(r["http_p50_ms_batch1"]),
                _fmt(r["inference_p50_ms_batch1"]),
                _fmt(r["overhead_ms"]),
                _target(r, "overhead_ms"),
                " / ".join(_fmt(v) for v in (r.get("lone_p50_ms") or {}).values()) or "-",
                _target(r, "lone_p50_gap_ms"),
                runtime_label(r.get("runtime")),
            ]
        )
    return rows


def ratio_table(ratios: Sequence[dict[str, Any]]) -> Table:
    """The ratio table as a rich Table for the terminal."""
    table = Table(title="Serving ratios (measured in one run)")
    for column in RATIO_COLUMNS:
        table.add_column(
            column,
            justify="left" if column in ("model", "body", "device", "precision", "CPUs") else "right",
        )
    for row in ratio_rows(ratios):
        table.add_row(*row)
    return table


def print_ratio_table(ratios: Sequence[dict[str, Any]]) -> None:
    """Print the ratio table; logs and pipes get a wide page instead of rich's 80-column default."""
    wide = out if out.is_terminal else Console(width=220)  # rich caps print(width=) at the console's width
    wide.print(ratio_table(ratios))


def _md_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _benchmark_rows(benchmarks: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [b for b in benchmarks if (b.get("extra_info") or {}).get("kind") == kind]


def _peer_pinning(peers: dict[str, Any]) -> str:
    pinning = peers.get("pinning") or {}
    return f"svc {pinning['service']} / client {pinning['client']}" if pinning.get("pinned") else "unpinned"


def _gpu_at_best(server: dict[str, Any]) -> str:
    """Mean GPU utilization during the server's best-throughput level, or `-` where it was not sampled."""
    samples = server.get("gpu_util") or []
    levels = server["levels"]
    if not samples or not levels:
        return "-"
    best = max(range(len(levels)), key=lambda i: levels[i]["throughput"])
    sample = samples[best] if best < len(samples) else {}
    return f"{sample['mean']:.0f}%" if "mean" in sample else "-"


def peer_rows(peers: dict[str, Any]) -> list[list[str]]:
    """One row per server, in PEER_COLUMNS order; ratios are ours (the reference variant) ÷ that server."""
    ratios = peers.get("ratios") or {}
    rows = []
    for server in peers["servers"]:
        ratio = ratios.get(server["server"]) or {}
        rows.append(
            [
                server["server"] + (" (reference)" if server["server"] == peers.get("reference") else ""),
                server["request"],
                server["batching"],
                _fmt(server["saturation"], 1),
                _fmt(server["within_bound"], 1),
                _fmt(server["lone_p50_ms"]),
                _fmt(server["lone_p99_ms"]),
                _gpu_at_best(server),
                _fmt(server["rss_mib"], 0),
                runtime_label(server.get("runtime")),
                *(
                    (f"{ratio[k]:.2f}" if k in ratio else "-")
                    for k in ("saturation", "within_bound", "lone_p50", "rss")
                ),
            ]
        )
    return rows


PEER_COLUMNS = (
    "server",
    "request",
    "batching",
    "sat. img/s",
    "img/s within p99 bound",
    "lone p50 ms",
    "lone p99 ms",
    "GPU util at sat.",
    "RSS MiB",
    "HTTP parser / loop",
    "ours ÷ peer: sat.",
    "within bound",
    "lone p50",
    "RSS",
)


def peer_section(peers: dict[str, Any]) -> list[str]:
    """The peer table and how it was measured."""
    cfg = peers["config"]
    device = cfg.get("device", "cpu")
    model = f"{Path(cfg['model']).name} {device} {cfg.get('precision', 'fp32')}"
    if cfg.get("channels_last"):
        model += " channels_last"
    body = body_label(peers.get("body"))
    lines = [
        f"## Peer servers, side by side: {model}, {body}",
        "",
        f"Same bundle and ImageClassifier, same body, same vegeta closed-loop client, {_peer_pinning(peers)}; "
        f"batch {cfg['max_batch_size']}, wait {cfg['max_wait_ms']:g} ms; clients "
        f"{', '.join(str(c) for c in cfg['concurrency'])}, {cfg['level_duration_s']:g} s per level; common p99 bound "
        f"{cfg['p99_bound_ms']:g} ms. Ratios are ours ÷ peer, ours being the reference variant (the best of ours "
        "within the bound): above 1 is ours better for throughput, below 1 for latency and memory.",
        "",
    ]
    lines += _md_table(PEER_COLUMNS, peer_rows(peers))
    for name, why in (peers.get("skipped") or {}).items():
        lines.append(f"- {name}: skipped, {why}")
    for server in peers["servers"]:
        for note in server.get("notes") or []:
            lines.append(f"- {server['server']}: {note}")
    lines += ["", "### Levels per server", ""]
    rows = [
        [
            server["server"],
            str(level["concurrency"]),
            _fmt(level["throughput"], 1),
            _fmt(level["p50_ms"]),
            _fmt(level["p99_ms"]),
            f"{level['ok']}/{level['requests']}",
            (
                f"{gpu['mean']:.0f}% / {gpu['max']:.0f}%"
                if "mean" in (gpu := ((server.get("gpu_util") or [])[index : index + 1] or [{}])[0])
                else "-"
            ),
        ]
        for server in peers["servers"]
        for index, level in enumerate(server["levels"])
    ]
    lines += _md_table(["server", "clients", "img/s", "p50 ms", "p99 ms", "ok", "GPU util mean / max"], rows)
    lines.append("")
    return lines


# Issue 22's H200 targets (resnet50, fp16, 500x375 JPEG bodies): reported met or missed, never asserted.
GPU_TARGETS = {"within_bound_img_s": 5000.0, "p99_bound_ms": 100.0, "serving_efficiency": 0.6, "lone_p50_ms": 3.0}


def _model_only_for(ratios: Sequence[dict[str, Any]], peers: dict[str, Any]) -> float | None:
    """Model-only img/s of the same model, device, precision, layout and batch as a side-by-side run, if measured."""
    cfg = peers["config"]
    for r in ratios:
        c = r["config"]
        same = (c["model"], c["device"], c["precision"], c["channels_last"], c["batch_size"]) == (
            cfg["model"],
            cfg.get("device", "cpu"),
            cfg.get("precision", "fp32"),
            cfg.get("channels_last", False),
            cfg["max_batch_size"],
        )
        if same:
            return float(r["model_only_images_per_s"])
    return None


def gpu_target_lines(ratios: Sequence[dict[str, Any]], peers: dict[str, Any]) -> list[str]:
    """Issue 22's GPU targets for one CUDA side-by-side run: each ours variant, met or missed, with its figures."""
    cfg = peers["config"]
    if cfg.get("device") != "cuda":
        return []
    name = f"{Path(cfg['model']).name} {cfg.get('precision')} {(peers.get('body') or {}).get('name', '?')} body"
    model_only = _model_only_for(ratios, peers)
    others = [s for s in peers["servers"] if not s["server"].startswith("ours")]
    lines = []
    for ours in (s for s in peers["servers"] if s["server"].startswith("ours")):
        label = f"{name}, {ours['server']}"

        def verdict(ok: bool) -> str:
            return "met" if ok else "missed"

        within = ours["within_bound"]
        lines.append(
            f"- {label}: img/s within p99 <= {cfg['p99_bound_ms']:g} ms = {within:,.1f}, target >= "
            f"{GPU_TARGETS['within_bound_img_s']:,.0f} ({verdict(within >= GPU_TARGETS['within_bound_img_s'])})"
        )
        if model_only:
            efficiency = ours["saturation"] / model_only
            lines.append(
                f"- {label}: serving efficiency = {ours['saturation']:,.1f} / {model_only:,.1f} model-only = "
                f"{efficiency:.3f}, target >= {GPU_TARGETS['serving_efficiency']:g} "
                f"({verdict(efficiency >= GPU_TARGETS['serving_efficiency'])}; stretch 0.8)"
            )
        lines.append(
            f"- {label}: lone-request p50 = {ours['lone_p50_ms']:.2f} ms, target <= {GPU_TARGETS['lone_p50_ms']:g} "
            f"({verdict(ours['lone_p50_ms'] <= GPU_TARGETS['lone_p50_ms'])})"
        )
        for key, what, better in (
            ("within_bound", "throughput within the bound", lambda a, b: a >= b),
            ("lone_p50_ms", "lone-request p50", lambda a, b: a <= b),
        ):
            if others:
                behind = [s["server"] for s in others if not better(ours[key], s[key])]
                lines.append(
                    f"- {label}: ahead of every peer on {what}: "
                    + ("met" if not behind else f"missed (behind {', '.join(behind)})")
                )
    return lines


def target_section(ratios: Sequence[dict[str, Any]], peers: Sequence[dict[str, Any]]) -> list[str]:
    """Each performance target (ratios.TARGETS, and ours against every peer) with met or missed; never asserted."""
    lines = ["## Targets", ""]
    for r in ratios:
        if not (r.get("pinning") or {}).get("pinned"):
            continue
        cfg = r["config"]
        name = f"{Path(cfg['model']).name}/{cfg['device']}"
        for key, what in (
            ("serving_efficiency", "CPU serving efficiency, pinned"),
            ("overhead_ms", "overhead ms"),
            ("lone_p50_gap_ms", "lone p50 batching on - off, ms"),
        ):
            verdict = _target(r, key)
            if verdict != "-":
                lines.append(f"- {name}: {what} = {r[key]:g}, target {verdict}")
    for document in peers:
        if (document["config"].get("device") or "cpu") == "cuda":
            lines += gpu_target_lines(ratios, document)
            continue
        ours = next((s for s in document["servers"] if s["server"] == "ours"), None)
        others = [s for s in document["servers"] if not s["server"].startswith("ours")]
        if ours and others:
            for key, what, better in (
                ("within_bound", "throughput within the p99 bound", lambda a, b: a >= b),
                ("lone_p50_ms", "lone-request p50", lambda a, b: a <= b),
            ):
                beaten = [s["server"] for s in others if not better(ours[key], s[key])]
                verdict = "met" if not beaten else f"missed (behind {', '.join(beaten)})"
                lines.append(f"- ours >= every peer on {what}: {verdict}")
    lines.append("")
    return lines


def render_summary(
    bench_json: dict[str, Any] | None,
    ratios: Sequence[dict[str, Any]],
    *,
    commands: Sequence[str] = (),
    title: str = "",
    peers: dict[str, Any] | Sequence[dict[str, Any]] | None = None,
    load_average: dict[str, float] | None = None,
) -> str:
    """The markdown summary: machine (device, torch), ratio table, peers, model-only, preprocessing and HTTP."""
    peer_docs: list[dict[str, Any]] = [peers] if isinstance(peers, dict) else list(peers or [])
    machine: dict[str, Any] = {}
    if bench_json:
        machine = (bench_json.get("machine_info") or {}).get("eks_inference") or {}
    if not machine and ratios:
        machine = ratios[0]["machine"]
    loads = [machine.get("load_average_1m") if bench_json else None] + [
        r["machine"].get("load_average_1m") for r in ratios
    ]
    for document in peer_docs:
        loads.append(document["machine"].get("load_average_1m"))
    load_whole = load_average or {}
    load_average_text = ", ".join(str(x) for x in loads if x is not None) or "?"
    lines = [
        f"# {title or 'Benchmark summary'}",
        "",
        f"Generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.",
        "",
    ]
    lines += [
        "| machine | |",
        "|---|---|",
        f"| device | {machine.get('gpu') or 'CPU only'} {machine.get('gpu_capability') or ''} |",
        f"| CPU | {machine.get('cpu', '?')} x {machine.get('cpu_count', '?')} |",
        f"| torch | {machine.get('torch', '?')} (CUDA runtime {machine.get('torch_cuda') or '-'}) |",
        f"| python | {machine.get('python', '?')} |",
        f"| load average (1 min) at each stage | {load_average_text} |",
    ]
    if load_whole:
        lines.append(
            "| load average (1 min) before / after the run | "
            + " / ".join(f"{load_whole[k]:.2f}" for k in ("before", "after") if k in load_whole)
            + " |"
        )
    pinnings = sorted({_pinning(r) for r in ratios} | {_peer_pinning(d) for d in peer_docs})
    if pinnings:
        lines.append(f"| core pinning | {'; '.join(pinnings)} (taskset) |")
    lines.append("")
    if ratios:
        lines += ["## Serving ratios", ""]
        lines += _md_table(RATIO_COLUMNS, ratio_rows(ratios))
        lines += [
            "",
            (
                "- serving efficiency = HTTP images/s at saturation (batching on) / model-only images/s, same batch "
                "size, precision and device."
            ),
            (
                "- batching gain = images/s within the p99 bound, batching on / off; the bound is batching-off's p99 "
                "at its saturation knee unless given."
            ),
            (
                "- overhead = p50 of an HTTP /v1/predict round trip - p50 of the model call the service reports inside "
                "it, at batch 1 (one vegeta client, batching off)."
            ),
            (
                "- lone p50 = p50 at one closed-loop client (each request meets an idle service), batching on / off; "
                "the gap target is on - off <= 1 ms."
            ),
            (
                "- CPUs: where the service (and model-only, in its own process with the service's thread count) and "
                "the vegeta client ran; unpinned rows share every CPU between them, as the old method did."
            ),
        ]
        for r in ratios:
            for note in r.get("notes") or []:
                lines.append(f"- {r['config']['model']}/{r['config']['device']}: {note}")
            cfg = r["config"]
            lines += [
                "",
                (
                    f"### Closed-loop levels: {Path(cfg['model']).name} {cfg['device']} {cfg['precision']} "
                    f"(batch {cfg['batch_size']}, "
                    f"{cfg['level_duration_s']:g} s per level, client {r['batching_on'][0]['client']})"
                ),
                "",
            ]
            rows = [
                [
                    mode,
                    str(level["concurrency"]),
                    _fmt(level["throughput"], 1),
                    _fmt(level["p50_ms"]),
                    _fmt(level["p99_ms"]),
                    f"{level['ok']}/{level['requests']}",
                ]
                for mode in ("on", "off")
                for level in r[f"batching_{mode}"]
            ]
            lines += _md_table(["batching", "clients", "img/s", "p50 ms", "p99 ms", "ok"], rows)
        lines.append("")
    for document in peer_docs:
        lines += peer_section(document)
    if ratios or peer_docs:
        lines += target_section(ratios, peer_docs)
    benchmarks = (bench_json or {}).get("benchmarks") or []
    model_rows = _benchmark_rows(benchmarks, "model")
    if model_rows:
        lines += [
            "## Model-only (ImageClassifier.predict: normalize + forward + softmax)",
            "",
        ]
        rows = []
        for b in model_rows:
            e, s = b["extra_info"], b["stats"]
            rows.append(
                [
                    e["model"],
                    e["device"],
                    str(e["batch_size"]),
                    e["precision"],
                    "channels_last" if e["channels_last"] else "NCHW",
                    e["compile"],
                    _fmt(s["median"] * 1000),
                    _fmt(e["batch_size"] / s["median"], 1),
                    str(s["rounds"]),
                ]
            )
        lines += _md_table(
            [
                "model",
                "device",
                "batch",
                "precision",
                "layout",
                "mode",
                "median ms",
                "images/s",
                "rounds",
            ],
            rows,
        )
        lines.append("")
    pre_rows = _benchmark_rows(benchmarks, "preprocess")
    if pre_rows:
        lines += ["## Preprocessing, per image (-> 224x224)", ""]
        rows = [
            [
                b["extra_info"].get("image", "640x480 JPEG"),
                b["extra_info"]["device"],
                b["extra_info"]["stage"],
                _fmt(b["stats"]["median"] * 1000, 3),
                _fmt(1 / b["stats"]["median"], 1),
            ]
            for b in pre_rows
        ]
        lines += _md_table(["image", "device", "stage", "median ms", "images/s"], rows)
        lines.append("")
    http_rows = _benchmark_rows(benchmarks, "http")
    if http_rows:
        lines += ["## End-to-end HTTP, one request at a time (demo model)", ""]
        rows = [
            [
                b["extra_info"]["device"],
                b["extra_info"]["batching"],
                b["extra_info"]["payload"],
                _fmt(b["stats"]["median"] * 1000),
                _fmt(b["stats"]["max"] * 1000),
                str(b["stats"]["rounds"]),
            ]
            for b in http_rows
        ]
        lines += _md_table(["device", "batching", "payload", "median ms", "max ms", "rounds"], rows)
        lines.append("")
    skipped = [b["name"] for b in benchmarks if not b.get("stats")]
    if skipped:
        lines += [f"Skipped: {', '.join(skipped)}", ""]
    if commands:
        lines += ["## Commands", "", "```", *commands, "```", ""]
    return "\n".join(lines)


def write_summary(
    results_dir: Path,
    ratios: Sequence[dict[str, Any]],
    *,
    commands: Sequence[str] = (),
    title: str = "",
    load_average: dict[str, float] | None = None,
) -> Path:
    """Write <results_dir>/summary.md (and ratios.json) from benchmarks.json, the ratio results and peers.json."""
    bench_path = results_dir / "benchmarks.json"
    bench_json = json.loads(bench_path.read_text()) if bench_path.is_file() else None
    # peers.json (the default body) first, then peers-<body>.json of the other bodies.
    peers = [json.loads(p.read_text()) for p in sorted(results_dir.glob("peers*.json"), key=lambda p: len(p.name))]
    if ratios:
        (results_dir / "ratios.json").write_text(json.dumps(list(ratios), indent=2))
    if load_average:
        (results_dir / "loadavg.json").write_text(json.dumps(load_average))
    elif (results_dir / "loadavg.json").is_file():
        load_average = json.loads((results_dir / "loadavg.json").read_text())
    summary = results_dir / "summary.md"
    summary.write_text(
        render_summary(bench_json, ratios, commands=commands, title=title, peers=peers, load_average=load_average)
    )
    return summary


def load_ratios(results_dir: Path) -> list[dict[str, Any]]:
    """Every ratios-*.json written into a results folder."""
    return [json.loads(p.read_text()) for p in sorted(results_dir.glob("ratios-*.json"))]


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m ops.perf.report RESULTS_DIR`: (re)write summary.md from benchmarks.json and ratios-*.json."""
    import argparse

    parser = argparse.ArgumentParser(description="Write the markdown summary of a benchmark results folder.")
    parser.add_argument(
        "results",
        type=Path,
        help="Folder holding benchmarks.json and/or ratios-*.json.",
    )
    parser.add_argument("--title", default="Benchmark summary", help="Heading of summary.md.")
    parser.add_argument(
        "--command",
        action="append",
        default=[],
        help="A command line to list (repeatable).",
    )
    args = parser.parse_args(argv)
    ratios = load_ratios(args.results)
    summary = write_summary(args.results, ratios, commands=args.command, title=args.title)
    if ratios:
        print_ratio_table(ratios)
    console.print(f"summary: {summary}")


if __name__ == "__main__":
    main()

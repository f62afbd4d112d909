"""The side-by-side runner's decisions, without starting servers: which of our variants can run and with what,
the reference variant and ours ÷ peer, the GPU sampler's parsing, the SVG plot and the GPU target lines."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from ops.perf import gpustat, peers, report
from ops.perf.closedloop import Level
from ops.perf.pinning import Pinning
from ops.perf.plot import plot_peers_svg

PINNED = Pinning(service="0-11", client="12-15")
TODAY = {"MODEL_URI", "DEVICE", "PRECISION", "CHANNELS_LAST", "MAX_BATCH_SIZE"}  # no split, no GPU decode yet
LATER = TODAY | {"SPLIT", "FRONTS", "GPU_DECODE", "CUDA_GRAPHS"}


def test_split_variants_are_skipped_naming_the_settings_the_service_lacks() -> None:
    cfg = peers.PeerConfig(device="cuda")
    settings, why = peers.variant_settings("ours-split-gpu", cfg, PINNED, TODAY)
    assert why == (
        "the image service does not know IMAGE_CLASSIFIER_FRONTS, IMAGE_CLASSIFIER_GPU_DECODE, "
        "IMAGE_CLASSIFIER_SPLIT yet (Settings.model_fields)"
    )
    settings, why = peers.variant_settings("ours", cfg, PINNED, TODAY)
    assert (settings, why) == ({}, "")  # single process runs today, without the settings it does not know


def test_variants_set_split_fronts_decode_and_graphs_once_the_service_knows_them() -> None:
    cfg = peers.PeerConfig(device="cuda")
    assert peers.variant_settings("ours", cfg, PINNED, LATER) == ({"GPU_DECODE": "off", "CUDA_GRAPHS": "true"}, "")
    assert peers.variant_settings("ours-split-cpu", cfg, PINNED, LATER) == (
        {"SPLIT": "true", "FRONTS": "10", "GPU_DECODE": "off", "CUDA_GRAPHS": "true"},
        "",
    )
    assert peers.variant_settings("ours-split-gpu", cfg, PINNED, LATER)[0]["GPU_DECODE"] == "auto"
    assert peers.variant_settings("ours-split-gpu", peers.PeerConfig(device="cpu"), PINNED, LATER)[1] == (
        "GPU decode needs --device cuda"
    )
    assert peers.fronts_for(peers.PeerConfig(fronts=3), PINNED) == 3
    assert peers.fronts_for(peers.PeerConfig(), Pinning(service="1", client="0")) == 1
    assert peers.litserve_processes(peers.PeerConfig(), PINNED) == (4, 4)


def _result(server: str, within: float, lone: float) -> peers.ServerResult:
    level = Level(1, 1.0, 10, 10, within, lone, lone * 2, "vegeta")
    return peers.ServerResult(server, "raw", "b", [level], within, within, lone, lone * 2, 100.0)


def test_the_reference_is_the_best_of_ours_and_ratios_divide_by_each_peer() -> None:
    results = [_result("ours", 500, 4.0), _result("ours-split-gpu", 2000, 3.0), _result("litserve", 1000, 6.0)]
    assert peers.reference(results) is results[1]
    assert peers.ratios(results) == {
        "litserve": {"saturation": 2.0, "within_bound": 2.0, "lone_p50": 0.5, "rss": 1.0},
    }
    assert peers.ratios(results, "ours")["litserve"]["within_bound"] == 0.5


def test_gpu_samples_parse_and_summarize_without_the_first() -> None:
    assert gpustat.parse_smi("12\n[N/A]\n90\n95\n8") == [12.0, 90.0, 95.0, 8.0]
    assert gpustat.summarize([100.0, 50.0, 70.0, 90.0]) == {"mean": 70.0, "p50": 70.0, "max": 90.0, "samples": 3}
    assert gpustat.summarize([]) == {}
    with gpustat.GpuSampler(None) as sampler:
        pass
    assert sampler.result == {"skipped": "no nvidia-smi and no pynvml here"}


def _document(device: str = "cuda") -> dict[str, Any]:
    levels = [
        {"concurrency": 1, "throughput": 400.0, "p50_ms": 2.5, "p99_ms": 3.1, "ok": 10, "requests": 10},
        {"concurrency": 256, "throughput": 6000.0, "p50_ms": 40.0, "p99_ms": 90.0, "ok": 10, "requests": 10},
    ]
    server = {
        "server": "ours-split-gpu",
        "request": "raw JPEG body",
        "batching": "max 64",
        "levels": levels,
        "saturation": 6000.0,
        "within_bound": 6000.0,
        "lone_p50_ms": 2.5,
        "lone_p99_ms": 3.1,
        "rss_mib": 900.0,
        "gpu_util": [{"mean": 10.0, "max": 20.0}, {"mean": 85.0, "max": 99.0}],
        "runtime": {"http": "httptools", "loop": "uvloop"},
    }
    peer = {**server, "server": "litserve", "within_bound": 3000.0, "saturation": 3000.0, "lone_p50_ms": 4.0}
    return {
        "config": {
            "model": "resnet50",
            "device": device,
            "precision": "fp16",
            "channels_last": True,
            "max_batch_size": 64,
            "max_wait_ms": 5.0,
            "concurrency": [1, 256],
            "level_duration_s": 2.5,
            "p99_bound_ms": 100.0,
        },
        "pinning": {"pinned": True, "service": "0-11", "client": "12-15", "label": "service on CPU 0-11"},
        "machine": {"load_average_1m": 1.0},
        "body": {"name": "photo", "width": 500, "height": 375, "bytes": 50_000},
        "servers": [server, peer],
        "reference": "ours-split-gpu",
        "ratios": {"litserve": {"saturation": 2.0, "within_bound": 2.0, "lone_p50": 0.62, "rss": 1.0}},
        "skipped": {"pytriton": "package 'pytriton' is not installed"},
    }


def test_the_svg_plot_is_well_formed_with_a_line_per_server(tmp_path: Path) -> None:
    path = plot_peers_svg(_document(), tmp_path / "peers.svg")
    root = ET.fromstring(path.read_text())  # noqa: S314 - the file this test just wrote
    assert root.tag.endswith("svg")
    assert len(root.findall("{http://www.w3.org/2000/svg}polyline")) == 2


def test_gpu_targets_are_reported_met_or_missed_with_model_only_from_the_ratio_run() -> None:
    ratio = {
        "config": {"model": "resnet50", "device": "cuda", "precision": "fp16", "channels_last": True, "batch_size": 64},
        "model_only_images_per_s": 8000.0,
    }
    lines = report.gpu_target_lines([ratio], _document())
    text = "\n".join(lines)
    assert "img/s within p99 <= 100 ms = 6,000.0, target >= 5,000 (met)" in text
    assert "serving efficiency = 6,000.0 / 8,000.0 model-only = 0.750, target >= 0.6 (met; stretch 0.8)" in text
    assert "lone-request p50 = 2.50 ms, target <= 3 (met)" in text
    assert "ahead of every peer on throughput within the bound: met" in text
    assert report.gpu_target_lines([ratio], _document("cpu")) == []
    (row,) = [r for r in report.peer_rows(_document()) if r[0].startswith("ours")]
    columns = dict(zip(report.PEER_COLUMNS, row, strict=True))
    assert columns["server"] == "ours-split-gpu (reference)"
    assert columns["GPU util at sat."] == "85%"
    assert columns["HTTP parser / loop"] == "httptools / uvloop"

"""The closed-loop arithmetic the ratios and the peer table are judged by, and the request type's vegeta line."""

from __future__ import annotations

import base64
import json

import pytest

from ops.perf.closedloop import Call, Level, admission_for, knee, throughput_within


def _level(concurrency: int, throughput: float, p99: float, ok: int = 10) -> Level:
    return Level(concurrency, 1.0, 10, ok, throughput, p99 / 2, p99, "vegeta")


LEVELS = [_level(1, 50, 20), _level(4, 96, 40), _level(16, 100, 150), _level(32, 99, 400)]


def test_knee_is_the_first_level_near_the_best_throughput() -> None:
    assert knee(LEVELS).concurrency == 4  # 96 >= 0.95 * 100
    assert knee(LEVELS, fraction=0.99).concurrency == 16


def test_throughput_within_a_p99_bound() -> None:
    assert throughput_within(LEVELS, 40) == 96
    assert throughput_within(LEVELS, 10) == 0.0
    assert throughput_within([_level(1, 50, 5, ok=0)], 10) == 0.0  # a level with no success counts for nothing


def test_a_call_is_one_vegeta_target_line() -> None:
    target = json.loads(Call("/v1/predict", "image/jpeg", b"\xff\xd8").vegeta_json("http://127.0.0.1:8080/"))
    assert target["method"] == "POST"
    assert target["url"] == "http://127.0.0.1:8080/v1/predict"
    assert target["header"] == {"Content-Type": ["image/jpeg"]}
    assert base64.b64decode(target["body"]) == b"\xff\xd8"
    assert Call.json("/v1/predict", {"text": "hi"}).body == b'{"text": "hi"}'


@pytest.mark.parametrize("clients", [1, 32, 64, 128, 256])
def test_a_closed_loop_service_admits_every_client(clients: int) -> None:
    """The levels measure serving: no client is refused by the production admission limit (64 in flight)."""
    from image_classifier.settings import Settings

    env = admission_for([1, clients])
    settings = Settings(
        model_uri="unused", max_inflight=int(env["MAX_INFLIGHT"]), queue_capacity=int(env["QUEUE_CAPACITY"])
    )
    assert settings.max_inflight >= clients
    assert settings.queue_capacity >= clients
    assert settings.max_inflight >= Settings(model_uri="unused").max_inflight  # never below the production default

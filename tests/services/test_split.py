"""The engine/front split (SPLIT=true, two fronts) keeps every behaviour of the single process, on real processes.

The modules that test the single process are rerun here against the split (`image_env` turns it on for every image
classifier they start): the error contract, labels in every request form, the metrics, the full queue's 503 before
any work, the deadline, the drain on SIGTERM, readiness while loading, a failed load. Below them, what only the split
has: a front killed mid-load loses nothing the others accepted, the engine's death ends the pod, no front can use
CUDA, and the metrics add up over the processes.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from image_classifier.demo import render_sample
from testkit import Server, encode, scrape

JPEG = {"content-type": "image/jpeg"}


def _sibling(name: str) -> ModuleType:
    """A test module of this folder, loaded under another name: its tests run again here, with this module's
    `image_env`."""
    spec = importlib.util.spec_from_file_location(f"split_{name}", Path(__file__).with_name(f"{name}.py"))
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def image_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return {"SPLIT": "true", "FRONTS": "2", "IPC_DIR": str(tmp_path_factory.mktemp("ipc"))}


_image = _sibling("test_image_service")
test_probes_and_model_info = _image.test_probes_and_model_info
test_demo_images_get_the_right_label_in_every_form = _image.test_demo_images_get_the_right_label_in_every_form
test_metrics_are_exported = _image.test_metrics_are_exported
test_bad_input_gets_a_json_4xx_and_the_server_keeps_serving = (
    _image.test_bad_input_gets_a_json_4xx_and_the_server_keeps_serving
)
test_hostile_urls_keep_the_connection_alive = _image.test_hostile_urls_keep_the_connection_alive

_v2 = _sibling("test_v2_protocol")
triton_image = _v2.triton_image
test_tritonclient_binary_infer_equals_v1 = _v2.test_tritonclient_binary_infer_equals_v1
test_bad_v2_image_input_gets_a_4xx_v2_error = _v2.test_bad_v2_image_input_gets_a_4xx_v2_error

_overload = _sibling("test_overload_and_shutdown")
test_full_queue_rejects_fast_with_retry_after = _overload.test_full_queue_rejects_fast_with_retry_after
test_request_past_its_deadline_gets_504 = _overload.test_request_past_its_deadline_gets_504
test_sigterm_finishes_accepted_requests_refuses_new_ones_and_exits_0 = (
    _overload.test_sigterm_finishes_accepted_requests_refuses_new_ones_and_exits_0
)
test_a_second_sigterm_stops_waiting_but_cancels_nothing = (
    _overload.test_a_second_sigterm_stops_waiting_but_cancels_nothing
)

_readiness = _sibling("test_readiness")
gated_bundle = _readiness.gated_bundle
test_the_port_answers_503_loading_until_the_model_is_warm = (
    _readiness.test_the_port_answers_503_loading_until_the_model_is_warm
)
test_sigterm_while_loading_exits_at_once_and_cleanly = _readiness.test_sigterm_while_loading_exits_at_once_and_cleanly
test_a_model_that_fails_to_load_exits_non_zero_and_says_why = (
    _readiness.test_a_model_that_fails_to_load_exits_non_zero_and_says_why
)


# -- what only the split has -------------------------------------------------------------------------------------
def children(pid: int) -> dict[str, list[int]]:
    """The supervisor's children by role (`engine`, `front`), from /proc."""
    found: dict[str, list[int]] = {"engine": [], "front": []}
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        role = "engine" if b"--engine" in argv else "front" if b"--front" in argv else "other"
        found.setdefault(role, []).append(int(child))
    return found


def environ(pid: int) -> dict[str, str]:
    pairs = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(p.decode(errors="replace").partition("=")[::2] for p in pairs if p)


async def test_killing_a_front_loses_nothing_the_other_front_accepted(
    image_server_factory: Callable[..., AbstractContextManager[Server]],
) -> None:
    # 12 clients, each on its own keep-alive connection, send for 5 s; one front is SIGKILLed after 1.5 s. A request
    # in flight on the killed front's connections fails as a transport error (that process is gone), at most one per
    # connection; every answer that arrives is a 200, and the supervisor puts a new front in its place.
    with image_server_factory(MAX_BATCH_SIZE="8", MAX_WAIT_MS="5") as server:
        before = children(server.process.pid)
        assert len(before["front"]) == 2, before
        assert len(before["engine"]) == 1, before
        image = encode(render_sample("square", 7))
        statuses: list[int] = []
        broken: list[str] = []
        stop_at = time.monotonic() + 5.0

        async def client_loop() -> None:
            while time.monotonic() < stop_at:
                async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
                    try:
                        while time.monotonic() < stop_at:
                            response = await client.post("/v1/predict", content=image, headers=JPEG)
                            statuses.append(response.status_code)
                    except httpx.TransportError as exc:
                        broken.append(type(exc).__name__)

        async def kill_one() -> None:
            await asyncio.sleep(1.5)
            os.kill(before["front"][0], signal.SIGKILL)

        await asyncio.gather(kill_one(), *(client_loop() for _ in range(12)))
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            after_kill = [await client.post("/v1/predict", content=image, headers=JPEG) for _ in range(10)]
        deadline = time.monotonic() + 120
        while len(children(server.process.pid)["front"]) < 2 or "starting another" not in server.log():
            assert time.monotonic() < deadline, server.log()[-3000:]
            await asyncio.sleep(0.5)
    assert statuses
    assert set(statuses) == {200}, sorted(set(statuses))
    assert len(broken) <= 12, broken
    assert [r.status_code for r in after_kill] == [200] * 10


def test_the_engine_dying_ends_the_pod_non_zero(
    image_server_factory: Callable[..., AbstractContextManager[Server]],
) -> None:
    with image_server_factory() as server:
        engine = children(server.process.pid)["engine"][0]
        os.kill(engine, signal.SIGKILL)
        code = server.process.wait(30)
        log = server.log()
    assert code != 0
    assert "the engine exited" in log


def test_no_front_can_use_cuda(image_server_factory: Callable[..., AbstractContextManager[Server]]) -> None:
    import torch

    with image_server_factory() as server:
        roles = children(server.process.pid)
        fronts = [environ(pid) for pid in roles["front"]]
        engine = environ(roles["engine"][0])
        maps = {pid: Path(f"/proc/{pid}/maps").read_text() for pid in roles["front"] + roles["engine"]}
        device = httpx.get(f"{server.url}/v1/models", timeout=30).json()["device"]
    assert fronts
    assert all(env.get("CUDA_VISIBLE_DEVICES") == "" for env in fronts), fronts
    assert "CUDA_VISIBLE_DEVICES" not in engine or engine["CUDA_VISIBLE_DEVICES"] != ""
    assert not any("libcuda.so" in maps[pid] for pid in roles["front"]), "a front loaded the CUDA driver"
    if torch.cuda.is_available():  # the engine on a GPU machine really owns the device, and says so to clients
        assert "libcuda.so" in maps[roles["engine"][0]]
        assert device.startswith("cuda")


async def test_the_metrics_add_up_over_the_processes(
    image_server_factory: Callable[..., AbstractContextManager[Server]],
) -> None:
    # Batches wait up to 2 s to fill: while 6 requests wait, the engine's queue depth is visible through any front.
    with image_server_factory(MAX_BATCH_SIZE="32", MAX_WAIT_MS="2000") as server:
        image = encode(render_sample("cross", 3))
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            waiting = [asyncio.ensure_future(client.post("/v1/predict", content=image, headers=JPEG)) for _ in range(6)]
            await asyncio.sleep(1.0)
            during = await asyncio.to_thread(scrape, server.url)
            answers = await asyncio.gather(*waiting)
            more = [await client.post("/v1/predict", content=image, headers=JPEG) for _ in range(14)]
        after = await asyncio.to_thread(scrape, server.url)
    assert [r.status_code for r in answers + more] == [200] * 20
    assert during[("image_classifier_queue_depth", ())] >= 1, "the engine's queue depth did not reach the fronts"
    predict_200 = ("image_classifier_requests_total", (("endpoint", "/v1/predict"), ("status", "200")))
    assert after[predict_200] == 20  # counted by two front processes, exported as one sum
    assert after[("image_classifier_stage_started_total", (("stage", "preprocess"),))] == 20
    assert after[("image_classifier_batch_size_count", ())] >= 2  # counted by the engine
    assert after[("image_classifier_batch_size_sum", ())] == 20
    assert after[("image_classifier_ready", ())] == 1
    assert after[("image_classifier_inflight_requests", ())] == 0

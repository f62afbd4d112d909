"""The built images, run for real: readiness, demo predictions, non-root + read-only root fs, SIGTERM drain, sizes."""

from __future__ import annotations

import io
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
import pytest

from ops import core
from ops.images import build as image_build
from ops.images import docker as image_docker
from ops.images import versions as image_versions

REPO = Path(__file__).resolve().parents[2]
# Seeds far from the ones the demo bundle trains on (ops.models renders its own sets).
IMAGE_SEEDS = range(900_000, 900_006)
MIN_DEMO_ACCURACY = 0.9
GRACE_PERIOD_S = 30.0  # the pods' terminationGracePeriodSeconds
DRAIN_TIMEOUT_S = 10.0

PNG = {"content-type": "image/png"}
cold_starts: dict[str, float] = {}
sigterm_outcomes: Counter[str] = Counter()
RunService = Callable[..., AbstractContextManager[Any]]


def png_bytes(label: str, seed: int) -> bytes:
    from image_classifier.demo import render_sample  # type: ignore[import-untyped,unused-ignore]

    buf = io.BytesIO()
    render_sample(label, seed).save(buf, format="PNG")
    return buf.getvalue()


def text_samples(per_label: int = 6) -> list[tuple[str, str]]:
    """Labelled examples from the demo data set, a few per label."""
    rows = [json.loads(ln) for ln in (REPO / "services/text_classifier/data/moderation.jsonl").read_text().splitlines()]
    picked: list[tuple[str, str]] = []
    seen: Counter[str] = Counter()
    for row in rows:
        if seen[row["label"]] < per_label:
            picked.append((row["text"], row["label"]))
            seen[row["label"]] += 1
    return picked


def exec_in(running: Any, cmd: list[str], user: str = "") -> tuple[int, str]:
    code, out = running.wrapped.exec_run(cmd, user=user)
    return int(code), out.decode(errors="replace")


# ---------------------------------------------------------------------------------------------------------------


def test_cpu_base_runs_as_app_user_with_pinned_torch(cpu_images: dict[str, str]) -> None:
    attrs = image_docker.run(["docker", "image", "inspect", cpu_images["base"]], capture=True, quiet=True)
    config = json.loads(attrs)[0]["Config"]
    assert config["User"] == f"{core.SERVICE_UID}:{core.SERVICE_UID}"
    labels = config["Labels"]
    v = image_versions.load_versions()
    assert labels["io.eks-inference.torch.version"] == f"{v['pytorch']['torch']}+{v['pytorch']['wheel_variant']}"
    assert labels["org.opencontainers.image.title"]
    assert labels["io.eks-inference.torch.wheels"]  # says which wheels (CPU index or the PyPI fallback)


@pytest.mark.parametrize("name", list(core.SERVICES))
def test_service_ready_and_predicts_demo_inputs(cpu_images: dict[str, str], run_service: RunService, name: str) -> None:
    with run_service(cpu_images[name], name) as svc, httpx.Client(base_url=svc.url, timeout=30.0) as client:
        cold_starts[f"{name}-cpu"] = round(svc.ready_after_s, 2)
        assert client.get("/healthz").status_code == 200
        models = client.get("/v1/models")
        assert models.status_code == 200, models.text
        if name == "image-classifier":
            correct = total = 0
            for label in ("circle", "square", "triangle", "cross"):
                for seed in IMAGE_SEEDS:
                    resp = client.post("/v1/predict", content=png_bytes(label, seed), headers=PNG)
                    assert resp.status_code == 200, resp.text
                    total += 1
                    correct += resp.json()["predictions"][0]["label"] == label
        else:
            samples = text_samples()
            resp = client.post("/v1/predict", json={"texts": [t for t, _ in samples]})
            assert resp.status_code == 200, resp.text
            got = [p["label"] for p in resp.json()["predictions"]]
            total = len(samples)
            correct = sum(g == want for g, (_, want) in zip(got, samples, strict=True))
        assert correct / total >= MIN_DEMO_ACCURACY, f"{correct}/{total} demo inputs classified correctly"
        metrics = client.get("/metrics").text
        assert f"{name.replace('-', '_')}_" in metrics


@pytest.mark.parametrize("name", list(core.SERVICES))
def test_runs_non_root_on_read_only_root_fs(cpu_images: dict[str, str], run_service: RunService, name: str) -> None:
    with run_service(cpu_images[name], name) as svc:
        svc.wrapped.reload()
        assert svc.wrapped.attrs["HostConfig"]["ReadonlyRootfs"] is True
        assert svc.wrapped.attrs["Config"]["User"] == f"{core.SERVICE_UID}:{core.SERVICE_UID}"
        code, out = exec_in(svc, ["id", "-u"])
        assert (code, out.strip()) == (0, str(core.SERVICE_UID))
        # PID 1 is the server itself (exec form), running as the app user.
        code, out = exec_in(svc, ["cat", "/proc/1/status"])
        assert code == 0
        assert f"Uid:\t{core.SERVICE_UID}\t" in out
        code, out = exec_in(svc, ["cat", "/proc/1/cmdline"])
        assert out.split("\0")[:3] == ["python", "-m", core.SERVICES[name].package]
        # Even root cannot write outside /tmp: the root fs itself is read-only (EROFS, not just EACCES).
        for user in (str(core.SERVICE_UID), "0"):
            for path in ("/opt/app/x", "/opt/venv/x", "/opt/models/x", "/x"):
                code, out = exec_in(svc, ["python", "-c", f"open({path!r}, 'w')"], user=user)
                assert code != 0, (user, path)
                assert "Read-only file system" in out, (user, path, out)
        code, out = exec_in(svc, ["python", "-c", "open('/tmp/probe', 'w').write('ok')"])
        assert code == 0, out


def test_sigterm_during_load_loses_no_accepted_request(cpu_images: dict[str, str], run_service: RunService) -> None:
    """A stream of requests keeps running across SIGTERM: every request the server accepted gets its 200."""
    name = "image-classifier"
    body = png_bytes("circle", 900_100)
    outcomes: Counter[str] = Counter()
    lost: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    sigterm_at: list[float] = []

    def client_loop(url: str) -> None:
        # A connection per request, like a proxy that does not reuse upstream connections: a keep-alive connection
        # the server closes while idle would make "accepted" ambiguous. Each client acts like a load balancer:
        # once the replica refuses (503 draining, or connection refused) it sends it nothing new.
        limits = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(base_url=url, timeout=20.0, limits=limits) as client:
            while not stop.is_set():
                try:
                    resp = client.post("/v1/predict", content=body, headers={"content-type": "image/png"})
                except httpx.ConnectError:
                    outcome = "refused"  # listener closed: never accepted
                except httpx.HTTPError as exc:
                    outcome = "lost"
                    with lock:
                        lost.append(f"{type(exc).__name__}: {exc}")
                else:
                    if resp.status_code == 200:
                        outcome = "ok-after-sigterm" if sigterm_at else "ok"
                    elif resp.status_code == 503 and sigterm_at and resp.json()["error"]["code"] == "draining":
                        outcome = "rejected-draining"  # refused up front, not accepted
                    else:
                        outcome = f"http-{resp.status_code}"
                        with lock:
                            lost.append(f"{resp.status_code}: {resp.text[:200]}")
                with lock:
                    outcomes[outcome] += 1
                if sigterm_at and outcome in ("refused", "rejected-draining"):
                    return

    env = {"IMAGE_CLASSIFIER_DRAIN_TIMEOUT_S": str(DRAIN_TIMEOUT_S), "IMAGE_CLASSIFIER_MAX_WAIT_MS": "20"}
    with run_service(cpu_images[name], name, env=env) as svc:
        threads = [threading.Thread(target=client_loop, args=(svc.url,), daemon=True) for _ in range(6)]
        for t in threads:
            t.start()
        time.sleep(3.0)
        with lock:
            assert outcomes["ok"] > 0, f"no request served before SIGTERM: {dict(outcomes)}"
        sigterm_at.append(time.monotonic())
        svc.wrapped.kill(signal="SIGTERM")
        result = svc.wrapped.wait(timeout=GRACE_PERIOD_S + 5)
        exited_after = time.monotonic() - sigterm_at[0]
        stop.set()
        for t in threads:
            t.join(timeout=25)
        logs = svc.wrapped.logs().decode(errors="replace")[-2000:]
    assert result["StatusCode"] == 0, f"exit code {result['StatusCode']}\n{logs}"
    assert exited_after < GRACE_PERIOD_S, f"exited {exited_after:.1f}s after SIGTERM (grace {GRACE_PERIOD_S}s)"
    assert not lost, f"{len(lost)} accepted requests lost: {lost[:5]}; outcomes {dict(outcomes)}"
    assert outcomes["ok"] > 0
    cold_starts["sigterm-exit-s"] = round(exited_after, 2)
    sigterm_outcomes.update(outcomes)


def test_cuda_base_check_really_runs(cuda_images: dict[str, str]) -> None:
    """The check the CUDA build ran passes for the matrix targets and fails for an arch the wheels lack."""
    v = image_versions.load_versions()
    args = [
        "python", "/usr/local/share/eks-inference/check_torch.py",
        "--torch", v["pytorch"]["torch"], "--torchvision", v["pytorch"]["torchvision"],
        "--variant", v["pytorch"]["wheel_variant"], "--cuda", v["pytorch"]["cuda"],
    ]  # fmt: skip
    targets = [" ".join(image_versions.target_archs())]
    good = image_docker.run(
        ["docker", "run", "--rm", "--network", "none", cuda_images["base"], *args, "--archs", *targets],
        capture=True,
        quiet=True,
    )
    assert "covered" in good
    proc = core.run(
        ["docker", "run", "--rm", "--network", "none", cuda_images["base"], *args, "--archs", "sm_70"],
        ok_codes=range(256),
    )
    assert proc.returncode == 1
    assert "no CUDA kernels for target archs ['sm_70']" in proc.stderr
    labels = json.loads(
        image_docker.run(["docker", "image", "inspect", cuda_images["base"]], capture=True, quiet=True)
    )[0]["Config"]["Labels"]
    assert labels["io.eks-inference.cuda.archs"] == " ".join(image_versions.target_archs())
    assert labels["io.eks-inference.driver.min-version"] == v["driver"]["min_version"]


def test_cuda_image_classifier_falls_back_to_cpu(cuda_images: dict[str, str], run_service: RunService) -> None:
    """The GPU image on a host without a GPU: DEVICE=auto picks the CPU and it still serves."""
    with (
        run_service(cuda_images["image-classifier"], "image-classifier") as svc,
        httpx.Client(base_url=svc.url, timeout=30.0) as client,
    ):
        cold_starts["image-classifier-cuda-on-cpu"] = round(svc.ready_after_s, 2)
        resp = client.post("/v1/predict", content=png_bytes("square", 900_200), headers=PNG)
        assert resp.status_code == 200, resp.text
        assert resp.json()["predictions"][0]["label"] == "square"
        assert resp.json()["model"]["device"] == "cpu"


def test_write_report(build_records: dict[str, image_build.BuildRecord]) -> None:
    """Sizes, cold starts and the base/service build-time split, into build/reports/images.json."""
    assert build_records, "no images were built in this session"
    sizes = {}
    for kind, record in build_records.items():
        sizes[kind] = {"image": record.image, "size_gb": round(image_docker.image_size(record.image) / 1e9, 3)}
    image_build.update_report("sizes", sizes)
    image_build.update_report("cold_start_s", dict(cold_starts))
    image_build.update_report("sigterm_outcomes", dict(sigterm_outcomes))
    image_build.update_report("this_session", {k: asdict(r) for k, r in build_records.items()})
    report: dict[str, Any] = json.loads(image_build.REPORT_PATH.read_text())
    assert report["sizes"]

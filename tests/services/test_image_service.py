"""The image classifier over real HTTP: the three request forms, correct demo labels, probes, metrics, bad input."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import httpx
import pytest
from PIL import Image

from image_classifier.demo import LABELS, render_sample
from testkit import Origin, Server, encode


def top_label(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    label: str = response.json()["predictions"][0]["label"]
    return label


def test_probes_and_model_info(image_service: Server) -> None:
    with image_service.client() as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/readyz").status_code == 200
        info = client.get("/v1/models").json()
    assert info["labels"] == list(LABELS)
    assert info["device"] == "cpu"
    assert info["batching"] == {"enabled": True, "max_batch_size": 8, "max_wait_ms": 5.0, "queue_capacity": 256}
    assert info["precision"] == "fp32"
    assert len(info["weights_sha256"]) == 64


@pytest.mark.parametrize("label", LABELS)
def test_demo_images_get_the_right_label_in_every_form(image_service: Server, origin: Origin, label: str) -> None:
    image = render_sample(label, seed=424242)
    jpeg, png = encode(image, "JPEG", quality=92), encode(image, "PNG")
    origin.files[f"/{label}.png"] = png
    with image_service.client() as client:
        raw = client.post("/v1/predict", content=jpeg, headers={"content-type": "image/jpeg"})
        as_b64 = client.post("/v1/predict", json={"image_b64": base64.b64encode(png).decode()})
        by_url = client.post("/v1/predict", json={"image_url": f"{origin.url}/{label}.png"})
        webp = client.post("/v1/predict", content=encode(image, "WEBP"), headers={"content-type": "image/webp"})
    assert [top_label(r) for r in (raw, as_b64, by_url, webp)] == [label] * 4
    body = raw.json()
    assert body["model"]["name"] == "image-demo"
    assert {"preprocess", "queue_wait", "inference", "total"} <= set(body["timings_ms"])


def test_accuracy_on_fresh_demo_images_over_http(image_service: Server) -> None:
    seeds = range(5_000_000, 5_000_010)
    with image_service.client() as client:
        correct = sum(
            top_label(
                client.post(
                    "/v1/predict", content=encode(render_sample(lbl, s)), headers={"content-type": "image/jpeg"}
                )
            )
            == lbl
            for lbl in LABELS
            for s in seeds
        )
    assert correct / (len(LABELS) * len(seeds)) >= 0.9


def test_exif_orientation_is_applied(image_service: Server) -> None:
    image = render_sample("triangle", seed=77, size=128)
    rotated = image.transpose(Image.Transpose.ROTATE_270)  # stored sideways...
    exif = Image.Exif()
    exif[0x0112] = 6  # ...with the EXIF tag saying "rotate 90 CW to display"
    with image_service.client() as client:
        response = client.post(
            "/v1/predict", content=encode(rotated, "JPEG", exif=exif), headers={"content-type": "image/jpeg"}
        )
    assert response.status_code == 200


def test_metrics_are_exported(image_service: Server) -> None:
    with image_service.client() as client:
        client.post("/v1/predict", content=encode(render_sample("cross", 1)), headers={"content-type": "image/jpeg"})
        text = client.get("/metrics").text
    for name in (
        'image_classifier_requests_total{endpoint="/v1/predict",status="200"}',
        "image_classifier_queue_wait_seconds_bucket",
        "image_classifier_preprocess_seconds_count",
        "image_classifier_inference_seconds_count",
        "image_classifier_request_duration_seconds_bucket",
        "image_classifier_batch_size_bucket",
        "image_classifier_inflight_requests",
        "image_classifier_queue_depth",
        'image_classifier_model_info{device="cpu"',
    ):
        assert name in text, name


def _png_bomb() -> bytes:
    """A 20000x20000 PNG: tiny on the wire, 1.2 GB of pixels if anyone decoded it."""
    return encode(Image.new("1", (20000, 20000)), "PNG", optimize=True)


BAD_REQUESTS = {
    "non-image bytes": (
        {"content": b"this is not an image", "headers": {"content-type": "image/jpeg"}},
        400,
        "invalid_image",
    ),
    "truncated jpeg": (
        {"content": encode(render_sample("circle", 3))[:700], "headers": {"content-type": "image/jpeg"}},
        400,
        "invalid_image",
    ),
    "1x1 image": (
        {"content": encode(Image.new("RGB", (1, 1)), "PNG"), "headers": {"content-type": "image/png"}},
        400,
        "invalid_image",
    ),
    "png bomb": ({"content": _png_bomb(), "headers": {"content-type": "image/png"}}, 400, "invalid_image"),
    "gif is not allowed": (
        {"content": encode(Image.new("RGB", (32, 32)), "GIF"), "headers": {"content-type": "image/png"}},
        400,
        "invalid_image",
    ),
    "wrong content type": (
        {"content": b"hello", "headers": {"content-type": "text/plain"}},
        415,
        "unsupported_media_type",
    ),
    "no content type": ({"content": b"hello"}, 415, "unsupported_media_type"),
    "invalid json": (
        {"content": b"{not json", "headers": {"content-type": "application/json"}},
        400,
        "invalid_request",
    ),
    "json array": ({"json": [1, 2]}, 400, "invalid_request"),
    "missing fields": ({"json": {}}, 400, "invalid_request"),
    "both fields": ({"json": {"image_url": "http://x/y", "image_b64": "AAAA"}}, 400, "invalid_request"),
    "invalid base64": ({"json": {"image_b64": "***not-base64***"}}, 400, "invalid_request"),
    "base64 of text": ({"json": {"image_b64": base64.b64encode(b"plain text").decode()}}, 400, "invalid_image"),
    "private address url": ({"json": {"image_url": "http://10.0.0.1/cat.jpg"}}, 403, "url_forbidden"),
    "metadata url": ({"json": {"image_url": "http://169.254.169.254/latest/meta-data/"}}, 403, "url_forbidden"),
    "file url": ({"json": {"image_url": "file:///etc/passwd"}}, 403, "url_forbidden"),
    # Unreachable and refused targets get one answer, so the answers cannot map hosts or ports.
    "unresolvable host": ({"json": {"image_url": "http://no-such-host.invalid/cat.jpg"}}, 403, "url_forbidden"),
    "loopback, a port not allow-listed": ({"json": {"image_url": "http://127.0.0.1:1/x.jpg"}}, 403, "url_forbidden"),
    "ipv4-compatible ipv6": ({"json": {"image_url": "http://[::127.0.0.1]/x.jpg"}}, 403, "url_forbidden"),
    "port out of range": ({"json": {"image_url": "http://127.0.0.1:99999/x.jpg"}}, 400, "invalid_request"),
    "port not a number": ({"json": {"image_url": "http://127.0.0.1:abc/x.jpg"}}, 400, "invalid_request"),
    "negative port": ({"json": {"image_url": "http://127.0.0.1:-1/x.jpg"}}, 400, "invalid_request"),
    "unclosed ipv6 bracket": ({"json": {"image_url": "http://[::1/x.jpg"}}, 400, "invalid_request"),
    "bad ipv6 literal": ({"json": {"image_url": "http://[zz]/x.jpg"}}, 400, "invalid_request"),
    "doubled port": ({"json": {"image_url": "http://127.0.0.1:80:80/x.jpg"}}, 400, "invalid_request"),
    "lone surrogate in url": (
        {"content": b'{"image_url": "http://\\ud800.example/x.jpg"}', "headers": {"content-type": "application/json"}},
        400,
        "invalid_request",
    ),
    "json nested 1000 deep": (
        {
            "content": b'{"image_url": ' + b"[" * 1000 + b"]" * 1000 + b"}",
            "headers": {"content-type": "application/json"},
        },
        400,
        "invalid_request",
    ),
    "body too large": (
        {"content": b"\xff\xd8" + b"0" * (11 * 1024 * 1024), "headers": {"content-type": "image/jpeg"}},
        413,
        "payload_too_large",
    ),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS), ids=list(BAD_REQUESTS))
def test_bad_input_gets_a_json_4xx_and_the_server_keeps_serving(image_service: Server, case: str) -> None:
    kwargs, status, code = BAD_REQUESTS[case]
    with image_service.client() as client:
        response = client.post("/v1/predict", **kwargs)  # type: ignore[arg-type]
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert error["code"] == code
        assert "Traceback" not in error["message"]
        assert " object at 0x" not in error["message"]
        assert client.get("/readyz").status_code == 200
        good = client.post(
            "/v1/predict", content=encode(render_sample("square", 9)), headers={"content-type": "image/jpeg"}
        )
    assert top_label(good) == "square"


def test_hostile_urls_keep_the_connection_alive(image_service: Server) -> None:
    """A 4xx for bad input must not reset the kept-alive connection (it used to, after a 500)."""
    import http.client
    import json

    conn = http.client.HTTPConnection("127.0.0.1", image_service.port, timeout=30)
    try:
        ports = []
        for url in ("http://127.0.0.1:99999/", "http://[::1/", "http://h:80:80/", "http://[zz]/"):
            conn.request("POST", "/v1/predict", json.dumps({"image_url": url}), {"content-type": "application/json"})
            response = conn.getresponse()
            response.read()
            assert response.status == 400
            assert conn.sock is not None, "the server closed the connection"
            ports.append(conn.sock.getsockname()[1])
    finally:
        conn.close()
    assert len(set(ports)) == 1


def test_gnu_wrapped_base64_is_accepted(image_service: Server) -> None:
    encoded = base64.b64encode(encode(render_sample("cross", 11), "PNG")).decode()
    wrapped = "\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76)) + "\n"  # `base64` (GNU) output
    with image_service.client() as client:
        response = client.post("/v1/predict", json={"image_b64": wrapped})
    assert top_label(response) == "cross"
    assert isinstance(response.json()["timings_ms"]["batch_size"], int)


def test_redirect_to_a_private_address_is_refused(image_service: Server, origin: Origin) -> None:
    origin.redirects["/to-metadata"] = "http://169.254.169.254/latest/meta-data/iam/"
    with image_service.client() as client:
        response = client.post("/v1/predict", json={"image_url": f"{origin.url}/to-metadata"})
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "url_forbidden"


def test_remote_image_too_large_is_refused(image_service: Server, origin: Origin) -> None:
    origin.files["/huge.jpg"] = b"\xff\xd8" + b"1" * (11 * 1024 * 1024)
    with image_service.client() as client:
        response = client.post("/v1/predict", json={"image_url": f"{origin.url}/huge.jpg"})
    assert response.status_code == 413


def test_memory_stays_bounded_under_repeated_bad_input(image_service: Server) -> None:
    def rss_kib() -> int:
        status = open(f"/proc/{image_service.process.pid}/status").read()  # noqa: SIM115
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")))

    bomb, junk = _png_bomb(), io.BytesIO(encode(render_sample("circle", 5))).getvalue()[:500]
    with image_service.client() as client:
        for _ in range(20):
            client.post("/v1/predict", content=bomb, headers={"content-type": "image/png"})
        before = rss_kib()
        for _ in range(100):
            client.post("/v1/predict", content=bomb, headers={"content-type": "image/png"})
            client.post("/v1/predict", content=junk, headers={"content-type": "image/jpeg"})
        after = rss_kib()
    assert after - before < 64 * 1024, f"RSS grew by {(after - before) // 1024} MiB"


def test_the_warm_up_item_is_decoded_from_every_allowed_format(bundles: dict[str, Path]) -> None:
    """The warm-up goes through decode and resize (so the first client does not pay for Pillow's plugins): its item
    is a real preprocessed mid-grey image of the input size, not a blank tensor."""
    import torch

    from image_classifier.model import ImageClassifier
    from image_classifier.settings import Settings

    model = ImageClassifier(Settings(model_uri=str(bundles["image-demo"]), device="cpu"))
    model.load()
    item = model.warmup_item()
    assert isinstance(item, torch.Tensor)  # on CPU: the pixels (with GPU decode on it is the JPEG's EncodedImage)
    assert tuple(item.shape) == (3, model.spec.input_size, model.spec.input_size)
    assert 120 <= float(item.float().mean()) <= 135

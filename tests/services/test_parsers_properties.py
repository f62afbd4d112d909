"""Property-based tests of the request parsers: any input gives a typed 4xx error or a valid parse, never a crash."""

from __future__ import annotations

import base64
import contextlib
import json

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image
from starlette.requests import Request

from image_classifier.app import PredictRequest as ImageRequest
from image_classifier.app import decode_b64
from image_classifier.model import decode_image
from serving.app import MAX_JSON_DEPTH, json_too_deep, parse_json_body
from serving.errors import InvalidImage, InvalidRequest, ServingError, UnsupportedMediaType
from testkit import encode
from text_classifier.app import FORBIDDEN_CHARACTERS, check_texts
from text_classifier.app import PredictRequest as TextRequest
from text_classifier.settings import Settings as TextSettings


def request_with(content_type: str) -> Request:
    return Request({"type": "http", "headers": [(b"content-type", content_type.encode())], "method": "POST"})


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=10,
)


@given(body=st.binary(max_size=300))
def test_arbitrary_bytes_never_crash_the_json_parsers(body: bytes) -> None:
    for model in (ImageRequest, TextRequest):
        with contextlib.suppress(InvalidRequest):
            parse_json_body(request_with("application/json"), body, model)


@given(
    document=st.dictionaries(st.sampled_from(["image_url", "image_b64", "text", "texts", "x"]), JSON_VALUES, max_size=3)
)
def test_arbitrary_json_objects_parse_or_are_invalid_requests(document: dict[str, object]) -> None:
    body = json.dumps(document).encode()
    try:
        parsed = parse_json_body(request_with("application/json"), body, ImageRequest)
    except InvalidRequest:
        return
    assert (parsed.image_url is None) != (parsed.image_b64 is None)


@given(content_type=st.text(max_size=30).filter(lambda t: t.strip().lower() != "application/json"))
def test_non_json_content_types_are_415(content_type: str) -> None:
    try:
        parse_json_body(request_with(content_type.encode("latin-1", "ignore").decode("latin-1")), b"{}", TextRequest)
    except UnsupportedMediaType:
        return
    except InvalidRequest:
        return  # content types that normalize to application/json after stripping
    raise AssertionError("a non-JSON content type was accepted")


@given(payload=st.binary(max_size=200))
def test_base64_round_trips(payload: bytes) -> None:
    assert decode_b64(base64.b64encode(payload).decode()) == payload


@given(text=st.text(max_size=40))
def test_base64_garbage_is_an_invalid_request(text: str) -> None:
    with contextlib.suppress(InvalidRequest):
        decode_b64(text)


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=2000))
def test_random_bytes_are_never_decoded_as_images(data: bytes) -> None:
    with contextlib.suppress(InvalidImage):
        decode_image(data, allowed_formats=frozenset({"JPEG", "PNG", "WEBP"}), max_pixels=10**6, min_side=8)


@settings(max_examples=40, deadline=None)
@given(cut=st.integers(min_value=0, max_value=2000), flip=st.integers(min_value=0, max_value=255))
def test_corrupted_images_decode_or_fail_cleanly(cut: int, flip: int) -> None:
    jpeg = bytearray(encode(Image.new("RGB", (64, 48), (flip, 30, 200))))
    jpeg[min(cut, len(jpeg) - 1)] ^= flip
    try:
        image = decode_image(
            bytes(jpeg[: max(cut, 1)] if cut % 2 else jpeg),
            allowed_formats=frozenset({"JPEG"}),
            max_pixels=10**6,
            min_side=8,
        )
    except ServingError as exc:
        status = exc.status_code
    else:
        assert image.mode == "RGB"
        return
    assert status == 400


@given(texts=st.lists(st.text(max_size=2100), max_size=40))
def test_text_limits_hold_for_any_list(texts: list[str]) -> None:
    settings_ = TextSettings()
    try:
        check_texts(texts, settings_)
    except InvalidRequest:
        return
    assert 1 <= len(texts) <= settings_.max_texts
    assert all(t.strip() and len(t) <= settings_.max_text_chars for t in texts)


@given(depth=st.integers(min_value=0, max_value=3000), opener=st.sampled_from(["[", '{"a":']))
def test_any_nesting_depth_parses_or_is_an_invalid_request(depth: int, opener: str) -> None:
    closer = "]" if opener == "[" else "}"
    body = ('{"text": ' + opener * depth + "1" + closer * depth + "}").encode()
    for model in (ImageRequest, TextRequest):
        with contextlib.suppress(InvalidRequest):
            parse_json_body(request_with("application/json"), body, model)
    assert json_too_deep(body) == (depth + 1 > MAX_JSON_DEPTH)


@given(text=st.text(max_size=40))
def test_brackets_inside_strings_do_not_count_as_nesting(text: str) -> None:
    body = json.dumps({"text": text + "[[[[{{{{" * 10}).encode()
    assert not json_too_deep(body)


@example(text="\ud800")
@example(text="ok\x00")
@given(text=st.text(alphabet=st.characters(exclude_categories=[]), max_size=60))  # surrogates included
def test_texts_that_pass_the_checks_encode_as_utf8_and_have_no_control_characters(text: str) -> None:
    try:
        check_texts([text], TextSettings())
    except InvalidRequest:
        return
    text.encode("utf-8")  # a lone surrogate would raise here (and fail the tokenizer's whole batch)
    assert not FORBIDDEN_CHARACTERS.search(text)

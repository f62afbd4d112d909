"""The profile's stage categories."""

from __future__ import annotations

from ops.perf.profile import categorize


def test_profile_categories_go_by_the_deepest_known_frame() -> None:
    handler = "predict (image_classifier/app.py:110)"
    assert categorize(["run (uvicorn/server.py:1)", handler, "validate_python (pydantic/type_adapter.py:1)"]) == (
        "validation (pydantic)"
    )
    assert categorize(["_loop (serving/batcher.py:1)", "forward (torch/nn/modules/conv.py:1)"]).startswith("model")
    assert categorize(["run (anyio/_backends/_asyncio.py:1)", "decode_image (image_classifier/model.py:87)"]) == (
        "preprocess: decode + resize"
    )
    assert categorize(["main (x.py:1)"]) == "other"

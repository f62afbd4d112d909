"""The LitServe adapter's API class (module level: LitServe pickles it into its inference worker process).

No `from __future__ import annotations` here: LitServe copies `decode_request`'s annotation onto its FastAPI
endpoint, which must see the real `Annotated[bytes, Depends(raw_body)]`, not a string.
"""

from typing import Annotated, Any

import litserve as ls
import torch
from fastapi import Depends, Request


async def raw_body(request: Request) -> bytes:
    """The request body as bytes: LitServe parses JSON unless `decode_request` asks for something else."""
    return await request.body()


class ImageAPI(ls.LitAPI):
    """Our ImageClassifier behind LitServe: raw JPEG in, top-k predictions out; LitServe forms the batches."""

    def __init__(self, model_uri: str, precision: str = "fp32", channels_last: bool = False, **options: Any) -> None:
        super().__init__(**options)
        self.model_uri = model_uri
        self.precision = precision
        self.channels_last = channels_last

    def setup(self, device: str) -> None:
        from ops.perf.peermodel import load_model

        # LitServe names the device it gives this worker `cuda:0`, `cpu`; our Settings take `cuda` or `cpu`.
        self.classifier = load_model(
            self.model_uri, self.max_batch_size, device.split(":")[0], self.precision, self.channels_last
        )

    def decode_request(self, request: Annotated[bytes, Depends(raw_body)]) -> torch.Tensor:
        return self.classifier.preprocess(request)

    def batch(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        return inputs  # predict takes the list, exactly as our batcher hands it over

    def predict(self, x: Any) -> list[Any]:
        items = x if isinstance(x, list) else [x]
        outputs = list(self.classifier.postprocess(self.classifier.predict(items)))
        return outputs if isinstance(x, list) else outputs[0]

    def unbatch(self, output: list[Any]) -> list[Any]:
        return output

    def encode_response(self, output: Any) -> dict[str, Any]:
        return {"predictions": output}

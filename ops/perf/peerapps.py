"""The peer servers' adapters: our ImageClassifier and demo bundle served by LitServe and by KServe's model server.

Run as `python -m ops.perf.peerapps {litserve,kserve} --model-uri DIR --port N --max-batch-size B --max-wait-ms W`
(by `ops.perf.peers`, pinned like our service). Both use the model class our service uses, loaded the same way
(`ImageClassifier.load`), with the same torch thread count (the CPUs this process may run on), warmed up for every
batch size before they report ready.

- LitServe: a `LitAPI` with LitServe's own dynamic batching (`max_batch_size`, `batch_timeout`); the request is the
  raw JPEG body, read by a FastAPI dependency (LitServe otherwise parses JSON), decoded in LitServe's worker.
- KServe: a `kserve.Model` on `ModelServer` (REST only), called with the v1 protocol, `{"instances": [{"image_b64":
  ...}]}`, its closest equivalent of a raw body. KServe's python server has no in-process batching (its batcher is
  the Go agent sidecar an InferenceService adds in a cluster), so it serves one request per predict call.
"""

from __future__ import annotations

import argparse
import base64
import logging
import time
from collections.abc import Sequence
from typing import Any

import torch

from ops.perf.peermodel import MODEL_NAME, load_model

log = logging.getLogger(__name__)


def litserve_server(model_uri: str, max_batch_size: int, max_wait_ms: float) -> Any:
    """A LitServer for the classifier at /v1/predict, with LitServe's batching at our batch size and wait."""
    import litserve as ls

    from ops.perf.peer_litserve import ImageAPI

    api = ImageAPI(
        model_uri,
        max_batch_size=max_batch_size,
        batch_timeout=max_wait_ms / 1000.0,
        api_path="/v1/predict",
    )
    return ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=1, timeout=30)


def kserve_model(model_uri: str, max_batch_size: int) -> Any:
    """A kserve.Model for the classifier: v1 `instances` of `{"image_b64": ...}` in, `predictions` out."""
    import kserve

    class ImageModel(kserve.Model):
        def __init__(self) -> None:
            super().__init__(MODEL_NAME)
            self.classifier: Any = None

        def load(self) -> bool:
            self.classifier = load_model(model_uri, max_batch_size)
            self.ready = True
            return True

        def preprocess(self, payload: dict[str, Any], headers: dict[str, str] | None = None) -> list[torch.Tensor]:
            return [self.classifier.preprocess(base64.b64decode(i["image_b64"])) for i in payload["instances"]]

        def predict(self, payload: list[torch.Tensor], headers: dict[str, str] | None = None) -> dict[str, Any]:
            return {"predictions": self.classifier.postprocess(self.classifier.predict(payload))}

    return ImageModel()


def main(argv: Sequence[str] | None = None) -> None:
    """Serve the demo bundle with one peer server on 127.0.0.1 until killed."""
    parser = argparse.ArgumentParser(description="Serve our image classifier with a peer model server.")
    parser.add_argument("server", choices=["litserve", "kserve"], help="Which peer.")
    parser.add_argument("--model-uri", required=True, help="Bundle directory.")
    parser.add_argument("--port", type=int, required=True, help="HTTP port on 127.0.0.1.")
    parser.add_argument("--max-batch-size", type=int, required=True, help="Dynamic batching: largest batch.")
    parser.add_argument("--max-wait-ms", type=float, required=True, help="Dynamic batching: longest wait.")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.server == "litserve":
        server = litserve_server(args.model_uri, args.max_batch_size, args.max_wait_ms)
        server.run(
            host="127.0.0.1",
            port=args.port,
            num_api_servers=1,
            log_level="warning",
            generate_client_file=False,
        )
    else:
        import kserve

        model = kserve_model(args.model_uri, args.max_batch_size)
        model.load()
        log.info("kserve model loaded in %.1fs", time.perf_counter() - started)
        kserve.ModelServer(http_port=args.port, workers=1, enable_grpc=False, enable_latency_logging=False).start(
            [model]
        )


if __name__ == "__main__":
    main()

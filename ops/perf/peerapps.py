"""The peer servers' adapters: our ImageClassifier and bundle served by LitServe, KServe's model server and PyTriton.

Run as `python -m ops.perf.peerapps {litserve,kserve,pytriton} --model-uri DIR --port N --max-batch-size B
--max-wait-ms W [--device cuda --precision fp16 --channels-last]` (by `ops.perf.peers`, pinned like our service).
Each uses the model class our service uses, loaded the same way (`ImageClassifier.load`, same device, precision
and layout), with the same torch thread count (the CPUs this process may run on), warmed up for every batch size
before it reports ready.

- LitServe: a `LitAPI` with LitServe's own dynamic batching (`max_batch_size`, `batch_timeout`); the request is the
  raw JPEG body, read by a FastAPI dependency (LitServe otherwise parses JSON), decoded in LitServe's worker.
- KServe: a `kserve.Model` on `ModelServer` (REST only), called with the v1 protocol, `{"instances": [{"image_b64":
  ...}]}`, its closest equivalent of a raw body. KServe's python server has no in-process batching (its batcher is
  the Go agent sidecar an InferenceService adds in a cluster), so it serves one request per predict call.
- PyTriton: Triton's C++ HTTP front and dynamic batcher (`max_batch_size`, `max_queue_delay_microseconds`) in front
  of a Python function bound with `Triton.bind`; the request is v2 with the binary tensor extension, the JPEG as
  one BYTES element per item; decoding runs in the bound function (as many instances as `--workers-per-device`).
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


def litserve_server(args: argparse.Namespace) -> Any:
    """A LitServer for the classifier at /v1/predict, with LitServe's batching at our batch size and wait."""
    import litserve as ls

    from ops.perf.peer_litserve import ImageAPI

    api = ImageAPI(
        args.model_uri,
        precision=args.precision,
        channels_last=args.channels_last,
        max_batch_size=args.max_batch_size,
        batch_timeout=args.max_wait_ms / 1000.0,
        api_path="/v1/predict",
    )
    return ls.LitServer(api, accelerator=args.device, devices=1, workers_per_device=args.workers_per_device, timeout=30)


def pytriton_serve(args: argparse.Namespace) -> None:
    """Serve the classifier with PyTriton until killed: Triton's HTTP front and dynamic batcher, our model."""
    import numpy as np
    from pytriton.decorators import batch  # type: ignore[import-not-found, unused-ignore]
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor  # type: ignore[import-not-found, unused-ignore]
    from pytriton.triton import Triton, TritonConfig  # type: ignore[import-not-found, unused-ignore]

    from ops.perf.localservice import free_port

    def instance() -> Any:
        classifier = load_model(args.model_uri, args.max_batch_size, args.device, args.precision, args.channels_last)

        @batch  # type: ignore[misc, unused-ignore]
        def infer(IMAGE: np.ndarray) -> dict[str, np.ndarray]:  # noqa: N803 - the input's name in the request
            top = classifier.postprocess(classifier.predict([classifier.preprocess(bytes(row[0])) for row in IMAGE]))
            return {
                "LABEL": np.array([[t[0]["label"].encode()] for t in top], dtype=np.object_),
                "SCORE": np.array([[t[0]["score"]] for t in top], dtype=np.float32),
            }

        return infer

    ports = {"http_port": args.port, "grpc_port": free_port(), "metrics_port": free_port()}
    config = TritonConfig(http_address="127.0.0.1", **ports)
    with Triton(config=config) as triton:
        triton.bind(
            model_name=MODEL_NAME,
            infer_func=[instance() for _ in range(args.workers_per_device)],
            inputs=[Tensor(name="IMAGE", dtype=bytes, shape=(1,))],
            outputs=[Tensor(name="LABEL", dtype=bytes, shape=(1,)), Tensor(name="SCORE", dtype=np.float32, shape=(1,))],
            config=ModelConfig(
                max_batch_size=args.max_batch_size,
                batcher=DynamicBatcher(max_queue_delay_microseconds=int(args.max_wait_ms * 1000)),
            ),
            strict=False,
        )
        triton.serve()


def kserve_model(model_uri: str, max_batch_size: int, device: str, precision: str, channels_last: bool) -> Any:
    """A kserve.Model for the classifier: v1 `instances` of `{"image_b64": ...}` in, `predictions` out."""
    import kserve

    class ImageModel(kserve.Model):
        def __init__(self) -> None:
            super().__init__(MODEL_NAME)
            self.classifier: Any = None

        def load(self) -> bool:
            self.classifier = load_model(model_uri, max_batch_size, device, precision, channels_last)
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
    parser.add_argument("server", choices=["litserve", "kserve", "pytriton"], help="Which peer.")
    parser.add_argument("--model-uri", required=True, help="Bundle directory.")
    parser.add_argument("--port", type=int, required=True, help="HTTP port on 127.0.0.1.")
    parser.add_argument("--max-batch-size", type=int, required=True, help="Dynamic batching: largest batch.")
    parser.add_argument("--max-wait-ms", type=float, required=True, help="Dynamic batching: longest wait.")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="Where the model runs.")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"], help="Autocast on CUDA.")
    parser.add_argument("--channels-last", action="store_true", help="NHWC layout.")
    parser.add_argument("--workers-per-device", type=int, default=1, help="LitServe's workers; PyTriton's instances.")
    parser.add_argument("--api-servers", type=int, default=1, help="LitServe's num_api_servers.")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.server == "litserve":
        server = litserve_server(args)
        server.run(
            host="127.0.0.1",
            port=args.port,
            num_api_servers=args.api_servers,
            log_level="warning",
            generate_client_file=False,
        )
    elif args.server == "pytriton":
        pytriton_serve(args)
    else:
        import kserve

        model = kserve_model(args.model_uri, args.max_batch_size, args.device, args.precision, args.channels_last)
        model.load()
        log.info("kserve model loaded in %.1fs", time.perf_counter() - started)
        kserve.ModelServer(http_port=args.port, workers=1, enable_grpc=False, enable_latency_logging=False).start(
            [model]
        )


if __name__ == "__main__":
    main()

"""Settings of the image classifier, read from IMAGE_CLASSIFIER_* environment variables."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from serving.fetch import parse_allowed_targets
from serving.settings import ServingSettings


class Settings(ServingSettings):
    model_config = SettingsConfigDict(env_prefix="IMAGE_CLASSIFIER_", extra="ignore")

    model_uri: str = "models/image-demo"
    port: int = 8080
    channels_last: bool = Field(default=False, description="NHWC memory layout (faster convolutions on CUDA).")
    cuda_graphs: bool = Field(
        default=True,
        description="Replay one CUDA graph per batch bucket (1, 2, 4, ... and max_batch_size), captured before "
        "readiness: a batch is padded to its bucket. CUDA only (eager elsewhere); a capture that fails falls back to "
        "eager with a note in /v1/models.",
    )
    gpu_decode: Literal["auto", "off"] = Field(
        default="auto",
        description="auto: decode eligible JPEGs (baseline, 8-bit, grayscale or YCbCr 4:4:4/4:2:2/4:2:0, EXIF "
        "orientation 1) on the GPU with nvJPEG, one call per batch, when the GPU has hardware JPEG engines "
        "(image_classifier.gpudecode.HARDWARE_JPEG_GPUS); every other image keeps the CPU (Pillow) path.",
    )
    gpu_decode_max_pixels: int = Field(
        default=25_000_000,
        ge=1,
        description="Larger JPEGs keep the CPU path: the GPU holds each decoded image whole (3 bytes a pixel).",
    )
    top_k: int = Field(default=3, ge=1, le=20)
    max_images: int = Field(
        default=32, ge=1, le=1024, description="Most images one Open Inference Protocol request may carry (/v2)."
    )
    max_image_pixels: int = Field(default=40_000_000, ge=1, description="Decompression-bomb cap on width*height.")
    min_image_side: int = Field(default=8, ge=1, description="Images smaller than this on either side are refused.")
    allowed_formats: Annotated[frozenset[str], NoDecode] = frozenset({"JPEG", "PNG", "WEBP"})
    fetch_allowed_hosts: Annotated[frozenset[str], NoDecode] = Field(
        default=frozenset(),
        description="Targets exempt from the private-address check, comma-separated: `host` (its scheme's default "
        "port only: 80 for http, 443 for https), `host:port`, `[ipv6]:port`, or `host:*` (any port; development "
        "only). Example: `127.0.0.1:8081,images.internal`.",
    )
    fetch_max_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    fetch_connect_timeout_s: float = Field(default=2.0, gt=0)
    fetch_read_timeout_s: float = Field(default=5.0, gt=0, description="Longest wait for any one read.")
    fetch_max_concurrency: int = Field(
        default=32, ge=1, description="Image URLs fetched at once (also the connection pool size); more get 503."
    )
    fetch_max_redirects: int = Field(default=3, ge=0, le=10)

    @field_validator("fetch_allowed_hosts", "allowed_formats", mode="before")
    @classmethod
    def _split_csv(cls, value: object) -> object:
        if isinstance(value, str):
            return frozenset(part.strip().lower() for part in value.split(",") if part.strip())
        return value

    @field_validator("fetch_allowed_hosts", mode="after")
    @classmethod
    def _valid_targets(cls, value: frozenset[str]) -> frozenset[str]:
        parse_allowed_targets(value)  # a malformed entry stops the service at startup, not at the first fetch
        return value

    @field_validator("allowed_formats", mode="after")
    @classmethod
    def _upper(cls, value: frozenset[str]) -> frozenset[str]:
        return frozenset(v.upper() for v in value)

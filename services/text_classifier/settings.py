"""Settings of the text classifier, read from TEXT_CLASSIFIER_* environment variables."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from serving.settings import ServingSettings


class Settings(ServingSettings):
    model_config = SettingsConfigDict(env_prefix="TEXT_CLASSIFIER_", extra="ignore")

    model_uri: str = "models/text-demo"
    port: int = 8081
    device: str = "cpu"  # type: ignore[assignment]  # the text service stays on CPU nodes
    max_texts: int = Field(default=32, ge=1, le=256, description="Most texts one request may carry.")
    max_text_chars: int = Field(default=2000, ge=1, description="Longest text accepted, in characters.")
    max_tokens: int = Field(default=128, ge=8, le=512, description="Texts are truncated to this many tokens.")
    max_body_bytes: int = 256 * 1024

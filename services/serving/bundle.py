"""Model bundles: a directory with config.json and model.safetensors, from a local path or a verified URL.

Loading never unpickles: weights are read with safetensors only. New URL schemes (s3://) plug into FETCHERS.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file

from serving.errors import ModelLoadError

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class BundleConfig(BaseModel):
    """The part of config.json every bundle has; services read their own extra keys from `extra`."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    name: str
    version: str
    architecture: str
    labels: list[str] = Field(min_length=1)

    @property
    def extra(self) -> dict[str, Any]:
        return dict(self.__pydantic_extra__ or {})


class Bundle(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    path: Path
    config: BundleConfig
    sha256: str  # of model.safetensors, reported in /v1/models

    def state_dict(self, device: str = "cpu") -> dict[str, torch.Tensor]:
        return load_file(self.path / WEIGHTS_FILE, device=device)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_bundle(path: Path) -> Bundle:
    """Validate a bundle directory and read its config."""
    config_path, weights_path = path / CONFIG_FILE, path / WEIGHTS_FILE
    if not config_path.is_file() or not weights_path.is_file():
        raise ModelLoadError(f"{path} is not a model bundle: it needs {CONFIG_FILE} and {WEIGHTS_FILE}")
    try:
        config = BundleConfig.model_validate(json.loads(config_path.read_text()))
    except ValueError as exc:
        raise ModelLoadError(f"invalid {config_path}: {exc}") from exc
    return Bundle(path=path, config=config, sha256=sha256_file(weights_path))


def write_bundle(path: Path, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Bundle:
    """Write a bundle atomically enough for a build step: config.json plus safetensors weights."""
    from safetensors.torch import save_file

    BundleConfig.model_validate(config)
    path.mkdir(parents=True, exist_ok=True)
    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    save_file(contiguous, str(path / WEIGHTS_FILE), metadata={"name": config["name"], "version": config["version"]})
    (path / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for name in (CONFIG_FILE, WEIGHTS_FILE):  # readable by the (non-root) service user of an image
        (path / name).chmod(0o644)
    return read_bundle(path)


def pack_bundle(bundle_dir: Path, archive: Path) -> str:
    """Pack a bundle directory into a .tar.gz for URL distribution; returns the archive's sha256."""
    with tarfile.open(archive, "w:gz") as tar:
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            tar.add(bundle_dir / name, arcname=name)
    return sha256_file(archive)


# -- fetching --------------------------------------------------------------------------------------------------
Fetcher = Callable[[str, Path], None]


def _fetch_http(url: str, dest: Path) -> None:
    with httpx.stream("GET", url, follow_redirects=True, timeout=httpx.Timeout(30.0, connect=10.0)) as resp:
        resp.raise_for_status()
        with dest.open("wb") as fh:
            for chunk in resp.iter_bytes(1 << 20):
                fh.write(chunk)


FETCHERS: dict[str, Fetcher] = {"http": _fetch_http, "https": _fetch_http}


def _safe_extract(archive: Path, dest: Path) -> None:
    with tarfile.open(archive, "r:*") as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name in (CONFIG_FILE, WEIGHTS_FILE)]
        if len(members) != 2:
            raise ModelLoadError("bundle archive must hold exactly config.json and model.safetensors at its root")
        tar.extractall(dest, members=members, filter="data")


def resolve_bundle(uri: str, sha256: str | None, cache_dir: Path) -> Bundle:
    """Turn a bundle URI into a local, validated bundle; URL bundles must match `sha256` or loading fails."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return read_bundle(Path(parsed.path if parsed.scheme else uri))
    fetcher = FETCHERS.get(parsed.scheme)
    if fetcher is None:
        raise ModelLoadError(f"unsupported bundle scheme {parsed.scheme!r}; supported: {sorted(FETCHERS)} or a path")
    if not sha256:
        raise ModelLoadError("a URL bundle needs MODEL_SHA256: refusing to load unverified weights")
    target = cache_dir / sha256
    if (target / WEIGHTS_FILE).is_file():
        log.info("bundle %s already unpacked at %s", sha256[:12], target)
        return read_bundle(target)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        archive = Path(tmp) / "bundle.tar.gz"
        log.info("downloading bundle from %s", uri)
        try:
            fetcher(uri, archive)
        except httpx.HTTPError as exc:
            raise ModelLoadError(f"could not download bundle {uri}: {exc}") from exc
        actual = sha256_file(archive)
        if actual != sha256.lower():
            raise ModelLoadError(f"bundle checksum mismatch: expected {sha256}, got {actual}")
        unpacked = Path(tmp) / "bundle"
        _safe_extract(archive, unpacked)
        shutil.move(str(unpacked), target)
    return read_bundle(target)

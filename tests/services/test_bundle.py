"""Bundles: written and read as safetensors only, fetched from a URL only with a matching sha256."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from serving.bundle import pack_bundle, read_bundle, resolve_bundle, write_bundle
from serving.errors import ModelLoadError
from testkit import Origin

CONFIG = {"name": "tiny", "version": "1", "architecture": "linear", "labels": ["a", "b"]}


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    write_bundle(tmp_path / "tiny", CONFIG, {"w": torch.arange(6.0).reshape(2, 3)})
    return tmp_path / "tiny"


def test_round_trip(bundle_dir: Path) -> None:
    bundle = read_bundle(bundle_dir)
    assert bundle.config.labels == ["a", "b"]
    assert torch.equal(bundle.state_dict()["w"], torch.arange(6.0).reshape(2, 3))


def test_a_pickle_is_never_loaded(tmp_path: Path) -> None:
    target = tmp_path / "evil"
    target.mkdir()
    (target / "config.json").write_text('{"name": "x", "version": "1", "architecture": "a", "labels": ["a"]}')

    class Boom:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("pwned",))

    (target / "model.safetensors").write_bytes(pickle.dumps(Boom()))
    with pytest.raises(Exception, match=r"(?i)header|safetensor|deserializ"):
        read_bundle(target).state_dict()


def test_missing_files_are_a_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not a model bundle"):
        read_bundle(tmp_path)


def test_url_bundle_is_verified_then_cached(bundle_dir: Path, tmp_path: Path, origin: Origin) -> None:
    archive = tmp_path / "tiny.tar.gz"
    digest = pack_bundle(bundle_dir, archive)
    origin.files["/bundles/tiny.tar.gz"] = archive.read_bytes()
    url = f"{origin.url}/bundles/tiny.tar.gz"
    cache = tmp_path / "cache"
    bundle = resolve_bundle(url, digest, cache)
    assert bundle.config.name == "tiny"
    hits = len(origin.hits)
    assert resolve_bundle(url, digest, cache).path == bundle.path
    assert len(origin.hits) == hits, "a verified bundle is not downloaded twice"


def test_url_bundle_with_wrong_checksum_is_refused(bundle_dir: Path, tmp_path: Path, origin: Origin) -> None:
    archive = tmp_path / "tiny.tar.gz"
    pack_bundle(bundle_dir, archive)
    origin.files["/bundles/bad.tar.gz"] = archive.read_bytes()
    with pytest.raises(ModelLoadError, match="checksum mismatch"):
        resolve_bundle(f"{origin.url}/bundles/bad.tar.gz", "0" * 64, tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*/model.safetensors"))


def test_url_bundle_without_checksum_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="MODEL_SHA256"):
        resolve_bundle("https://models.example.com/b.tar.gz", None, tmp_path)


def test_unknown_scheme_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="unsupported bundle scheme"):
        resolve_bundle("s3://bucket/b.tar.gz", "0" * 64, tmp_path)

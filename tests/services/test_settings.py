"""Settings: env prefixes, CSV lists, and the cgroup CPU limit that sizes torch's threads."""

from __future__ import annotations

from pathlib import Path

import pytest

from image_classifier.settings import Settings as ImageSettings
from serving.settings import cgroup_cpu_limit
from text_classifier.settings import Settings as TextSettings


def test_cgroup_v2_quota_rounds_up(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(tmp_path) == 2


def test_cgroup_v2_unlimited(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(tmp_path) is None


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    cpu = tmp_path / "cpu"
    cpu.mkdir()
    (cpu / "cpu.cfs_quota_us").write_text("400000\n")
    (cpu / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(tmp_path) == 4


def test_cgroup_v1_unlimited(tmp_path: Path) -> None:
    cpu = tmp_path / "cpu"
    cpu.mkdir()
    (cpu / "cpu.cfs_quota_us").write_text("-1\n")
    (cpu / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(tmp_path) is None


def test_each_service_reads_its_own_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGE_CLASSIFIER_MAX_BATCH_SIZE", "7")
    monkeypatch.setenv("TEXT_CLASSIFIER_MAX_BATCH_SIZE", "3")
    monkeypatch.setenv("IMAGE_CLASSIFIER_FETCH_ALLOWED_HOSTS", "127.0.0.1, Images.Example.com")
    image, text = ImageSettings(), TextSettings()
    assert (image.max_batch_size, text.max_batch_size) == (7, 3)
    assert image.fetch_allowed_hosts == frozenset({"127.0.0.1", "images.example.com"})
    assert (image.port, text.port) == (8080, 8081)


def test_invalid_setting_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGE_CLASSIFIER_DEVICE", "tpu")
    with pytest.raises(ValueError, match="device"):
        ImageSettings()

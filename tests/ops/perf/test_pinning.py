"""Core pinning: the service and the load generator never share a CPU."""

from __future__ import annotations

import pytest

from ops.perf.pinning import UNPINNED, Pinning, parse_cpu_list, pinning_from


def test_pinning_keeps_service_and_client_apart() -> None:
    assert parse_cpu_list("0,2-4") == {0, 2, 3, 4}
    pinned = pinning_from("1:0")
    assert pinned == Pinning(service="1", client="0")
    assert pinned.service_prefix() == ["taskset", "-c", "1"]
    assert pinned.client_prefix() == ["taskset", "-c", "0"]
    assert pinned.service_cpus == 1
    assert pinning_from("none") == UNPINNED
    assert UNPINNED.service_prefix() == []
    assert not UNPINNED.pinned
    with pytest.raises(ValueError, match="must not share"):
        pinning_from("0-1:1")
    auto = pinning_from("auto")
    assert not auto.pinned or not parse_cpu_list(auto.service) & parse_cpu_list(auto.client)

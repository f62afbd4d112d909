"""Model-only throughput in a process of its own (started on the service's CPUs): `python -m ops.perf.modelonly CFG`."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> None:
    """CFG is a RatioConfig as JSON; prints {"images_per_s", "batch1_ms", "threads"} as the last line."""
    from ops.perf.ratios import RatioConfig, model_only
    from serving.settings import default_torch_threads  # type: ignore[import-untyped, unused-ignore]

    args = sys.argv[1:] if argv is None else list(argv)
    fields = json.loads(args[0])
    fields["concurrency"] = tuple(fields.get("concurrency", ()))
    cfg = RatioConfig(**fields)
    threads = default_torch_threads()  # what the service picks on these CPUs
    images_per_s, batch1_ms = model_only(cfg, threads)
    sys.stdout.write(json.dumps({"images_per_s": images_per_s, "batch1_ms": batch1_ms, "threads": threads}) + "\n")


if __name__ == "__main__":
    main()

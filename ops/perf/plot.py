"""The peer plot: throughput against p99 latency per server, one point per closed-loop client count."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_peers(peers: dict[str, Any], path: Path) -> Path:
    """PNG of img/s (x) against p99 ms (y, log) per server, with the common p99 bound; best is low and right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for server in peers["servers"]:
        levels = server["levels"]
        xs = [level["throughput"] for level in levels]
        ys = [level["p99_ms"] for level in levels]
        style = "-" if server["server"].startswith("ours") else "--"
        (line,) = ax.plot(xs, ys, style, marker="o", label=f"{server['server']} ({server['request']})")
        for level, x, y in zip(levels, xs, ys, strict=True):
            ax.annotate(
                str(level["concurrency"]),
                (x, y),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=7,
                color=line.get_color(),
            )
    bound = peers["config"]["p99_bound_ms"]
    ax.axhline(bound, color="grey", linewidth=1, linestyle=":")
    ax.text(
        0.99,
        bound,
        f"common p99 bound {bound:g} ms",
        transform=ax.get_yaxis_transform(),
        ha="right",
        va="bottom",
        fontsize=8,
        color="grey",
    )
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.yaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("throughput, images/s (closed loop; labels: clients)")
    ax.set_ylabel("p99 latency, ms (log)")
    pinning = peers.get("pinning") or {}
    where = pinning.get("label", "unpinned")
    ax.set_title(f"Demo classifier, same bundle and client: {where}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path

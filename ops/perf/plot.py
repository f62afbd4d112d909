"""The peer plot: throughput against p99 latency per server, one point per closed-loop client count (PNG with
matplotlib, or SVG with the standard library only)."""

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


# Colours of the SVG plot's series, in order (matplotlib's default cycle, so both plots read alike).
SVG_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def plot_peers_svg(peers: dict[str, Any], path: Path, width: int = 760, height: int = 440) -> Path:
    """The peer plot as a standalone SVG, standard library only (the GPU machine has no matplotlib): img/s (x)
    against p99 ms (y, log), one line per server, points labelled with their client count, the p99 bound dashed."""
    import math
    from html import escape

    left, right, top, bottom = 70, 230, 40, 50
    plot_w, plot_h = width - left - right, height - top - bottom
    servers = peers["servers"]
    points = [(lv["throughput"], max(lv["p99_ms"], 0.01)) for s in servers for lv in s["levels"]]
    bound = float(peers["config"]["p99_bound_ms"])
    x_max = max([x for x, _ in points] + [1.0]) * 1.08
    y_values = [y for _, y in points] + [bound]
    y_lo = 10 ** math.floor(math.log10(min(y_values)))
    y_hi = 10 ** math.ceil(math.log10(max(y_values)))
    if y_hi <= y_lo:
        y_hi = y_lo * 10

    def sx(x: float) -> float:
        return left + plot_w * x / x_max

    def sy(y: float) -> float:
        return top + plot_h * (1 - (math.log10(y) - math.log10(y_lo)) / (math.log10(y_hi) - math.log10(y_lo)))

    body = peers.get("body") or {}
    title = (
        f"{peers['config']['model']} {peers['config'].get('device', 'cpu')} {peers['config'].get('precision', '')}, "
        f"{body.get('name', '')} {body.get('width', '')}x{body.get('height', '')} JPEG; "
        f"{(peers.get('pinning') or {}).get('label', 'unpinned')}"
    )
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
        'font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="20" font-size="12">{escape(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#444"/>',
    ]
    decade = y_lo
    while decade <= y_hi * 1.001:
        y = sy(decade)
        out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{decade:g}</text>')
        decade *= 10
    for i in range(6):
        value = x_max * i / 5
        x = sx(value)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + plot_h}" stroke="#eee"/>')
        out.append(f'<text x="{x:.1f}" y="{top + plot_h + 16}" text-anchor="middle">{value:,.0f}</text>')
    yb = sy(bound)
    out.append(
        f'<line x1="{left}" x2="{left + plot_w}" y1="{yb:.1f}" y2="{yb:.1f}" stroke="grey" stroke-dasharray="4 3"/>'
    )
    out.append(
        f'<text x="{left + plot_w - 4}" y="{yb - 4:.1f}" text-anchor="end" fill="grey">p99 bound {bound:g} ms</text>'
    )
    for index, server in enumerate(servers):
        colour = SVG_COLOURS[index % len(SVG_COLOURS)]
        xy = [(sx(lv["throughput"]), sy(max(lv["p99_ms"], 0.01)), lv["concurrency"]) for lv in server["levels"]]
        dash = "" if server["server"].startswith("ours") else ' stroke-dasharray="6 3"'
        out.append(
            f'<polyline fill="none" stroke="{colour}" stroke-width="1.5"{dash} points="'
            + " ".join(f"{x:.1f},{y:.1f}" for x, y, _ in xy)
            + '"/>'
        )
        for x, y, clients in xy:
            out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}"/>')
            out.append(f'<text x="{x + 4:.1f}" y="{y - 4:.1f}" font-size="9" fill="{colour}">{clients}</text>')
        ly = top + 14 + 16 * index
        out.append(f'<line x1="{left + plot_w + 12}" x2="{left + plot_w + 32}" y1="{ly}" y2="{ly}" stroke="{colour}"/>')
        out.append(f'<text x="{left + plot_w + 36}" y="{ly + 4}">{escape(server["server"])}</text>')
    out.append(
        f'<text x="{left + plot_w / 2}" y="{height - 12}" text-anchor="middle">'
        "throughput, images/s (closed loop; labels: clients)</text>"
    )
    out.append(
        f'<text x="16" y="{top + plot_h / 2}" transform="rotate(-90 16 {top + plot_h / 2})" text-anchor="middle">'
        "p99 latency, ms (log)</text>"
    )
    out.append("</svg>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(out) + "\n")
    return path

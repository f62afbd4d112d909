"""How late the event loop runs: the one number that shows a stalled server (every answer waits its turn on the loop,
503s included), whatever stalled it: a full garbage collection, a handler that blocks, a starved CPU."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


@dataclass
class LoopLag:
    """A timer due every `interval_s` notes how late it fires; `take_peak()` gives the worst since its last call."""

    interval_s: float = 0.01
    peak_s: float = 0.0

    async def run(self) -> None:
        """Tick until cancelled (the server's lifespan runs it in its task group)."""
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.interval_s
            await asyncio.sleep(self.interval_s)
            self.peak_s = max(self.peak_s, loop.time() - due)

    def take_peak(self) -> float:
        """The largest lateness since the last call, then reset (a gauge that each scrape reads)."""
        peak, self.peak_s = self.peak_s, 0.0
        return peak

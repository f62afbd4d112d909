"""Serving performance: fair (core-pinned) measurement, socket-to-socket profiles and peer-server comparisons."""

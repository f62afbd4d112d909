"""Performance and reliability measurement: core-pinned benchmarks, socket-to-socket profiles, peer servers, chaos."""

"""Performance and reliability measurement: local services under load, benchmarks, capacity, chaos."""

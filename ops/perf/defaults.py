"""The defaults every benchmark run shares (the ratios, peers, clients and profile runs, and `invoke bench`)."""

# Defaults of the ratio, peer and profile runs (`invoke bench`, `bench.peers`, `bench.profile`, `python -m
# ops.perf.ratios`): the service's MAX_BATCH_SIZE (and the model-only batch) and MAX_WAIT_MS (every peer server's
# too), the closed-loop client levels and seconds per level, and the peers' common p99 bound.
BATCH_SIZE = 16
MAX_WAIT_MS = 5.0
CONCURRENCY = (1, 4, 16, 32)
LEVEL_DURATION_S = 3.0
PEER_P99_BOUND_MS = 100.0

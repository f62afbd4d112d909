"""Operator-side logic behind `invoke`: models, images, manifests, toolchain, cluster, benchmarks."""

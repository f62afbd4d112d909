"""Kubernetes: the kind node image and the local kind cluster (the rest of ops/ moves here by area)."""

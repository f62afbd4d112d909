"""Shared serving runtime: settings, micro-batching, metrics, errors, logging, bundles and the app factory."""

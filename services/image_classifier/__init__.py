"""Image category classifier service (GPU with CPU fallback) on the shared serving runtime."""

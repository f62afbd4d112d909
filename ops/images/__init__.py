"""The container images: versions matrix, OS base, uv.lock closures and wheelhouse, docker builds, lint."""

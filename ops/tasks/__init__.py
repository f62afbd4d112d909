"""invoke collections, one module per area; each exposes `ns` and optionally `ROOT_TASKS`."""

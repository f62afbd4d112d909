"""`python -m image_classifier`: serve the image classifier (drains on SIGTERM, exits 0)."""

from __future__ import annotations

from pathlib import Path

from image_classifier.app import create_app
from image_classifier.settings import Settings
from serving.server import serve, serve_with_reload


def main() -> None:
    settings = Settings()
    if settings.reload:
        serve_with_reload("image_classifier.app:create_app", settings, [str(Path(__file__).resolve().parent.parent)])
    else:
        serve(create_app(settings), settings)


if __name__ == "__main__":
    main()

"""`python -m text_classifier`: serve the text classifier (drains on SIGTERM, exits 0)."""

from __future__ import annotations

from pathlib import Path

from serving.server import serve, serve_with_reload
from text_classifier.app import create_app
from text_classifier.settings import Settings


def main() -> None:
    settings = Settings()
    if settings.reload:
        serve_with_reload("text_classifier.app:create_app", settings, [str(Path(__file__).resolve().parent.parent)])
    else:
        serve(create_app(settings), settings)


if __name__ == "__main__":
    main()

"""`python -m image_classifier`: serve the image classifier (drains on SIGTERM, exits 0)."""

from image_classifier.app import create_app
from image_classifier.settings import Settings
from serving.server import main

if __name__ == "__main__":
    settings = Settings()
    main(settings, "image_classifier.app:create_app", lambda: create_app(settings))

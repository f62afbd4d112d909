"""`python -m image_classifier`: serve the image classifier (drains on SIGTERM, exits 0)."""

from image_classifier.settings import Settings

if __name__ == "__main__":
    settings = Settings()
    settings.prepare_native_runtime()  # before torch is imported, which the app does
    from image_classifier.app import create_app
    from image_classifier.model import ImageClassifier
    from serving.server import main

    main(settings, "image_classifier.app:create_app", create_app, model=ImageClassifier)

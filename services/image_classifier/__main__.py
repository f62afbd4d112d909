"""`python -m image_classifier`: serve the image classifier (drains on SIGTERM, exits 0)."""

from image_classifier.settings import Settings

if __name__ == "__main__":
    settings = Settings()
    settings.prepare_native_runtime()  # before torch is imported (by the app, when main loads it)
    from serving.server import main

    main(settings, "image_classifier.app:create_app", model="image_classifier.model:ImageClassifier")

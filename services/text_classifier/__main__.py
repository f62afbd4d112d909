"""`python -m text_classifier`: serve the text classifier (drains on SIGTERM, exits 0)."""

from text_classifier.settings import Settings

if __name__ == "__main__":
    settings = Settings()
    settings.prepare_native_runtime()  # before torch is imported (by the app, when main loads it)
    from serving.server import main

    main(settings, "text_classifier.app:create_app")

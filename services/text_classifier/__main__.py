"""`python -m text_classifier`: serve the text classifier (drains on SIGTERM, exits 0)."""

from text_classifier.settings import Settings

if __name__ == "__main__":
    settings = Settings()
    settings.prepare_native_runtime()  # before torch is imported, which the app does
    from serving.server import main
    from text_classifier.app import create_app

    main(settings, "text_classifier.app:create_app", create_app)

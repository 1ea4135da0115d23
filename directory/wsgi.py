"""The WSGI entry point for gunicorn: `gunicorn directory.wsgi:app`."""

from directory import configure_logging, create_app
from directory.settings import Settings

settings = Settings.from_env()
configure_logging(settings.log_level)
app = create_app(settings)

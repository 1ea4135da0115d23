"""The WSGI entry point for gunicorn: `gunicorn directory.wsgi:app`."""

import gc

from directory import configure_logging, create_app
from directory.settings import Settings

settings = Settings.from_env()
configure_logging(settings.log_level)
app = create_app(settings)

# A batch of 1,000 ads allocates hundreds of thousands of short-lived objects, and with
# the default thresholds the cyclic collector walks the whole heap many times per batch
# (~20% of its time, measured). The app's long-lived objects are frozen out of its sight
# and young objects are collected less often; reference counting still frees the rest.
gc.freeze()
gc.set_threshold(50_000, 20, 20)

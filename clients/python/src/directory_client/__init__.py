"""Client of the Commons Directory, and the thin payment client that settles a trade on
the advertiser's mutual-credit ledger."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("commons-directory-client")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"

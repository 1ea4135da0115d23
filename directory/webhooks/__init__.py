"""Outbound webhooks to portals: signing (Standard Webhooks), URL safety (no requests into
our own network), and delivery of one webhook with its outcome classified for retries.
With the same care, fetching a file from a portal's website (fetch.py, for its
verification; connections.py holds what the two share).

Nothing here knows of the database or of Flask: the relay services check a portal's URL
when it is set, and the worker signs and sends what the outbox holds."""

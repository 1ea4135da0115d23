"""Response headers shared by several operations."""

from __future__ import annotations

from flask import url_for

LOCATION_HEADER = {
    "Location": {
        "description": "Where the created resource can be read (a path on this directory)",
        "schema": {"type": "string", "format": "uri-reference"},
    }
}


def location_of(endpoint: str, **values: str) -> dict[str, str]:
    """The Location header of a 201, for the resource `endpoint` reads: its path (with the
    prefix a proxy may serve the API under), which clients resolve against the request's
    URL."""
    return {"Location": url_for(endpoint, **values)}
